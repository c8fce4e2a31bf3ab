"""Publishing an adapter: the upload set is built in a temporary directory, never in the user's folder.

Everything that can be checked locally (completeness, adapter type, data files, io.yaml) is checked
before the first request, so a refused upload sends nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from validora import hub, ioyaml, layouts, reports
from validora.adapters import CONFIG_FILE, INFO_FILE, AdapterInfo
from validora.errors import AdapterError, HubError

DATA_SUFFIXES = frozenset({".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".feather", ".xlsx"})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
MAX_OTHER_BYTES = 10 * 1024 * 1024  # anything this large that is not weights is probably data
MEMORISATION_WARNING = (
    "This repository will be PUBLIC. Small models fine-tuned on small domain datasets can memorise "
    "their training examples, and anyone can prompt the adapter to reproduce them: do not publish an "
    "adapter trained on private or personal data."
)


def adapter_kind(directory: Path, info: AdapterInfo) -> str:
    """'alora' or 'lora', from validora.json, cross-checked with PEFT's config.

    An `alora_invocation_tokens` key that is present but null is a plain LoRA.
    """
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    peft_alora = config.get("alora_invocation_tokens") is not None
    if info.adapter_type not in layouts.KINDS or peft_alora != info.is_alora:
        raise AdapterError(
            f"{directory}: {INFO_FILE} says adapter_type {info.adapter_type!r} but {CONFIG_FILE} "
            f"{'has' if peft_alora else 'has no'} alora_invocation_tokens; the directory is inconsistent."
        )
    return info.adapter_type


def refused_files(directory: Path, *, allow_data: bool) -> list[str]:
    """Files that must not be published: training data (unless allowed) and pickled weights (never)."""
    problems = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory)
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            problems.append(f"{rel} (pickled weights: validora loads safetensors only)")
        elif not allow_data and suffix in DATA_SUFFIXES:
            problems.append(f"{rel} (looks like training data)")
        elif not allow_data and suffix != ".safetensors" and path.stat().st_size > MAX_OTHER_BYTES:
            problems.append(f"{rel} ({path.stat().st_size / 1e6:.0f} MB and not weights: data?)")
    return problems


@dataclass(frozen=True)
class UploadSet:
    root: Path  # temporary directory laid out as the repository will be
    prefix: str  # where the adapter sits in the repository ("" for the plain layout)
    files: list[str]  # repository paths
    card: str


def build(
    directory: str | Path,
    *,
    repo_id: str,
    dest: Path,
    intrinsic: bool = False,
    intrinsic_name: str | None = None,
    io_yaml: str | Path | None = None,
    allow_data: bool = False,
) -> UploadSet:
    """Lay the adapter out in `dest` as the repository will hold it."""
    directory = Path(directory)
    info = AdapterInfo.read(directory)
    kind = adapter_kind(directory, info)
    problems = refused_files(directory, allow_data=allow_data)
    if problems:
        raise HubError(
            "Refusing to upload:\n  " + "\n  ".join(problems) + "\nRemove them from the adapter directory"
            + (" or pass --allow-data if the data may be published." if any("pickled" not in p for p in problems) else ".")
        )  # fmt: skip
    io_text = ioyaml.validate(io_yaml, info.labels) if io_yaml else None
    if intrinsic:
        name = intrinsic_name or directory.resolve().name
        base = reports.hub_base_model(info.base_model).split("/")[-1]
        prefix = layouts.intrinsic_path(name, base, kind)
        io_text = io_text or ioyaml.generate(info)
    else:
        prefix = ""
    target = dest / prefix
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue  # editor and OS files, our own staging leftovers
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / rel)
    metrics_path = directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    name = prefix.split("/")[0] if prefix else None
    card = reports.model_card(info, metrics, repo_id=repo_id, intrinsic_name=name)
    (target / "README.md").write_text(card, encoding="utf-8")
    if prefix:  # the repository's own card, used when it has none yet
        card = reports.model_card(info, metrics, repo_id=repo_id, intrinsic_name=name, images_at=f"{prefix}/")
    if io_text is not None:
        (target / "io.yaml").write_text(io_text, encoding="utf-8")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    return UploadSet(root=dest, prefix=prefix, files=files, card=card)


def upload(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    intrinsic: bool = False,
    intrinsic_name: str | None = None,
    io_yaml: str | Path | None = None,
    allow_data: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> tuple[UploadSet, hub.Uploaded]:
    """Check, lay out and upload an adapter in one commit. The adapter directory is only read."""
    hub.check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="validora-upload-") as tmp:
        plan = build(
            directory, repo_id=repo_id, dest=Path(tmp), intrinsic=intrinsic,
            intrinsic_name=intrinsic_name, io_yaml=io_yaml, allow_data=allow_data,
        )  # fmt: skip
        hub.token()  # a missing token fails here, before any request
        message = commit_message or f"Upload validora adapter{' ' + plan.prefix if plan.prefix else ''}"
        done = hub.upload_files(
            Path(tmp), repo_id, private=private, revision=revision, commit_message=message,
            root_readme=plan.card if intrinsic else None,
        )  # fmt: skip
        return plan, done
