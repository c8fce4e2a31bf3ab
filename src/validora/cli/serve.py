"""`m alora serve ADAPTER...`: the adapters on llama.cpp's llama-server, in the foreground until Ctrl-C."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from validora.cli import options
from validora.cli.display import console, handles_errors, out, sigterm_as_interrupt

if TYPE_CHECKING:
    from validora.llamacpp.serving import Serving


@handles_errors
def serve(
    adapters: Annotated[
        list[str], typer.Argument(help="Adapter directories written by `m alora train`, or hub ids.")
    ],
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: a free one).")] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    parallel: Annotated[
        int,
        typer.Option(
            help="Requests the server runs at once (llama-server's slots); aLoRA adapters need 1: this "
            "llama.cpp gives them wrong labels when it batches several slots (others then queue)."
        ),
    ] = 1,
    ctx_size: Annotated[int, typer.Option(help="Context length of each slot, in tokens.")] = 4096,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for llama-server (default: its own choice).")
    ] = None,
    basemodel: Annotated[
        str | None, options.basemodel("A GGUF file of the adapters' base model, when theirs is not one.")
    ] = None,
    api_key: Annotated[str | None, options.api_key("Requests must carry this key")] = None,
) -> None:
    """Serve adapters on llama-server (built once if missing) until Ctrl-C; each request picks one."""
    from validora.llamacpp.serving import serve as start

    sigterm_as_interrupt()
    serving = None
    try:
        with console.status("Exporting the adapters and starting llama-server..."):
            serving = start(
                adapters, basemodel=basemodel, host=host, port=port, parallel=parallel,
                ctx_size=ctx_size, threads=threads, say=lambda line: console.print(escape(line)),
                api_key=api_key or None,
            )  # fmt: skip
        _show(serving, bool(api_key))
        serving.wait()
    except KeyboardInterrupt:
        if serving is not None:
            serving.stop()
            console.print("[yellow]Interrupted.[/] llama-server stopped.")
        else:
            console.print("[yellow]Interrupted[/] before llama-server was ready.")
        raise typer.Exit(130) from None
    finally:
        if serving is not None:
            serving.stop()


def _show(serving: Serving, keyed: bool) -> None:
    server = serving.server
    console.print(
        f"llama-server (pid {server.process.pid}) serves {escape(serving.base.name)}; "
        f"log: {escape(str(server.log))}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table(title="Adapters (each starts at scale 0)")
    for col in ("id", "adapter", "labels", "invocation tokens"):
        table.add_column(col)
    for a in serving.adapters:
        tokens = " ".join(map(str, a.invocation_tokens)) if a.invocation_tokens else "(LoRA: always on)"
        table.add_row(str(a.id), escape(a.name), escape(", ".join(a.labels)), tokens)
    console.print(table)
    example = json.dumps(serving.request_example(serving.adapters[0]))
    auth = ' -H "Authorization: Bearer $VALIDORA_API_KEY"' if keyed else ""
    console.print(
        'Each request names its adapter in an explicit "lora" list; the adapters it leaves out run at '
        'scale 0, and a request without "lora" runs the base model alone:\n'
        f"  curl {serving.url}/completion{auth} -d '{escape(example)}'\n"
        "The invocation tokens listed are the trained ones without the first: llama-server turns an "
        "aLoRA on one token before them, where training turned it on.\n"
        "In a program (label probabilities exactly as in-process, requirements and retries unchanged):\n"
        f"  backend = LlamaCppBackend({serving.url!r}{', api_key=...' if keyed else ''}); "
        f"backend.add_adapter(CustomIntrinsicAdapter({str(serving.adapters[0].directory)!r}))\n"
        "Ctrl-C stops the server.",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"Serving at {serving.url}", highlight=False, soft_wrap=True)
