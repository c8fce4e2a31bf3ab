"""What a training run reports: per-epoch records, the final TrainReport, the Progress protocol the
CLI draws. Kept apart from the loop (trainer.py) so that module stays short; re-exported there."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol

import torch

from validora.core.calibration import T_MAX
from validora.core.metrics import Metrics


class StepLoss(NamedTuple):
    """One batch: what is minimised, the gold tokens' plain NLL (what is reported), their count."""

    objective: torch.Tensor
    nll: float
    tokens: int


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    seconds: float


@dataclass
class TrainReport:
    epochs: list[EpochRecord]
    best_epoch: int
    metrics: Metrics  # validation metrics of the best epoch
    n_train: int
    n_val: int
    truncated_items: int
    train_seconds: float  # optimisation + evaluation, excluding model load and prefix caching
    cache_seconds: float
    examples_per_second: float  # training examples x epochs / (train + cache seconds)
    prefix_cache: str  # "kept across epochs" | "per batch" | "off"
    outfile: str | None = None
    temperature: float = 1.0  # fitted on the validation split (calibration.fit_temperature)
    val_ece: float = 0.0  # the best epoch's validation ECE at that temperature (10 bins)
    lexical: dict[str, Any] | None = None  # Readout.describe() and the mixture's validation accuracy

    @property
    def at_chance(self) -> bool:
        """Validation accuracy no better than always answering the most frequent label."""
        return self.metrics.accuracy <= self.metrics.chance_accuracy + 1e-9

    @property
    def uninformative(self) -> bool:
        """The temperature hit its upper bound: held-out scores barely separate the labels, so the
        probabilities sit near 1/K whatever the input (accuracy may still be above chance by luck)."""
        return self.temperature >= T_MAX * 0.999

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chance_accuracy"] = self.metrics.chance_accuracy
        data["at_chance"] = self.at_chance
        data["uninformative"] = self.uninformative
        return data


class Progress(Protocol):
    """What the loop reports; the CLI draws it, the library default ignores it."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


class SilentProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def log(self, message: str) -> None:
        pass
