"""Shared display helpers: error handling, rich progress, metric tables."""

from __future__ import annotations

import functools
import re
import sys
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
# Library names whose flag is not the name with dashes: load_texts(fmt=...), publish.upload(repo_id=...),
# Trainer(resume_state=...).
_FLAGS = {"fmt": "--format", "repo_id": "--name", "resume_state": "--resume"}
# Settings the CLI makes with another flag: predict chooses its engine with --server.
_VALUES = {'engine="llama-server"': "--server", 'engine="in-process"': "without --server"}


def flag_of(option: str) -> str:
    """The flag of a library option: the table's, else the name with dashes (learning_rate: --learning-rate)."""
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


_SETTING = re.compile(r"(?<![\w./=-])([a-z][a-z0-9_]*)=(True\b|([\"'])(.*?)\3|(?=[^\s=]))")


@functools.cache
def _cli_options() -> frozenset[str]:
    """The Python names of every option of every `m` command (and the table's library names). The app is
    read from the loaded app module (it imports this module: no import back)."""
    app = sys.modules["validora.cli.commands"].app
    names: set[str] = set(_FLAGS)

    def walk(command: Any) -> None:
        names.update(
            p.name
            for p in getattr(command, "params", [])
            if p.name and any(o.startswith("--") for o in getattr(p, "opts", ()))
        )
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return frozenset(names)


def with_flags(text: str, about: str | None = None) -> str:
    """`text` as the CLI shows it, the one rule for every message and notice: the library names settings as
    Python callers pass them (`overwrite=True`, `basemodel=X`, `fmt="jsonl"`), shown here as flags
    (`--overwrite`, `--basemodel X`, `--format jsonl`); the option a message is `about` also where it
    begins the message (`learning_rate must be`) or stands alone as an underscore name (never an English
    word; never inside a path)."""
    for value, flag in _VALUES.items():
        text = text.replace(value, flag)

    def setting(m: re.Match[str]) -> str:
        if m.group(1) not in _cli_options():  # `run=2` in a user's path is no setting
            return m.group(0)
        flag = flag_of(m.group(1))
        if m.group(2) == "True":
            return flag
        return f"{flag} {m.group(4)}" if m.group(3) else f"{flag} "

    text = _SETTING.sub(setting, text)
    if about:
        if text.startswith(f"{about} "):
            text = flag_of(about) + text[len(about) :]
        if "_" in about:
            text = re.sub(rf"(?<![\w/.-]){re.escape(about)}(?![\w/=-])", flag_of(about), text)
    return text


def error_message(exc: ValidoraError) -> str:
    """The message as the CLI shows it (`with_flags`)."""
    return with_flags(str(exc), exc.option)


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
        """A notice from the library, its options shown as flags as in errors."""
        self._progress.console.print(with_flags(message), highlight=False, markup=False)


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
