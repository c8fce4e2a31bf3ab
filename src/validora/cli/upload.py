"""`m alora upload`, `m alora io-yaml` and `m alora download`: sharing adapters through the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from validora.cli import options
from validora.cli.display import console, handles_errors, out
from validora.errors import ConfigError


@handles_errors
def upload(
    adapter: options.AdapterDir,
    name: Annotated[str, typer.Option("--name", help="Repository id, ORG/NAME or USER/NAME.")],
    private: Annotated[
        bool, typer.Option("--private/--public", help="Visibility of a repository this creates.")
    ] = True,
    intrinsic: Annotated[
        bool,
        typer.Option(
            "--intrinsic",
            help="Intrinsics layout: <intrinsic_name>/<base_model_name>/<alora|lora>/ with io.yaml.",
        ),
    ] = False,
    io_yaml: Annotated[
        Path | None,
        typer.Option("--io-yaml", help="io.yaml to publish (validated first); generated when omitted."),
    ] = None,
    intrinsic_name: Annotated[
        str | None, typer.Option(help="Name of the intrinsic folder (default: the adapter directory's name).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", "--branch", help="Branch to commit to (created if missing).")
    ] = None,
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    allow_data: Annotated[
        bool,
        typer.Option("--allow-data", help="Upload files that look like training data (.jsonl, .csv, ...)."),
    ] = False,
) -> None:
    """Publish an adapter to the Hugging Face Hub in one commit (token: HF_TOKEN or `hf auth login`).

    Local paths are never published; symbolic links, pickles and (without --allow-data) data files
    in the adapter directory are refused before anything is sent.
    """
    from validora.adapter import publish

    if intrinsic_name is not None and not intrinsic:
        raise ConfigError("--intrinsic-name only applies with --intrinsic.")
    if io_yaml is not None and not intrinsic:
        console.print("[yellow]Note:[/] --io-yaml is published beside the weights at the repository root.")
    warning = escape(publish.data_warning(adapter, private=private))
    console.print(f"[bold yellow]{'Note' if private else 'Warning'}:[/] {warning}", soft_wrap=True)
    with console.status(f"Uploading {escape(str(adapter))} to {escape(name)}..."):
        plan, done = publish.upload(
            adapter, name, private=private, intrinsic=intrinsic, intrinsic_name=intrinsic_name,
            io_yaml=io_yaml, allow_data=allow_data, revision=revision, commit_message=commit_message,
        )  # fmt: skip
    where = f" in {plan.prefix}/" if plan.prefix else ""
    console.print(
        f"{'Created' if done.created else 'Updated'} {escape(done.repo_url)}: {len(plan.files)} files{where}",
        highlight=False,
    )
    out.print(f"repo: {done.repo_url}\ncommit: {done.commit_oid}\n{done.commit_url}", highlight=False)


@handles_errors
def io_yaml(
    adapter: options.AdapterDir,
) -> None:
    """Print a correct io.yaml for an adapter (m alora io-yaml ADAPTER > io.yaml)."""
    from validora.adapter import ioyaml
    from validora.adapter.schema import AdapterInfo

    out.print(
        ioyaml.generate(AdapterInfo.read(adapter)), end="", highlight=False, markup=False, soft_wrap=True
    )


@handles_errors
def download(
    repo: Annotated[str, typer.Argument(help="Repository id, ORG/NAME.")],
    intrinsic_name: Annotated[
        str | None, typer.Option(help="Which intrinsic of a multi-adapter repository.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Which base model's adapter, in the intrinsics layout.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
) -> None:
    """Download an adapter into the Hugging Face cache and print its local directory."""
    from validora.adapter.loading import resolve_adapter_dir
    from validora.adapter.schema import AdapterInfo

    path, _ = resolve_adapter_dir(
        repo, intrinsic_name=intrinsic_name, base_model_name=base_model, revision=revision
    )
    info = AdapterInfo.read(path)
    console.print(
        f"{info.adapter_type} adapter on {escape(info.base_model)}, labels {escape(str(info.labels))}"
    )
    out.print(str(path), highlight=False, soft_wrap=True)
