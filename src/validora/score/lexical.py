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
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from validora.core.calibration import fit_temperature
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
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("idf", "coef", "intercept")}
            model = cls(
                meta["kind"],
                float(meta["c"]),
                json.loads(meta["labels"]),
                json.loads(meta["terms"]),
                **tensors,
                temperature=float(meta.get("temperature", "1.0")),
            )
        except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
            raise AdapterError(f"{path} is not a readable lexical model: {exc}") from None
        k, v = len(model.labels), len(model.terms)
        if model.kind not in KINDS or model.labels != list(labels) or model.coef.shape != (k, v) \
                or model.idf.shape != (v,) or model.intercept.shape != (k,):  # fmt: skip
            raise AdapterError(f"{path} does not match the adapter (labels {list(labels)}).")
        return model


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
