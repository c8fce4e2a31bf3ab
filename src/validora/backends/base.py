"""What programs need from a backend: the interface `LocalHFBackend` and any other engine satisfy.

A backend generates with its plain base model and scores checks of one output, each a requirement
judged by an added adapter or (adapter None) by the base model as a yes/no judge. `Session` and
`validate_output` use nothing else. This module imports no torch: a backend that only talks HTTP
(DESIGN §11) can implement it; `CheckResult` and `LabelScores` are re-exported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from validora.score.checks import CheckResult
    from validora.score.readout import LabelScores

__all__ = ["Backend", "CheckResult", "CheckSpec", "Generation", "LabelScores"]

# One check of one output: (adapter name, or None for the base-model yes/no judge; requirement text or None).
CheckSpec = tuple[str | None, str | None]


@dataclass(frozen=True)
class Generation:
    """One generated answer and what it cost."""

    text: str
    seconds: float
    new_tokens: int


@runtime_checkable
class Backend(Protocol):
    """A base model plus adapters, as programs see it (the few members a new backend implements)."""

    # True: requirements are judged by the added adapters; False: by the base model unless adapter= is named.
    default_to_constraint_checking_alora: bool

    def generate(
        self, messages: Sequence[dict[str, str]], model_options: dict[str, Any] | None = None
    ) -> Generation:
        """Answer a chat conversation with the plain base model (no adapter active)."""
        ...

    def check(self, output: str, checks: Sequence[CheckSpec]) -> list[CheckResult]:
        """Label probabilities of every check of one output, in order; an unknown adapter is an AdapterError."""
        ...

    def adapter_labels(self) -> dict[str, list[str]]:
        """Every added adapter's labels, read at one moment: what routes a set of requirements."""
        ...


_REEXPORTS = {"CheckResult": "validora.score.checks", "LabelScores": "validora.score.readout"}


def __getattr__(name: str) -> Any:
    if name in _REEXPORTS:  # these modules import torch: loaded only when a backend builds results
        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
