"""`m alora export ADAPTER --outfile NAME.gguf`: the adapter as a llama.cpp LoRA adapter GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from validora.cli import options
from validora.cli.display import console, handles_errors, out


@handles_errors
def export(
    adapter: options.AdapterRef,
    outfile: Annotated[Path, typer.Option(help="The .gguf file to write.")],
    basemodel: Annotated[
        str | None,
        options.basemodel("Override the adapter's base model (its architecture decides the layout)."),
    ] = None,
    overwrite: Annotated[bool, options.overwrite("Replace an existing OUTFILE.", negatable=False)] = False,
    same_as_converter: Annotated[
        bool,
        typer.Option(
            "--same-as-converter",
            help="Write exactly what llama.cpp's convert_lora_to_gguf.py writes: the invocation unshifted "
            "(llama-server then starts an aLoRA one token before where it was trained) and no task name.",
        ),
    ] = False,
) -> None:
    """Export an adapter for llama.cpp's llama-server (an aLoRA keeps its invocation, shifted as the server needs)."""
    from validora.llamacpp.gguf import export_gguf, serve_hint

    with console.status(f"Exporting {escape(adapter)}..."):
        path = export_gguf(
            adapter, outfile, basemodel=basemodel, overwrite=overwrite, same_as_converter=same_as_converter
        )
    console.print(escape(serve_hint(adapter, path, basemodel=basemodel)), highlight=False, soft_wrap=True)
    out.print(str(path), highlight=False, soft_wrap=True)
