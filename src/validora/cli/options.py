"""Flags that several `m alora` commands share, declared once.

A flag explained the same way everywhere is a ready alias (`AdapterRef`, `AdapterDir`, `Revision`).
A flag each command explains in its own words (what its --basemodel overrides, what its --overwrite
replaces) is a function of that help text, which fixes the flag's spelling and type:

    basemodel: Annotated[str | None, options.basemodel("Override the adapter's base model.")] = None
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

AdapterRef = Annotated[str, typer.Argument(help="Adapter directory written by `m alora train`, or a hub id.")]
AdapterDir = Annotated[Path, typer.Argument(help="Adapter directory written by `m alora train`.")]
Revision = Annotated[str | None, typer.Option(help="Branch, tag or commit, when ADAPTER is a hub id.")]
AllowBaseMismatch = Annotated[
    bool,
    typer.Option(
        "--allow-base-mismatch",
        help="Load the adapter although the base model's weights differ from those it was trained on (a warning, not an error); its verdicts may then be wrong.",
    ),
]


def basemodel(help: str, **more: Any) -> Any:
    """--basemodel: a Hugging Face id, model directory or .gguf file."""
    return typer.Option("--basemodel", help=help, **more)


def device(help: str, **more: Any) -> Any:
    """--device: auto, cpu, cuda or mps."""
    return typer.Option("--device", help=help, **more)


def overwrite(help: str, *, negatable: bool = True, **more: Any) -> Any:
    """--overwrite (and --no-overwrite, unless `negatable` is false)."""
    return typer.Option("--overwrite/--no-overwrite" if negatable else "--overwrite", help=help, **more)


def batch_size(help: str, **more: Any) -> Any:
    """--batch-size: items per forward pass."""
    return typer.Option("--batch-size", help=help, **more)


def max_length(help: str, **more: Any) -> Any:
    """--max-length: the token limit of a prompt."""
    return typer.Option("--max-length", help=help, **more)


API_KEY_ENV = "VALIDORA_API_KEY"


def api_key(help: str, **more: Any) -> Any:
    """--api-key: llama-server's key (also read from VALIDORA_API_KEY; never printed)."""
    return typer.Option(
        "--api-key",
        help=f"{help} (sent as Authorization: Bearer); default: the {API_KEY_ENV} environment variable.",
        envvar=API_KEY_ENV,
        show_envvar=False,
        show_default=False,
        **more,
    )
