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
    "LlamaCppError": "validora.llamacpp",
    "TrainConfig": "validora.training",
    "Recipe": "validora.training",
    "Trainer": "validora.training",
    "TrainReport": "validora.training",
    "train": "validora.training",
    "Validator": "validora.validator",
    "Backend": "validora.backends.base",
    "LocalHFBackend": "validora.backends.huggingface",
    "LlamaCppBackend": "validora.backends.llamacpp",
    "CustomIntrinsicAdapter": "validora.adapters",
    "ChatContext": "validora.context",
    "Session": "validora.session",
    "req": "validora.requirements",
    "Requirement": "validora.requirements",
    "ValidationResult": "validora.requirements",
    "RejectionSamplingStrategy": "validora.sampling",
    "MultiTurnStrategy": "validora.sampling",
    "SamplingResult": "validora.sampling",
    "ModelOutput": "validora.sampling",
    "load_validator": "validora.validator",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'validora' has no attribute {name!r}")
