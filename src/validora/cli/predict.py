"""`m alora predict ADAPTER TEXT...`: the label and every label's probability, as a table or JSONL;
computed in-process, or by a running llama-server (`--server`, see `m alora serve`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from validora.cli import options
from validora.cli.display import console, handles_errors, out, sigterm_as_interrupt
from validora.errors import ConfigError

if TYPE_CHECKING:
    from validora.programs.batch import BatchJob, BatchRun
    from validora.programs.engines import Engine


def _stdin_bytes() -> bytes:
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8")


def _check_arguments(texts: list[str], requirement: str | None) -> None:
    """Texts and a requirement given on the command line: an empty one would be scored as a verdict on
    nothing, and bytes that are not UTF-8 (lone surrogates here) crash the tokenizer later."""
    from validora.core.data import is_blank
    from validora.core.jsonio import has_surrogate

    for number, text in enumerate(texts, start=1):
        if is_blank(text):
            shown = "empty" if not text.strip() else "blank (only invisible characters)"
            raise ConfigError(f"Text argument {number} is {shown}; give a text to classify, or leave it out.")
        if has_surrogate(text):
            raise ConfigError(f"Text argument {number} is not valid UTF-8 text; pass it as UTF-8.")
    if requirement is not None and has_surrogate(requirement):
        raise ConfigError("--requirement is not valid UTF-8 text; pass it as UTF-8.")


def _read_texts(path: Path, fmt: str) -> list[tuple[str, str | None]]:
    """(text, its requirement) from --file: JSONL ("item", optional "requirement") or one text per line."""
    from validora.core.data import load_texts

    if str(path) != "-" and not path.exists():
        raise ConfigError(f"--file {path} does not exist.")
    if path.is_dir():
        raise ConfigError(f"--file {path} is a directory; give a text or JSONL file.")
    examples = load_texts("-", _stdin_bytes(), fmt=fmt) if str(path) == "-" else load_texts(path, fmt=fmt)
    return [(e.item, e.requirement) for e in examples]


@handles_errors
def predict(
    adapter: Annotated[
        str, typer.Argument(help="Adapter directory written by `m alora train`, or a hub id.")
    ],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            help='Read texts from a file: JSONL ("item", optional "requirement") or one text per line; '
            "- for stdin. See --format.",
        ),
    ] = None,
    text_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="How to read --file: auto (a .jsonl suffix, any case, means JSONL, other files plain text; "
            'stdin is JSONL when every non-blank line is a JSON object with "item"), jsonl or text.',
        ),
    ] = "auto",
    requirement: Annotated[
        str | None,
        typer.Option(
            help='Requirement text, for adapters trained with one (a .jsonl line\'s "requirement" wins).'
        ),
    ] = None,
    basemodel: Annotated[str | None, typer.Option(help="Override the adapter's base model.")] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda or mps (in-process; not with --server).")
    ] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, help="Items scored per forward pass (at least 1); with --server, texts per written batch."
        ),
    ] = 8,
    server: Annotated[
        str | None,
        typer.Option(
            help="Score through this running llama-server (the URL `m alora serve ADAPTER` prints) instead "
            "of loading the model here; the server must serve this adapter.",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --server: texts in flight at once (start the server with --parallel N to match); "
            "results stay in input order.",
        ),
    ] = 1,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit, when ADAPTER is a hub id.")
    ] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per text on stdout.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            help="With --file: stream results as JSONL to this file (input line number, item, label, probs), "
            "flushed batch by batch with a progress bar; rerunning the same command resumes where it stopped "
            "(with --server or without, as the file was started).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="With --output: start over, replacing earlier results.")
    ] = False,
    api_key: Annotated[
        str | None, options.api_key("With --server: the key the server was started with")
    ] = None,
    allow_base_mismatch: options.AllowBaseMismatch = False,
) -> None:
    """Classify texts with an adapter: predicted label and the probability of every label."""
    from validora.programs.engines import Engine

    if server is None and concurrency != 1:
        raise ConfigError("--concurrency goes with --server (in-process scoring batches instead).")
    if server is not None and device != "auto":
        raise ConfigError("--device chooses where the model runs here; with --server the server computes.")
    _check_arguments(texts or [], requirement)
    engine = Engine(adapter, server=server, basemodel=basemodel, device=device, revision=revision,
                    batch_size=batch_size, concurrency=concurrency, api_key=api_key or None,
                    allow_base_mismatch=allow_base_mismatch)  # fmt: skip
    if output is not None or overwrite:
        _predict_to_file(engine, texts, file, output, overwrite, text_format, requirement)
        return
    pairs: list[tuple[str, str | None]] = [(text, None) for text in texts or []]
    if file is not None:
        pairs += _read_texts(file, text_format)
    items = [text for text, _ in pairs]
    if not items:
        raise ConfigError("Nothing to classify: give texts as arguments or --file.")
    results = engine.predict(items, [r for _, r in pairs], requirement)
    if jsonl:
        for text, r in zip(items, results, strict=True):
            out.print(
                json.dumps({"item": text, "label": r.label, "probs": r.probs}, ensure_ascii=False),
                soft_wrap=True,
                highlight=False,
            )
        return
    table = Table(show_lines=True)
    table.add_column("text", overflow="fold", ratio=3)
    table.add_column("label", style="bold", no_wrap=True)
    table.add_column("probabilities", no_wrap=True)
    for text, r in zip(items, results, strict=True):
        ranked = sorted(r.probs.items(), key=lambda kv: -kv[1])
        table.add_row(
            escape(text), escape(r.label), escape("\n".join(f"{p:.3f} {label}" for label, p in ranked))
        )
    out.print(table)


def _predict_to_file(
    engine: Engine,
    texts: list[str] | None,
    file: Path | None,
    output: Path | None,
    overwrite: bool,
    text_format: str,
    requirement: str | None,
) -> None:
    """--output: the library streams and resumes; here only the progress bar and the messages."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if output is None:
        raise ConfigError("--overwrite goes with --output.")
    if file is None or texts:
        raise ConfigError(
            "--output writes the results of --file; give the texts in a file, not as arguments."
        )
    stdin = _stdin_bytes() if str(file) == "-" else None
    job = engine.plan(  # bad input and a mismatched --output are refused before the model loads
        file, output, requirement=requirement, fmt=text_format, overwrite=overwrite, stdin=stdin
    )
    sigterm_as_interrupt()  # `kill` leaves complete lines, like Ctrl-C
    bar = Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    state = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        if not bar.task_ids:
            bar.add_task("scoring", total=total, completed=done)  # resumed lines do not count toward ETA
            bar.start()
        bar.update(bar.task_ids[0], completed=done)
        state.update(done=done, total=total)

    def kept() -> str:
        return f"{state['done']} of {state['total'] or '?'} results are in {escape(str(output))}"

    # A server that is not there or lacks the adapter fails here, before the output is touched.
    try:
        run = _run_job(job, engine, progress, bar, kept)
    finally:
        job.close()  # the output's lock: released however the run ended
    if run.dropped_partial:
        console.print(
            "Dropped an incomplete last line left by an interrupted run; it was scored again.", soft_wrap=True
        )
    resumed = f" ({run.skipped} were already there)" if run.skipped else ""
    console.print(
        f"{run.total} results in {escape(str(run.output))}{resumed}.", highlight=False, soft_wrap=True
    )


def _run_job(job: BatchJob, engine: Engine, progress: Any, bar: Any, kept: Any) -> BatchRun:
    """The scoring, with the messages for an interruption and a lost server."""
    from validora.errors import LlamaCppError

    with engine.open(job.meta["adapter_sha256"]) as score:
        try:
            run = job.run(score, progress)
        except KeyboardInterrupt:
            bar.stop()
            console.print(
                f"[yellow]Interrupted.[/] {kept()}; run the same command again to resume.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except LlamaCppError as exc:  # the server went away or failed mid-run: what is done stays
            bar.stop()
            console.print(
                f"[bold red]Error:[/] {escape(str(exc))}\n{kept()}; once a llama-server serves the adapter "
                "again, run the same command (any --server URL) to resume.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        finally:
            bar.stop()
    return run
