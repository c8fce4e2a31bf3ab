"""Readout variants on the quality suite without training again.

`benchmarks/quality.py` dumps, per set and validora variant, the trained adapter's raw label
log-likelihoods on the validation and test splits and the texts of every split
(``<cache>/quality/dumps/<set>-<split>-<label>.json``). Training is seeded and deterministic, so what a
readout (temperature, lexical model, mixture: `validora.score.readout`) would give on that adapter is
computed here exactly, in seconds, with the library's own functions:

    .venv/bin/python benchmarks/readouts.py --label v4-dump

Columns: the adapter alone; the lexical model alone (as fitted on the training split); the default
readout held out (lexical model fitted on the training split: v4) and kept (refitted on training +
validation: the default since v5); the kept readout at other lexical weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_data import cache_root

from validora.core.calibration import expected_calibration_error, fit_temperature, top_label
from validora.score.readout import Readout, fit_readouts

WEIGHTS = (0.25, 0.5, 0.75)


def score(probs: torch.Tensor, gold: list[int]) -> tuple[float, float, float]:
    """Test accuracy, macro-F1, ECE (10 bins)."""
    from sklearn.metrics import f1_score

    predicted = probs.argmax(-1)
    accuracy = float((predicted == torch.tensor(gold)).float().mean())
    f1 = float(f1_score(gold, predicted.tolist(), average="macro"))
    return accuracy, f1, expected_calibration_error(*top_label(probs, gold))


def variants(dump: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    labels = dump["labels"]
    index = {label: i for i, label in enumerate(labels)}
    pairs = tuple([(t, g) for t, g in dump[split]] for split in ("train", "val"))
    val_loglik = torch.tensor(dump["val_loglik"])
    test_loglik = torch.tensor(dump["test_probs_t1"]).clamp_min(1e-30).log()
    texts, gold = [t for t, _ in dump["test"]], [index[g] for _, g in dump["test"]]
    temperature = fit_temperature(val_loglik, [index[g] for _, g in pairs[1]])
    out = {"adapter": score(Readout(temperature).probabilities(test_loglik, texts), gold)}
    held_out, kept = fit_readouts(val_loglik, temperature, pairs, labels, 0.5)
    if held_out.lexical is not None:
        out["lexical"] = score(held_out.lexical.logprobs(texts).exp(), gold)
    out["held out (v4)"] = score(held_out.probabilities(test_loglik, texts), gold)
    out["kept, w 0.5 (default)"] = score(kept.probabilities(test_loglik, texts), gold)
    for weight in WEIGHTS:
        if weight != 0.5:
            _, other = fit_readouts(val_loglik, temperature, pairs, labels, weight)
            out[f"kept, w {weight}"] = score(other.probabilities(test_loglik, texts), gold)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="the validora variant whose dumps to read")
    args = parser.parse_args()
    paths = sorted((cache_root() / "quality" / "dumps").glob(f"*-{args.label}.json"))
    if not paths:
        parser.error(f"no dumps for {args.label!r}: run benchmarks/quality.py --methods validora --label ...")
    rows = {p.name[: -len(f"-{args.label}.json")]: variants(json.loads(p.read_text())) for p in paths}
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    print("| set | " + " | ".join(f"{c}: acc / F1 / ECE" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in rows.items():
        cells = [" / ".join(f"{v:.3f}" for v in row[c]) if c in row else "–" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    means = [
        sum(r[c][0] for r in rows.values() if c in r) / sum(c in r for r in rows.values()) for c in columns
    ]
    print("| **average accuracy** | " + " | ".join(f"{m:.4f}" for m in means) + " |")


if __name__ == "__main__":
    main()
