"""`m alora train`: flags of the reference command plus what users need; the loop lives in train/trainer.py."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from validora.cli import options
from validora.cli.display import (
    RichProgress,
    console,
    handles_errors,
    metrics_tables,
    out,
    sigterm_as_interrupt,
)
from validora.train.trainer import Recipe, TrainConfig

if TYPE_CHECKING:
    from validora.train.trainer import Trainer

# Each flag's default: its field's, in TrainConfig or its Recipe.
_D = {
    f.name: f.default
    for f in (*dataclasses.fields(TrainConfig), *dataclasses.fields(Recipe))
    if f.default is not dataclasses.MISSING
}
DATA = "Data"
MODEL = "Model and adapter"
OPT = "Optimisation"
RUN = "Run"


@handles_errors
def train(
    datafile: Annotated[
        Path, typer.Argument(help='JSONL file, one {"item": ..., "label": ...} object per line.')
    ],
    basemodel: Annotated[
        str | None,
        options.basemodel(
            "Hugging Face id, model directory or .gguf file. Default: the embedded smollm2-135m-instruct.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    outfile: Annotated[
        Path,
        typer.Option(help="Adapter directory to write (replaced only when complete).", rich_help_panel=RUN),
    ] = Path(_D["outfile"]),
    adapter: Annotated[
        str,
        typer.Option(help="alora (activated LoRA: shares the item's cache) or lora.", rich_help_panel=MODEL),
    ] = _D["adapter"],
    device: Annotated[
        str, options.device("auto (cuda, then mps, then cpu), cpu, cuda or mps.", rich_help_panel=RUN)
    ] = _D["device"],
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Passes over the training split; the best epoch is kept. Default: enough for "
            "250 optimizer updates, 6 to 20 epochs (small sets get more passes).",
            rich_help_panel=OPT,
        ),
    ] = _D["epochs"],
    learning_rate: Annotated[
        float,
        typer.Option(
            help="Peak AdamW learning rate (linear warm-up, then linear decay).", rich_help_panel=OPT
        ),
    ] = _D["learning_rate"],
    batch_size: Annotated[
        int,
        options.batch_size(
            "Examples per forward pass, per process (several processes: batch_size x processes per batch).",
            rich_help_panel=OPT,
        ),
    ] = _D["batch_size"],
    grad_accum: Annotated[int, typer.Option(help="Batches per optimiser step.", rich_help_panel=OPT)] = _D[
        "grad_accum"
    ],
    max_length: Annotated[
        int,
        options.max_length(
            "Token limit per prompt; longer items lose their beginning, never the label.",
            rich_help_panel=DATA,
        ),
    ] = _D["max_length"],
    promptfile: Annotated[
        Path | None,
        typer.Option(
            help='JSON file {"invocation_prompt": "..."}; default: a check_requirement turn of the chat template.',
            rich_help_panel=MODEL,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seed for the split, shuffling and adapter initialisation.", rich_help_panel=RUN),
    ] = _D["seed"],
    val_fraction: Annotated[
        float, typer.Option(help="Share of each label held out for validation.", rich_help_panel=DATA)
    ] = _D["val_fraction"],
    rank: Annotated[int, typer.Option(help="LoRA rank r.", rich_help_panel=MODEL)] = _D["rank"],
    alpha: Annotated[
        int | None, typer.Option(help="LoRA alpha (default: equal to --rank).", rich_help_panel=MODEL)
    ] = None,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.", rich_help_panel=MODEL)] = _D["dropout"],
    label_smoothing: Annotated[
        float,
        typer.Option(
            help="Share of the label loss spread over the whole vocabulary (0: plain likelihood).",
            rich_help_panel=OPT,
        ),
    ] = _D["label_smoothing"],
    lexical_weight: Annotated[
        float,
        typer.Option(
            help="Share of a TF-IDF + logistic-regression model trained beside the adapter in the label "
            "probabilities (0: the adapter alone).",
            rich_help_panel=OPT,
        ),
    ] = _D["lexical_weight"],
    early_stop: Annotated[
        int,
        typer.Option(help="Stop after this many epochs without improvement (0: never).", rich_help_panel=OPT),
    ] = _D["early_stop"],
    prefix_cache: Annotated[
        bool,
        typer.Option(
            help="aLoRA: compute item prefixes once, without gradients (--no-prefix-cache: full forward).",
            rich_help_panel=RUN,
        ),
    ] = _D["prefix_cache"],
    cache_memory_gb: Annotated[
        float, typer.Option(help="Keep prefix caches across epochs up to this many GiB.", rich_help_panel=RUN)
    ] = _D["cache_memory_gb"],
    overwrite: Annotated[
        bool, options.overwrite("Replace an existing adapter at --outfile.", rich_help_panel=RUN)
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the base model's own Python code to run.", rich_help_panel=MODEL)
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run of the same data and settings from its last completed epoch "
            "(its state is kept beside --outfile); without one, start from the first epoch.",
            rich_help_panel=RUN,
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the training report as JSON on stdout.", rich_help_panel=RUN)
    ] = False,
) -> None:
    """Train an aLoRA or LoRA validator adapter on labeled JSONL and evaluate it on a held-out split."""
    recipe = Recipe(
        adapter=adapter, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        grad_accum=grad_accum, max_length=max_length, seed=seed, val_fraction=val_fraction, rank=rank,
        alpha=alpha, dropout=dropout, label_smoothing=label_smoothing, lexical_weight=lexical_weight,
        early_stop=early_stop, prefix_cache=prefix_cache,
    )  # fmt: skip
    config = TrainConfig(
        datafile=str(datafile), outfile=str(outfile), basemodel=basemodel, device=device,
        promptfile=None if promptfile is None else str(promptfile), overwrite=overwrite,
        trust_remote_code=trust_remote_code, cache_memory_gb=cache_memory_gb, recipe=recipe,
    )  # fmt: skip
    from validora.train.distributed import launched_rank

    if launched_rank() != 0:  # one of several processes (accelerate launch, torchrun): rank 0 speaks
        _train_quietly(config, resume)
        return
    console.print(
        f"Training {recipe.adapter} on {datafile}; set on the command line: {', '.join(_changed(config)) or 'nothing'}; the rest are defaults.",
        highlight=False,
    )

    from validora.adapter.saving import recover
    from validora.train.trainer import Trainer

    recover(outfile)  # leftovers of a killed run first (one warning line), so `before` is what it restored
    before = _identity(outfile)
    sigterm_as_interrupt()
    try:
        with RichProgress() as progress:
            trainer = Trainer(config, progress, keep_state=True, resume_state=resume)
            target = _run(trainer)
            report = trainer.report
    except KeyboardInterrupt:
        from validora.train.resume import state_path

        # A signal during the final rename is held until it is done: say which adapter --outfile holds.
        now = _identity(outfile)
        if now is not None and now != before:
            said = f"The new adapter had already been written to {outfile}."
            state_path(outfile).unlink(missing_ok=True)  # nothing left to resume
        else:
            said = f"Nothing was written; {outfile} is as it was."
            if state_path(outfile).is_file():
                said += " Run the same command with --resume to continue from the last completed epoch."
        console.print(f"[yellow]Interrupted.[/] {escape(said)}", highlight=False)
        raise typer.Exit(130) from None
    if json_out:
        out.print_json(json.dumps(report.to_dict()))
        return
    for table in metrics_tables(
        report.metrics, f"Held-out validation, epoch {report.best_epoch} of {len(report.epochs)}"
    ):
        console.print(table)
    if report.lexical is not None:
        lex = report.lexical
        console.print(
            f"Mixed with a lexical model ({lex['kind']} n-grams, C {lex['C']:g}, weight {lex['weight']:g}): "
            f"held-out accuracy {lex['val_accuracy']:.3f} (its settings were chosen on that split)."
        )
    console.print(
        f"{report.n_train} training examples, {report.examples_per_second:.1f} examples/s "
        f"({report.train_seconds:.0f} s training, {report.cache_seconds:.0f} s caching prefixes; prefix cache {report.prefix_cache})."
    )
    if report.truncated_items:
        console.print(
            f"[yellow]{report.truncated_items} item(s) were longer than --max-length {max_length} and lost their beginning.[/]"
        )
    if report.at_chance:
        console.print(
            "[bold yellow]Warning:[/] held-out accuracy is no better than always answering the most frequent label. "
            "The adapter has not learned; try a higher --learning-rate or more --epochs."
        )
    elif report.uninformative:
        console.print(
            f"[bold yellow]Warning:[/] the held-out scores barely separate the labels (calibration "
            f"temperature at its bound, {report.temperature:.0f}): every probability will sit near "
            f"1/{len(report.metrics.labels)}. More, or more distinctive, examples per label would help."
        )
    console.print(f"Adapter written to [bold]{target}[/]")


def _train_quietly(config: TrainConfig, resume: bool) -> None:
    """A process other than rank 0: the same work, nothing printed (errors still are); rank 0 saves."""
    from validora.train.trainer import SilentProgress, Trainer

    sigterm_as_interrupt()
    try:
        _run(Trainer(config, SilentProgress(), keep_state=True, resume_state=resume))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _run(trainer: Trainer) -> Path:
    """setup, train, save (rank 0 writes), then leave the process group if any (torch warns at exit
    otherwise); where the adapter is."""
    trainer.setup()
    trainer.train()
    target = trainer.save()
    if trainer.shard.world > 1:
        trainer.accelerator.end_training()
    return target


def _changed(config: TrainConfig) -> list[str]:
    """The settings given on the command line (those not at their default), in the order of the flags."""
    values: dict[str, Any] = {**vars(config), **vars(config.recipe)}
    flags = [name for name in inspect.signature(train).parameters if name in _D]
    return [f"{name}={values[name]}" for name in flags if values[name] != _D[name]]


def _identity(path: Path) -> tuple[int, int] | None:
    """Which directory is at `path` (a swap puts another one there), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
