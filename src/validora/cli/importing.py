"""`m alora import DIR`: a LoRA/aLoRA adapter trained by another tool becomes a validora adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from validora.cli import options
from validora.cli.display import console, handles_errors, out
from validora.core.prompting import DEFAULT_MAX_LENGTH


@handles_errors
def import_adapter(
    directory: Annotated[
        Path,
        typer.Argument(
            help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors), e.g. one "
            "written by another tool or an intrinsics-repository folder with an io.yaml."
        ),
    ],
    labels: Annotated[
        str | None,
        typer.Option(
            help="The adapter's labels, comma-separated (a,b,c). Default: the 'enum' of the folder's "
            "io.yaml response_format."
        ),
    ] = None,
    invocation_prompt: Annotated[
        str | None,
        typer.Option(
            help="The invocation prompt it was trained with. Default: the check_requirement turn of the base "
            "model's chat template. aLoRA: must encode to its alora_invocation_tokens."
        ),
    ] = None,
    basemodel: Annotated[
        str | None,
        options.basemodel(
            "Base model id or directory. Default: base_model_name_or_path of adapter_config.json."
        ),
    ] = None,
    outfile: Annotated[
        Path | None,
        typer.Option(help="New adapter directory to write (a copy). Default: DIR itself, with --overwrite."),
    ] = None,
    overwrite: Annotated[
        bool,
        options.overwrite(
            "Allow adding validora.json to DIR in place, or replacing an adapter at --outfile."
        ),
    ] = False,
    requirements: Annotated[
        bool,
        typer.Option(
            help="It was trained with requirement texts in its prompt (default: no, it classifies the text "
            "alone and a requirement only chooses the passing labels)."
        ),
    ] = False,
    max_length: Annotated[
        int, options.max_length("Token limit per prompt; longer texts lose their beginning.", min=8)
    ] = DEFAULT_MAX_LENGTH,
) -> None:
    """Import an adapter trained elsewhere: check it against its base model's tokenizer, write validora.json.

    Its weights are not changed; labels are scored with validora's prompt
    (text, requirement line, invocation prompt, label, end-of-turn token).
    """
    from validora.adapter.peft_import import LABELS_GIVEN, parse_labels
    from validora.adapter.peft_import import import_adapter as run_import

    done = run_import(
        directory,
        labels=parse_labels(labels) if labels is not None else None,
        invocation_prompt=invocation_prompt,
        basemodel=basemodel,
        outfile=outfile,
        overwrite=overwrite,
        requirements=requirements,
        max_length=max_length,
    )
    info = done.info
    source = "--labels" if done.labels_from == LABELS_GIVEN else done.labels_from
    console.print(
        f"Imported a {info.adapter_type} adapter on {escape(info.base_model)}: labels "
        f"{escape(', '.join(info.labels))} (from {escape(source)}), invocation prompt "
        f"{escape(repr(info.invocation_prompt))}, requirements {'in' if info.requirements else 'not in'} its prompt.",
        highlight=False,
    )
    if done.skipped:
        console.print(
            f"Not copied: {escape(', '.join(done.skipped))} (folders, pickles, data).", highlight=False
        )
    console.print(
        "No held-out metrics and no fitted temperature: measure it with `m alora eval ADAPTER DATA.jsonl`.",
        highlight=False,
    )
    out.print(str(done.path), highlight=False, soft_wrap=True)
