"""validora: train small LoRA / activated-LoRA adapters on labeled JSONL and use them as validators.

Names are imported lazily so that `m --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ValidoraError": "validora.errors",
    "ConfigError": "validora.errors",
    "DataError": "validora.errors",
    "ModelError": "validora.errors",
    "AdapterError": "validora.errors",
    "HubError": "validora.errors",
    "LlamaCppError": "validora.errors",
    "TrainConfig": "validora.train.trainer",
    "Recipe": "validora.train.trainer",
    "Trainer": "validora.train.trainer",
    "TrainReport": "validora.train.trainer",
    "train": "validora.train.trainer",
    "Validator": "validora.backends.validator",
    "Backend": "validora.backends.base",
    "LocalHFBackend": "validora.backends.huggingface",
    "LlamaCppBackend": "validora.backends.llamacpp",
    "CustomIntrinsicAdapter": "validora.adapter.loading",
    "ChatContext": "validora.programs.context",
    "Session": "validora.programs.session",
    "req": "validora.programs.requirements",
    "Requirement": "validora.programs.requirements",
    "ValidationResult": "validora.programs.requirements",
    "RejectionSamplingStrategy": "validora.programs.sampling",
    "MultiTurnStrategy": "validora.programs.sampling",
    "SamplingResult": "validora.programs.sampling",
    "ModelOutput": "validora.programs.sampling",
    "load_validator": "validora.backends.validator",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'validora' has no attribute {name!r}")
