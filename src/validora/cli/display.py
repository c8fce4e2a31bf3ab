"""Shared display helpers: error handling, rich progress, metric tables."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from validora.errors import ValidoraError

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])
# Library options whose flag is not the name with dashes: load_texts(fmt=...), publish.upload(repo_id=...).
_FLAGS = {"fmt": "--format", "repo_id": "--name"}


def error_message(exc: ValidoraError) -> str:
    """The message as the CLI shows it: the option it is about (learning_rate) as its flag
    (--learning-rate), where it begins the message or where the message says how to set it
    (`trust_remote_code=True` → `--trust-remote-code`, `basemodel=X` → `--basemodel X`)."""
    text, option = str(exc), exc.option
    if not option:
        return text
    flag = _FLAGS.get(option, "--" + option.replace("_", "-"))
    if text.startswith(f"{option} "):
        text = flag + text[len(option) :]
    text = re.sub(rf"(?<![\w.-]){re.escape(option)}=True\b", flag, text)
    return re.sub(rf"(?<![\w.-]){re.escape(option)}=(?=\S)", flag + " ", text)


def handles_errors(func: F) -> F:
    """Turn validora's errors into a message and an exit code; no traceback for the user's mistakes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidoraError as exc:
            console.print(
                f"[bold red]Error:[/] {escape(error_message(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # unwritable directories, full disks: a message, not a traceback
            console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Nothing was written.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class RichProgress:
    """The training loop's Progress, drawn with rich (bar, count, elapsed, ETA)."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int) -> None:
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False, markup=False)


def metrics_tables(metrics: Any, title: str) -> list[Table]:
    summary = Table(title=title, show_header=False)
    summary.add_row("examples", str(metrics.n))
    summary.add_row("accuracy", f"{metrics.accuracy:.3f}")
    summary.add_row("macro-F1", f"{metrics.macro_f1:.3f}")
    summary.add_row("majority-label accuracy", f"{metrics.chance_accuracy:.3f}")
    per_label = Table(title="Per label")  # labels are user text: no markup
    for col in ("label", "precision", "recall", "F1", "support"):
        per_label.add_column(col, justify="left" if col == "label" else "right")
    for label, s in metrics.per_label.items():
        per_label.add_row(
            escape(label), f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", str(s.support)
        )
    confusion = Table(title="Confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for label in metrics.labels:
        confusion.add_column(escape(label), justify="right")
    for label, row in zip(metrics.labels, metrics.confusion, strict=True):
        confusion.add_row(escape(label), *(str(v) for v in row))
    return [summary, per_label, confusion]


def sigterm_as_interrupt() -> None:
    """`kill` gets the same clean exit as Ctrl-C: the earlier adapter stays, the staging directory goes.

    During the final swap of the adapter directory both signals wait until it is done (see core/files.py).
    """
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
