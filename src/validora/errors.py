"""One root error class; only the CLI turns these into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ValidoraError(Exception):
    """Root of every error validora raises on purpose.

    `option`: the setting the message is about, by its Python name (`learning_rate`), when the CLI has a
    flag for it; the message begins with that name. The library names settings as Python callers write
    them; the CLI shows the flag instead (`--learning-rate must be positive, not -1.`).
    """

    exit_code = 1
    option: str | None = None

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ConfigError(ValidoraError):
    """A flag, option or config value is invalid."""

    exit_code = 2


class ModelError(ValidoraError):
    """A base model cannot be found or loaded."""


class AdapterError(ValidoraError):
    """An adapter directory is missing, incomplete or does not match the base model."""


class HubError(ValidoraError):
    """Talking to the Hugging Face Hub failed."""


class RequirementError(ConfigError):
    """A requirement cannot be judged as written; the message says how to fix it."""


class TrainingDiverged(ValidoraError):
    """The loss or the weights became NaN or infinite; the run stops before anything is saved."""


class ResumeError(ValidoraError):
    """The saved state belongs to another run, or cannot be read: resuming would not give its adapter."""

    exit_code = 2


class LlamaCppError(ValidoraError):
    """llama-server could not be found, built, started or reached."""


@dataclass(frozen=True)
class LineProblem:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(ValidoraError):
    """A dataset is unusable; carries every line-level problem found, not just the first."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        problems: list[LineProblem] | None = None,
        more: int = 0,
        *,
        option: str | None = None,
    ):
        self.problems = problems or []
        self.more = more
        lines = [message, *(f"  {p}" for p in self.problems)]
        if more:
            lines.append(f"  ... and {more} more bad line(s)")
        super().__init__("\n".join(lines), option=option)
