"""The lexical half of a validator: TF-IDF n-grams + logistic regression, trained beside the adapter.

Why: on small domain sets the words themselves (failure codes, names, jargon) carry much of a label,
and a linear model on n-grams learns them from a few hundred items more reliably than an adapter that
reads the text through a few invocation positions; the two err differently. On the quality suite the
product of the two (equal weights in log space) beat each alone on average (BENCHMARKS.md). It costs
no model forward and microseconds per text, so shared-prefix checks and serving keep every property:
the adapter's label log-likelihoods are computed as before, and `Readout` combines them with this
model's votes and applies the fitted temperatures, in every place that turns log-likelihoods into
label probabilities. Stored without pickle: terms and hyperparameters in the safetensors metadata,
idf and weights as tensors.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from validora.core.calibration import STORED_T_RANGE, T_MAX, T_MIN, fit_temperature, positive_number
from validora.core.jsonio import parse_json
from validora.errors import AdapterError

if TYPE_CHECKING:
    import torch

KINDS: dict[str, dict[str, Any]] = {
    "word 1-2": {"analyzer": "word", "ngram_range": (1, 2)},
    "char_wb 2-5": {"analyzer": "char_wb", "ngram_range": (2, 5)},
}
C_GRID = (0.1, 1.0, 10.0, 100.0)


def lexical_text(item: str, requirement: str | None = None) -> str:
    """What the lexical model reads: the requirement (if any) on its own line, then the item."""
    return f"{requirement}\n{item}" if requirement else item


def _vectorizer(kind: str, vocabulary: Sequence[str] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(sublinear_tf=True, vocabulary=vocabulary, **KINDS[kind])


def _logreg(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000)


@dataclass
class LexicalModel:
    """TF-IDF features of one kind and a multinomial logistic regression over the adapter's labels."""

    kind: str
    c: float
    labels: list[str]
    terms: list[str]
    idf: np.ndarray  # [V]
    coef: np.ndarray  # [K, V], rows in `labels` order
    intercept: np.ndarray  # [K]
    # Fitted on the validation split like the adapter's (calibration.py): a model that is confidently
    # wrong there (n-grams cannot read a requirement against an item) is flattened before it is mixed in.
    temperature: float = 1.0

    @cached_property
    def _features(self) -> Any:
        vectorizer = _vectorizer(self.kind, self.terms)
        vectorizer.idf_ = self.idf
        vectorizer.transform([""])  # sets its vocabulary up now, not racing in the first threads' calls
        return vectorizer

    def logprobs(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, K] log-probabilities of the labels for each text (from `lexical_text`)."""
        import torch

        return torch.log_softmax(self._logits(texts) / self.temperature, dim=-1).float()

    def _logits(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        x = self._features.transform(list(texts))
        return torch.from_numpy(np.asarray(x @ self.coef.T) + self.intercept).double()

    @classmethod
    def fit(
        cls, kind: str, c: float, texts: Sequence[str], gold: Sequence[str], labels: Sequence[str]
    ) -> LexicalModel:
        vectorizer = _vectorizer(kind)
        x = vectorizer.fit_transform(list(texts))
        model = _logreg(c).fit(x, list(gold))
        classes = [str(k) for k in model.classes_]
        coef, intercept = model.coef_, model.intercept_
        if len(classes) == 2:  # one row: the second class's log-odds against the first
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        order = [classes.index(label) for label in labels]
        return cls(
            kind, float(c), list(labels), vectorizer.get_feature_names_out().tolist(),
            vectorizer.idf_.astype(np.float64), coef[order].astype(np.float64), intercept[order].astype(np.float64),
        )  # fmt: skip

    def refit(self, pairs: Sequence[tuple[str, str]]) -> LexicalModel:
        """The same kind, C and temperature fitted on other (text, label) pairs: training + validation
        once those were chosen on the validation split, so the kept model has seen every example."""
        texts, gold = [t for t, _ in pairs], [g for _, g in pairs]
        model = LexicalModel.fit(self.kind, self.c, texts, gold, self.labels)
        model.temperature = self.temperature
        return model

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        meta = {
            "kind": self.kind,
            "c": repr(self.c),
            "temperature": repr(self.temperature),
            "labels": json.dumps(self.labels),
            "terms": json.dumps(self.terms),
        }
        tensors = {"idf": self.idf, "coef": self.coef, "intercept": self.intercept}
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path, labels: Sequence[str]) -> LexicalModel:
        """The lexical model stored at `path` (a regular file: a FIFO or device there is refused before
        it is opened, so a load never blocks on it), checked against the adapter's `labels`."""
        path = Path(path)
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise AdapterError(f"{path} is not a regular file: {_REDO}")
            if info.st_size > MAX_FILE_BYTES:
                raise AdapterError(
                    f"{path} is {info.st_size} bytes, more than a lexical model's {MAX_FILE_BYTES}: {_REDO}"
                )
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise AdapterError(f"{path} cannot be read ({exc.strerror or exc}): {_REDO}") from None
        return cls.from_bytes(data, labels, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, labels: Sequence[str], where: str) -> LexicalModel:
        """The lexical model in `data` (a lexical.safetensors file's bytes; `where` names it in messages).

        Everything is checked before it is used: the header, the metadata (kind, C, temperature: finite,
        positive, temperature in calibration.STORED_T_RANGE; labels and terms as JSON through
        core/jsonio), the tensors (float32/float64, their shapes, finite values). Each fault is an
        AdapterError naming the file and the field."""
        meta, header = _header(data, where)
        fields = {k: header.get(k) for k in TENSORS}
        for name, entry in fields.items():
            if not isinstance(entry, dict):
                raise AdapterError(f"{where} has no tensor {name!r}: {_REDO}")
            if entry.get("dtype") not in ("F64", "F32"):
                raise AdapterError(
                    f"{where}: tensor {name!r} is {entry.get('dtype')!r}, not float32 or float64: {_REDO}"
                )
        try:
            from safetensors.numpy import load as load_tensors

            tensors = {k: np.asarray(v, dtype=np.float64) for k, v in load_tensors(bytes(data)).items()}
        except Exception as exc:  # safetensors raises its own error (and others) for a damaged file
            raise AdapterError(f"{where} is not a readable lexical model ({exc}): {_REDO}") from None
        kind = meta.get("kind")
        if kind not in KINDS:
            raise AdapterError(f'{where}: metadata "kind" is {kind!r}, not one of {list(KINDS)}: {_REDO}')
        c = _number(meta, "c", where, required=True)
        temperature = _number(meta, "temperature", where, required=False)
        lo, hi = STORED_T_RANGE
        if not lo <= temperature <= hi:
            raise AdapterError(
                f'{where}: metadata "temperature" is {temperature!r}, outside {lo:g}..{hi:g} (fitted '
                f"temperatures lie in {T_MIN:g}..{T_MAX:g}): {_REDO}"
            )
        stored_labels = _strings(meta, "labels", where)
        if stored_labels != list(labels):
            raise AdapterError(
                f'{where} does not match the adapter: its metadata "labels" {stored_labels} are not the '
                f"adapter's labels {list(labels)}: {_REDO}"
            )
        terms = _strings(meta, "terms", where)
        if not terms or len(set(terms)) != len(terms):
            why = "empty" if not terms else "holds a term twice"
            raise AdapterError(f'{where}: metadata "terms" {why}: {_REDO}')
        k, v = len(stored_labels), len(terms)
        for name, shape in (("idf", (v,)), ("coef", (k, v)), ("intercept", (k,))):
            got = tensors[name]
            if got.shape != shape:
                raise AdapterError(
                    f"{where} does not match the adapter: tensor {name!r} has shape {list(got.shape)}, not {list(shape)} "
                    f"({k} labels, {v} terms): {_REDO}"
                )
            if not np.isfinite(got).all() or (got.size and float(np.abs(got).max()) > MAX_WEIGHT):
                bad = "non-finite values" if not np.isfinite(got).all() else f"values beyond ±{MAX_WEIGHT:g}"
                raise AdapterError(f"{where}: tensor {name!r} holds {bad}: {_REDO}")
        return cls(
            kind, c, stored_labels, terms, tensors["idf"], tensors["coef"], tensors["intercept"], temperature
        )


_REDO = "the adapter's lexical model is damaged; train the adapter again or download it again"
TENSORS = ("idf", "coef", "intercept")
MAX_FILE_BYTES = 1 << 30  # far above any vocabulary's terms and weights; refused before it is read whole
MAX_HEADER_BYTES = 1 << 28  # safetensors' own reader refuses headers above 100 MB
# An L2-regularised logistic regression (C at most 100) over unit-norm TF-IDF rows, and idf values of
# log(n) + 1, stay many orders of magnitude below this; beyond it a sum of a few terms can overflow.
MAX_WEIGHT = 1e6


def _header(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, header) of safetensors bytes: 8 bytes little-endian length, then that much JSON."""
    if len(data) < 8:
        raise AdapterError(
            f"{where} is not a readable lexical model: it is truncated ({len(data)} bytes): {_REDO}"
        )
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise AdapterError(
            f"{where} is not a readable lexical model: it is truncated or not safetensors (a header of {n} bytes "
            f"in {len(data)}): {_REDO}"
        )
    try:
        header = parse_json(bytes(data[8 : 8 + n]))
    except ValueError as exc:
        raise AdapterError(
            f"{where} is not a readable lexical model: its header is unreadable: {exc}: {_REDO}"
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise AdapterError(f"{where} has no metadata of strings (kind, c, labels, terms): {_REDO}")
    return meta, header


def _number(meta: dict[str, Any], key: str, where: str, *, required: bool) -> float:
    """A metadata number: finite and above zero ("nan", "inf", "0", "-1" refused)."""
    text = meta.get(key)
    if text is None and not required:
        return 1.0  # files written before the lexical temperature was fitted
    try:
        value = float(text) if isinstance(text, str) and len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    if not positive_number(value):
        raise AdapterError(f'{where}: metadata "{key}" is {text!r}, not a finite number above 0: {_REDO}')
    return value


def _strings(meta: dict[str, Any], key: str, where: str) -> list[str]:
    """A metadata list of strings, stored as JSON (read through core/jsonio.parse_json)."""
    text = meta.get(key)
    try:
        value = parse_json(text) if isinstance(text, str) else None
    except ValueError as exc:
        raise AdapterError(f'{where}: metadata "{key}" is unreadable: {exc}: {_REDO}') from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise AdapterError(f'{where}: metadata "{key}" is not a JSON list of strings: {_REDO}')
    return value


def fit_lexical(
    fit: Sequence[tuple[str, str]], val: Sequence[tuple[str, str]], labels: Sequence[str]
) -> LexicalModel | None:
    """Choose the n-gram kind and C on the validation split (accuracy, then log-loss), fit on `fit`,
    and fit its temperature there too.

    `fit` and `val` are (text, label) pairs. None when a label has no training text: the model could
    never vote for it.
    """
    if {label for _, label in fit} != set(labels):
        return None
    texts, gold = [t for t, _ in fit], [g for _, g in fit]
    index = {label: i for i, label in enumerate(labels)}
    val_gold = np.asarray([index[g] for _, g in val])
    best: tuple[tuple[float, float], LexicalModel] | None = None
    for kind in KINDS:
        for c in C_GRID:
            model = LexicalModel.fit(kind, c, texts, gold, labels)
            if not len(val):
                return model
            lp = model.logprobs([t for t, _ in val]).double().numpy()
            score = (
                float((lp.argmax(1) == val_gold).mean()),
                float(lp[np.arange(len(val)), val_gold].mean()),
            )
            if best is None or score > best[0]:  # the first on a tie: the grid order decides
                best = (score, model)
    if best is None:
        return None
    model = best[1]
    model.temperature = fit_temperature(model._logits([t for t, _ in val]).float(), val_gold.tolist())
    return model
