"""`m alora eval ADAPTER DATA.jsonl`: accuracy, macro-F1, calibration error, per-label table,
confusion matrix; with --label and a target, the probability threshold that meets it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from validora.cli import options
from validora.cli.display import console, handles_errors, metrics_tables, out
from validora.errors import ConfigError

if TYPE_CHECKING:
    from validora.backends.validator import Validator
    from validora.core.calibration import Threshold
    from validora.core.data import Example


def _beside(plot: Path, kind: str) -> Path:
    """`cm.png` → `cm-reliability.png`: the other plots go next to the one named by --plot."""
    return plot.with_name(f"{plot.stem}-{kind}.png")


def _check_options(
    label: str | None, precision: float | None, recall: float | None, plot: Path | None, overwrite: bool
) -> list[Path]:
    """Refuse inconsistent options before the model loads; return the plot files to write."""
    from validora.core.calibration import positive_number

    if precision is not None and recall is not None:
        raise ConfigError("Give --target-precision or --target-recall, not both.")
    target = precision if precision is not None else recall
    if label is None and target is not None:
        raise ConfigError(
            "--target-precision/--target-recall need --label: the label whose threshold to find."
        )
    if label is not None and target is None:
        raise ConfigError(
            f"--label {label} needs --target-precision or --target-recall (a number in (0, 1])."
        )
    if target is not None and not (positive_number(target) and target <= 1):
        flag = "--target-precision" if precision is not None else "--target-recall"
        raise ConfigError(f"{flag} must be above 0 and at most 1, not {target}.")
    if plot is None:
        return []
    if plot.is_dir():
        raise ConfigError(f"--plot {plot} is a directory; give a .png file name.")
    if not plot.parent.is_dir():
        raise ConfigError(f"--plot {plot}: the directory {plot.parent} does not exist.")
    plots = [plot, _beside(plot, "reliability"), *([_beside(plot, "pr")] if label else [])]
    for path in plots:
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} already exists; pass --overwrite to replace it.")
    return plots


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
    label: Annotated[
        str | None,
        typer.Option(help="Find the threshold on P(LABEL) meeting --target-precision or --target-recall."),
    ] = None,
    target_precision: Annotated[
        float | None,
        typer.Option(help="With --label: the lowest threshold whose precision is at least this (0-1]."),
    ] = None,
    target_recall: Annotated[
        float | None,
        typer.Option(help="With --label: the highest threshold whose recall is at least this (0-1]."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write the confusion matrix as a PNG here, the reliability diagram beside it as "
            "<stem>-reliability.png and, with --label, the precision-recall curve as <stem>-pr.png."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Allow --plot to replace existing files.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    allow_base_mismatch: options.AllowBaseMismatch = False,
) -> None:
    """Evaluate an adapter on a labeled JSONL file: accuracy, macro-F1, calibration error (ECE, 10
    bins, on the adapter's calibrated probabilities) and, with --label, a threshold for req(threshold=)."""
    plots = _check_options(label, target_precision, target_recall, plot, overwrite)
    from validora.backends.validator import load_validator
    from validora.core.data import load_jsonl
    from validora.score.evaluation import check_label, evaluation

    examples = load_jsonl(datafile)
    validator = load_validator(
        adapter, basemodel=basemodel, device=device, revision=revision,
        allow_base_mismatch=allow_base_mismatch,
    )  # fmt: skip
    check_label(label, validator.fmt.labels)
    gold = [e.label for e in examples]
    _warn_truncated(validator, examples)
    metrics, scores = validator.evaluate(
        [e.item for e in examples], gold, [e.requirement for e in examples], batch_size=batch_size
    )
    report = evaluation(
        metrics, scores, gold, validator.fmt.labels, temperature=validator.info.temperature,
        lexical=validator.info.lexical, label=label, target_precision=target_precision,
        target_recall=target_recall,
    )  # fmt: skip
    if plots:
        report.write_plots(plots, title=datafile.name)
    if json_out:
        out.print_json(json.dumps(report.to_dict()))
        return
    tables = metrics_tables(report.metrics, f"{adapter} on {datafile}")
    tables[0].add_row("ECE (10 bins)", f"{report.ece:.3f}")
    tables[0].add_row("temperature", f"{report.temperature:.3g}")
    if (lex := report.lexical) is not None:
        tables[0].add_row(
            "lexical model",
            f"{lex.get('kind', '?')}, weight {lex['weight']:g}, mixture temperature {lex['mixture_temperature']:.3g}",
        )
    for table in tables:
        out.print(table)
    if (found := report.threshold) is not None:
        out.print(_threshold_table(found, label or ""))
        out.print(
            f"In a program: req(..., accept=[{label!r}], threshold={found.threshold!r}) "
            f"passes when P({label}) ≥ {found.threshold!r}.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    for path in plots:
        console.print(f"Wrote {path}")


def _warn_truncated(validator: Validator, examples: list[Example]) -> None:
    """Scoring cuts a text longer than the adapter's max_length from the left without a word: say so."""
    from validora.core.prompting import truncated_count, truncation_note

    reqs = [validator.adapter.requirement_for(e.requirement) for e in examples]
    if cut := truncated_count(validator.fmt, [e.item for e in examples], reqs):
        note = truncation_note(cut, len(examples), validator.fmt.max_length, "--max-length")
        console.print(f"[yellow]Warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def _threshold_table(found: Threshold, label: str) -> Table:
    table = Table(title="Threshold", show_header=False)
    table.add_row("label", escape(label))
    table.add_row("target", f"{found.target} ≥ {found.value:g}")
    table.add_row("threshold", repr(found.threshold))
    table.add_row("precision", f"{found.precision:.3f}")
    table.add_row("recall", f"{found.recall:.3f}")
    return table
