"""FakeBackend: a `Backend` with scripted answers and label probabilities that records every call.

Programs (routing, thresholds, retries, strategies) are tested on it in milliseconds; what the real
model computes is tested on `LocalHFBackend` (tests/programs/test_programs.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from validora.backends.base import CheckResult, CheckSpec, Generation, LabelScores
from validora.errors import AdapterError


@dataclass
class FakeBackend:
    """`labels`: the added adapters and their labels. `texts`: generations in turn (the last repeats).

    `probs[(adapter, output)]` (adapter None: the yes/no judge; output None: any output) are the label
    probabilities a check returns; a check with none scripted is a KeyError, never a silent default.
    """

    labels: dict[str, list[str]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=lambda: ["an answer"])
    probs: dict[tuple[str | None, str | None], dict[str, float]] = field(default_factory=dict)
    default_to_constraint_checking_alora: bool = True
    generated: list[tuple[list[dict[str, str]], dict[str, Any]]] = field(default_factory=list)
    checked: list[tuple[str, list[CheckSpec]]] = field(default_factory=list)

    def generate(
        self, messages: Sequence[dict[str, str]], model_options: dict[str, Any] | None = None
    ) -> Generation:
        text = self.texts[min(len(self.generated), len(self.texts) - 1)]
        self.generated.append(([dict(m) for m in messages], dict(model_options or {})))
        return Generation(text, 0.0, len(text.split()))

    def check(self, output: str, checks: Sequence[CheckSpec]) -> list[CheckResult]:
        self.checked.append((output, list(checks)))
        results = []
        for adapter, _requirement in checks:
            if adapter is not None and adapter not in self.labels:
                raise AdapterError(f"No adapter named {adapter!r}; added: {sorted(self.labels)}.")
            key = (adapter, output) if (adapter, output) in self.probs else (adapter, None)
            probs = dict(self.probs[key])
            results.append(CheckResult(LabelScores(max(probs, key=probs.__getitem__), probs), 0.001))
        return results

    def adapter_labels(self) -> dict[str, list[str]]:
        return {name: list(labels) for name, labels in self.labels.items()}

    @property
    def checks(self) -> list[CheckSpec]:
        """Every check asked for, over all calls, in order."""
        return [spec for _, specs in self.checked for spec in specs]
