"""`m alora predict ADAPTER TEXT...`: the label and every label's probability, as a table or JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from validora.cli.display import handles_errors, out
from validora.errors import ConfigError


def _read_texts(path: Path, fmt: str) -> list[tuple[str, str | None]]:
    """(text, its requirement) from --file: JSONL ("item", optional "requirement") or one text per line."""
    from validora.data import load_texts

    if str(path) == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        raw = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8")
        examples = load_texts("-", raw, fmt=fmt)
    else:
        examples = load_texts(path, fmt=fmt)
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Items scored per forward pass (at least 1).")] = 8,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit, when ADAPTER is a hub id.")
    ] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per text on stdout.")] = False,
) -> None:
    """Classify texts with an adapter: predicted label and the probability of every label."""
    pairs: list[tuple[str, str | None]] = [(text, None) for text in texts or []]
    if file is not None:
        if str(file) != "-" and not file.exists():
            raise ConfigError(f"--file {file} does not exist.")
        if file.is_dir():
            raise ConfigError(f"--file {file} is a directory; give a text or JSONL file.")
        pairs += _read_texts(file, text_format)
    items = [text for text, _ in pairs]
    if not items:
        raise ConfigError("Nothing to classify: give texts as arguments or --file.")
    from validora.validator import load_validator

    validator = load_validator(adapter, basemodel=basemodel, device=device, revision=revision)
    results = validator.predict(items, requirement, requirements=[r for _, r in pairs], batch_size=batch_size)
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
