"""Session: instruct / chat / validate over a backend, with requirements judged by adapters."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from validora.backends.base import Backend
from validora.errors import ConfigError
from validora.programs.context import ChatContext
from validora.programs.requirements import Requirement, ValidationResult, req, validate_output
from validora.programs.sampling import Attempt, ModelOutput, RejectionSamplingStrategy, SamplingResult

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def fill(template: str, variables: dict[str, Any] | None) -> str:
    """Replace {{name}} placeholders; a missing or unused variable is an error, never silence."""
    variables = dict(variables or {})
    names = PLACEHOLDER.findall(template)
    missing = sorted(set(names) - set(variables))
    unused = sorted(set(variables) - set(names))
    if missing:
        raise ConfigError(f"user_variables lacks {missing}, used as {{{{...}}}} in the description.")
    if unused:
        raise ConfigError(
            f"user_variables {unused} are not used by the description (no {{{{name}}}} placeholder)."
        )
    return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), template)


def _requirements(items: Sequence[Requirement | str] | None) -> list[Requirement]:
    return [r if isinstance(r, Requirement) else req(r) for r in items or []]


class Session:
    """A conversation with one backend: each call adds a user turn and the chosen answer."""

    def __init__(self, backend: Backend, ctx: ChatContext | None = None):
        if not isinstance(backend, Backend):
            raise ConfigError(
                f"Session needs a backend such as LocalHFBackend (generate, check, adapter_labels, "
                f"default_to_constraint_checking_alora), not {type(backend).__name__}."
            )
        self.backend = backend
        self.ctx = ctx if ctx is not None else ChatContext()

    def validate(
        self, requirements: Sequence[Requirement | str], output: str | None = None
    ) -> list[ValidationResult]:
        """Judge `output` (default: the last assistant message) against the requirements."""
        text = output if output is not None else self.ctx.last_assistant()
        if text is None:
            raise ConfigError("Nothing to validate: no output given and no assistant message in the context.")
        return validate_output(self.backend, text, _requirements(requirements))

    def _attempt(self, requirements: list[Requirement]) -> Attempt:
        def attempt(messages: list[dict[str, str]], options: dict[str, Any]) -> ModelOutput:
            gen = self.backend.generate(messages, options)
            started = time.perf_counter()
            validations = validate_output(self.backend, gen.text, requirements) if requirements else []
            return ModelOutput(gen.text, validations, gen.seconds, time.perf_counter() - started)

        return attempt

    def instruct(
        self,
        description: str,
        *,
        user_variables: dict[str, Any] | None = None,
        requirements: Sequence[Requirement | str] | None = None,
        strategy: RejectionSamplingStrategy | None = None,
        model_options: dict[str, Any] | None = None,
        return_sampling_results: bool = False,
    ) -> ModelOutput | SamplingResult:
        """Generate an answer to `description` that meets the requirements, re-sampling on failure."""
        prompt = fill(description, user_variables)
        return self._run(
            prompt, _requirements(requirements), strategy, model_options, return_sampling_results
        )

    def chat(
        self,
        content: str,
        *,
        requirements: Sequence[Requirement | str] | None = None,
        strategy: RejectionSamplingStrategy | None = None,
        model_options: dict[str, Any] | None = None,
        return_sampling_results: bool = False,
    ) -> ModelOutput | SamplingResult:
        """One user turn, as is (no placeholders)."""
        return self._run(
            content, _requirements(requirements), strategy, model_options, return_sampling_results
        )

    def _run(
        self,
        prompt: str,
        requirements: list[Requirement],
        strategy: RejectionSamplingStrategy | None,
        model_options: dict[str, Any] | None,
        return_sampling_results: bool,
    ) -> ModelOutput | SamplingResult:
        strategy = strategy or RejectionSamplingStrategy()
        messages = self.ctx.as_messages({"role": "user", "content": prompt})
        result = strategy.run(messages, dict(model_options or {}), self._attempt(requirements))
        self.ctx.add("user", prompt)
        self.ctx.add("assistant", result.result.text)
        return result if return_sampling_results else result.result
