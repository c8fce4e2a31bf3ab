"""The training recipe (`Recipe`: every hyperparameter with its default, validated on construction) and
`TrainConfig` (one run: data, output, base model, device, cache budget, and its Recipe).

The recipe is what validora.json's "training" block records: what, with the data and the base model,
determines the adapter's weights. Paths and execution knobs (where to write, on which device, how much
memory the prefix caches may take) belong to the run and are not recorded.

The defaults are chosen by measurement on the quality suite (benchmarks/quality.py, BENCHMARKS.md),
not copied from the reference command: they must learn on small sets with the embedded model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from validora.adapter.schema import ADAPTER_TYPES
from validora.core.prompting import DEFAULT_MAX_LENGTH
from validora.core.targets import DECODER_PROJECTIONS
from validora.errors import ConfigError

# Attention and MLP: under aLoRA they act only on the few invocation + label tokens, so the MLP costs
# little. On the engine notes, q,k,v at rank 32 reached 0.69 test accuracy; all seven at rank 8, 0.79
# (BENCHMARKS.md, "Recipe variants").
DEFAULT_TARGETS = DECODER_PROJECTIONS
# Without --epochs, small sets get more passes: enough for this many optimizer updates, within bounds.
MIN_UPDATES, MIN_EPOCHS, MAX_EPOCHS = 250, 6, 20


def resolve_epochs(epochs: int | None, updates_per_epoch: int) -> int:
    """The epochs to run: as given, or enough for MIN_UPDATES optimizer updates within the bounds."""
    if epochs is not None:
        return epochs
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_UPDATES / max(1, updates_per_epoch))))


# Recipe fields without a flag of `m alora train`: their errors carry no option for the CLI to show as one.
_LIBRARY_ONLY = ("warmup_fraction", "eval_batch_size", "target_modules")


def _refused(name: str, why: str) -> ConfigError:
    """The error names the field (learning_rate); the CLI shows its flag (--learning-rate)."""
    return ConfigError(f"{name} {why}.", option=None if name in _LIBRARY_ONLY else name)


@dataclass(frozen=True)
class Recipe:
    """How to train: every hyperparameter with its default, validated on construction."""

    adapter: str = "alora"
    epochs: int | None = None  # None: enough for MIN_UPDATES optimizer updates (6 to 20 epochs)
    learning_rate: float = 2e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 0
    val_fraction: float = 0.2
    rank: int = 8
    alpha: int | None = None  # defaults to rank
    dropout: float = 0.05
    # Share of the label loss spread uniformly over the vocabulary: on the quality suite it gained on
    # four of six sets (+8 test items of 1171, BENCHMARKS.md "Recipe variants, round 2").
    label_smoothing: float = 0.1
    # Share of a TF-IDF + logistic-regression model in the label log-probabilities (lexical.py); 0: the
    # adapter alone. Equal weights: +2.9 points on the quality suite's average (BENCHMARKS.md).
    lexical_weight: float = 0.5
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    warmup_fraction: float = 0.06
    early_stop: int = 0  # stop after this many epochs without improvement; 0 = never
    # aLoRA only: compute prefixes without gradients (the same loss up to float summation order)
    prefix_cache: bool = True
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        for name in (
            "learning_rate",
            "val_fraction",
            "dropout",
            "label_smoothing",
            "lexical_weight",
            "warmup_fraction",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):  # inf passes a "> 0" check and nan fails it without saying why
                raise _refused(name, f"must be a finite number, not {value}")
        checks = [
            ("adapter", self.adapter in ADAPTER_TYPES, f"must be one of {', '.join(ADAPTER_TYPES)}, not {self.adapter!r}"),
            ("epochs", self.epochs is None or self.epochs >= 1, f"must be at least 1, not {self.epochs}"),
            ("learning_rate", self.learning_rate > 0, f"must be positive, not {self.learning_rate}"),
            ("batch_size", self.batch_size >= 1, f"must be at least 1, not {self.batch_size}"),
            ("grad_accum", self.grad_accum >= 1, f"must be at least 1, not {self.grad_accum}"),
            ("max_length", self.max_length >= 16, f"must be at least 16, not {self.max_length}"),
            ("val_fraction", 0 < self.val_fraction < 1, f"must be between 0 and 1, not {self.val_fraction}"),
            ("rank", self.rank >= 1, f"must be at least 1, not {self.rank}"),
            ("alpha", self.alpha is None or self.alpha > 0, f"must be positive, not {self.alpha}"),
            ("dropout", 0 <= self.dropout < 1, f"must be in [0, 1), not {self.dropout}"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, f"must be in [0, 1), not {self.label_smoothing}"),
            ("lexical_weight", 0 <= self.lexical_weight < 1, f"must be in [0, 1), not {self.lexical_weight}"),
            ("early_stop", self.early_stop >= 0, f"must be 0 (off) or a number of epochs, not {self.early_stop}"),
            ("warmup_fraction", 0 <= self.warmup_fraction <= 1, f"must be between 0 and 1, not {self.warmup_fraction}"),
            ("eval_batch_size", self.eval_batch_size >= 1, f"must be at least 1, not {self.eval_batch_size}"),
            ("target_modules", bool(self.target_modules), "needs at least one module name"),
        ]  # fmt: skip
        for name, ok, why in checks:
            if not ok:
                raise _refused(name, why)

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else self.rank


@dataclass
class TrainConfig:
    """One training run: what to train on, where to write, on which model and device, and its Recipe."""

    datafile: str
    outfile: str = "checkpoints/adapter"
    basemodel: str | None = None
    device: str = "auto"
    promptfile: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False
    cache_memory_gb: float = 4.0  # keep prefix caches across epochs up to this size (else per batch)
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        gb = self.cache_memory_gb
        if not math.isfinite(gb):
            raise _refused("cache_memory_gb", f"must be a finite number, not {gb}")
        if gb < 0:
            raise _refused("cache_memory_gb", f"must be >= 0, not {gb}")

    def recorded(self) -> dict[str, Any]:
        """validora.json's "training" block: the recipe, the hyperparameters that shape the weights."""
        return asdict(self.recipe)
