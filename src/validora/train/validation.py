"""Judging a run on its validation split: metrics and loss of an epoch, then the calibration of the
best one (its temperature, the lexical readout, the validation probabilities of the reliability diagram).

Pure functions of the [N_val, K] label log-likelihoods the Trainer's `evaluate()` computes: no model here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from validora.core.calibration import fit_temperature
from validora.core.data import Example
from validora.core.metrics import Metrics, classification_metrics
from validora.core.prompting import Encoded, PromptFormat
from validora.score.lexical import lexical_text
from validora.score.readout import Readout, fit_readouts


def judge(loglik: torch.Tensor, val: Sequence[Encoded], fmt: PromptFormat) -> tuple[Metrics, float]:
    """Metrics and loss per label token of the [N_val, K] validation log-likelihoods."""
    preds: list[str] = []
    nll, tokens = 0.0, 0
    for row, e in zip(loglik, val, strict=True):
        nll -= float(row[fmt.labels.index(e.label)])
        tokens += len(fmt.label_ids[e.label])
        preds.append(fmt.labels[int(row.argmax())])
    metrics = classification_metrics([e.label for e in val], preds, fmt.labels)
    return metrics, nll / max(tokens, 1)


@dataclass
class Calibration:
    """The best epoch's readout and what the report and the reliability diagram show of it."""

    temperature: float
    readout: Readout  # the one saved: its lexical model refitted on training + validation
    val_probs: torch.Tensor  # [N_val, K] by the held-out readout
    lexical: dict[str, Any] | None  # Readout.describe() and the mixture's validation accuracy


def calibrate(
    loglik: torch.Tensor,
    gold: Sequence[int],
    splits: tuple[Sequence[Example], Sequence[Example]],
    labels: Sequence[str],
    lexical_weight: float,
    log: Callable[[str], None],
) -> Calibration:
    """Temperature on the best epoch's validation log-likelihoods, then the readouts
    (readout.fit_readouts) unless `lexical_weight` is 0; `splits`: (training, validation) examples."""
    temperature = fit_temperature(loglik, gold)
    train, val = ([(lexical_text(e.item, e.requirement), e.label) for e in split] for split in splits)
    held_out, kept = fit_readouts(loglik, temperature, (train, val), labels, lexical_weight)
    if lexical_weight > 0 and not kept.mixes:
        log("No lexical model (a label has no training example): the adapter scores alone.")
    val_probs = held_out.probabilities(loglik, [text for text, _ in val])  # for the reliability diagram
    lexical = kept.describe()
    if lexical is not None:  # the mixture's own validation accuracy (its kind, C, temperature chosen there)
        correct = val_probs.argmax(-1).cpu() == torch.tensor(list(gold))
        lexical = {**lexical, "val_accuracy": float(correct.float().mean())}
    return Calibration(temperature, kept, val_probs, lexical)
