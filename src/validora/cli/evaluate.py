"""`m alora eval ADAPTER DATA.jsonl`: accuracy, macro-F1, per-label table, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from validora.cli.display import console, handles_errors, metrics_tables, out
from validora.errors import ConfigError


@handles_errors
def evaluate(
    adapter: Annotated[
        str, typer.Argument(help="Adapter directory written by `m alora train`, or a hub id.")
    ],
    datafile: Annotated[Path, typer.Argument(help="Labeled JSONL to evaluate on.")],
    basemodel: Annotated[
        str | None, typer.Option(help="Override the adapter's base model (must tokenize identically).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Items scored per forward pass (at least 1).")] = 8,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit, when ADAPTER is a hub id.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the confusion matrix as a PNG here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow --plot to replace an existing file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Evaluate an adapter on a labeled JSONL file."""
    if plot is not None and plot.is_dir():
        raise ConfigError(f"--plot {plot} is a directory; give a .png file name.")
    if plot is not None and not plot.parent.is_dir():
        raise ConfigError(f"--plot {plot}: the directory {plot.parent} does not exist.")
    if plot is not None and plot.exists() and not overwrite:
        raise ConfigError(f"{plot} already exists; pass --overwrite to replace it.")
    from validora.data import load_jsonl
    from validora.validator import load_validator

    examples = load_jsonl(datafile)
    validator = load_validator(adapter, basemodel=basemodel, device=device, revision=revision)
    metrics, _ = validator.evaluate(
        [e.item for e in examples],
        [e.label for e in examples],
        [e.requirement for e in examples],
        batch_size=batch_size,
    )
    if plot is not None:
        from validora.reports import confusion_matrix

        confusion_matrix(metrics, plot, title=f"{datafile.name}")
    if json_out:
        out.print_json(json.dumps(metrics.to_dict()))
        return
    for table in metrics_tables(metrics, f"{adapter} on {datafile}"):
        out.print(table)
    if plot is not None:
        console.print(f"Confusion matrix written to {plot}")
