"""The `m` command's typer app with the `alora` sub-app. Parsing and display only; no logic here."""

from __future__ import annotations

import typer

from validora.cli import evaluate, export, importing, llama, predict, serve, train, upload

app = typer.Typer(
    help="validora: train and use small validator adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
alora = typer.Typer(help="Train, evaluate and use (a)LoRA validator adapters.", no_args_is_help=True)
app.add_typer(alora, name="alora")
alora.command("train")(train.train)
alora.command("eval")(evaluate.evaluate)
alora.command("predict")(predict.predict)
alora.command("upload")(upload.upload)
alora.command("io-yaml")(upload.io_yaml)
alora.command("download")(upload.download)
alora.command("import")(importing.import_adapter)
alora.command("export")(export.export)
alora.command("serve")(serve.serve)
app.command("llama-server", hidden=True)(llama.llama_server)


def _quiet_libraries() -> None:
    """Library deprecation chatter and per-file loading bars hide the progress that matters."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

    def show(message: Warning | str, *args: object, **kwargs: object) -> None:
        from rich.markup import escape

        from validora.cli.display import console

        console.print(f"[yellow]Warning:[/] {escape(str(message))}", highlight=False)

    warnings.showwarning = show


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    _quiet_libraries()
    if version:
        from validora import __version__

        typer.echo(__version__)
        raise typer.Exit()
