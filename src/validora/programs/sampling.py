"""Sampling strategies: what to do when a generation fails its requirements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from validora.errors import ConfigError
from validora.programs.requirements import ValidationResult


@dataclass
class ModelOutput:
    """A generation and how it was judged; `str()` is the text."""

    text: str
    validations: list[ValidationResult] = field(default_factory=list)
    generation_seconds: float = 0.0
    validation_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.validations)

    def __str__(self) -> str:
        return self.text


@dataclass
class SamplingResult:
    success: bool
    result: ModelOutput  # the chosen generation: the first that passed, else the one that passed most
    sample_generations: list[ModelOutput]
    sample_validations: list[list[ValidationResult]]

    @property
    def validations(self) -> list[ValidationResult]:
        """How the chosen generation (`result`, what `str()` shows) was judged, as on a plain answer."""
        return self.result.validations

    def __str__(self) -> str:
        return str(self.result)


Attempt = Callable[[list[dict[str, str]], dict[str, Any]], ModelOutput]


@dataclass
class RejectionSamplingStrategy:
    """Generate, validate, and re-sample (with sampling on, so retries differ) until all pass or the budget ends."""

    loop_budget: int = 2
    retry_temperature: float = 0.7

    def __post_init__(self) -> None:
        if self.loop_budget < 1:
            raise ConfigError(f"loop_budget must be at least 1, not {self.loop_budget}.")

    def retry_messages(self, messages: list[dict[str, str]], failed: ModelOutput) -> list[dict[str, str]]:
        return messages

    def run(
        self, messages: list[dict[str, str]], options: dict[str, Any], attempt: Attempt
    ) -> SamplingResult:
        outputs: list[ModelOutput] = []
        current = list(messages)
        for i in range(self.loop_budget):
            opts = dict(options)
            if i > 0:
                if not opts.get("temperature"):
                    opts["temperature"] = self.retry_temperature
                if opts.get("seed") is not None:
                    opts["seed"] = int(opts["seed"]) + i
            output = attempt(current, opts)
            outputs.append(output)
            if output.passed:
                break
            current = self.retry_messages(list(messages), output)
        chosen = next((o for o in outputs if o.passed), None) or max(
            outputs, key=lambda o: (sum(v.passed for v in o.validations), sum(v.score for v in o.validations))
        )
        return SamplingResult(chosen.passed, chosen, outputs, [o.validations for o in outputs])


@dataclass
class MultiTurnStrategy(RejectionSamplingStrategy):
    """Like rejection sampling, but a retry sees the failed answer and the failed requirements as a user turn."""

    def retry_messages(self, messages: list[dict[str, str]], failed: ModelOutput) -> list[dict[str, str]]:
        problems = "\n".join(f"- {v.requirement} ({v.reason})" for v in failed.validations if not v.passed)
        return [
            *messages,
            {"role": "assistant", "content": failed.text},
            {
                "role": "user",
                "content": f"Your answer does not meet these requirements:\n{problems}\nPlease try again.",
            },
        ]
