"""`m llama-server build|find` (hidden; what `make llama-server` runs): the llama-server validora uses.

    m llama-server build   # find one that serves aLoRA, or build it once; print its path
    m llama-server find    # print the one validora would use, or exit 1 when there is none

Build progress goes to stderr, the path to stdout.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from validora.cli.display import handles_errors


class Action(StrEnum):
    build = "build"
    find = "find"


@handles_errors
def llama_server(
    action: Annotated[Action, typer.Argument(help="build: find or build one; find: only find one.")],
) -> None:
    """The llama-server validators are served on: found (it must serve aLoRA) or built once into the cache."""
    from validora.llamacpp.build import build_jobs, ensure_server, find_server

    if action is Action.build:
        typer.echo(ensure_server(jobs=build_jobs(), say=lambda line: typer.echo(line, err=True)))
        return
    found = find_server()
    typer.echo(found or "")
    if not found:
        raise typer.Exit(1)
