"""Publishing an adapter: the upload set is built in a temporary directory, never in the user's folder.

Everything that can be checked locally (completeness, adapter type, data files, io.yaml) is checked
before the first request, so a refused upload sends nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from validora.adapter import hub, ioyaml, layouts
from validora.adapter.card import model_card, public_base
from validora.adapter.layouts import DATA_SUFFIXES, PICKLE_SUFFIXES
from validora.adapter.schema import CONFIG_FILE, INFO_FILE, LEXICAL_FILE, WRITTEN_FILES, AdapterInfo
from validora.core.jsonio import parse_json
from validora.core.names import public_name
from validora.errors import AdapterError, HubError

MAX_OTHER_BYTES = 10 * 1024 * 1024  # anything this large that is not weights is probably data
MEMORISATION_WARNING = (
    "This repository will be PUBLIC. Small models fine-tuned on small domain datasets can memorise "
    "their training examples, and anyone can prompt the adapter to reproduce them; its lexical model "
    "(lexical.safetensors) lists the words and character n-grams of the training texts outright. Do not "
    "publish an adapter trained on private or personal data."
)
# What the upload refuses as pickles (never published) and as data (unless allowed), beyond layouts'
# sets (which also decide what a download takes and what a re-upload deletes, so they stay narrow).
REFUSED_PICKLES = PICKLE_SUFFIXES | {".joblib", ".npy", ".npz", ".pkl", ".pickle", ".dill", ".sav"}
REFUSED_DATA = DATA_SUFFIXES | {
    ".json", ".ndjson", ".txt", ".tar", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".jsonl",
}  # fmt: skip
# JSON and text files an adapter (or a base model's tokenizer beside it) holds that are not data.
METADATA_FILES = frozenset(
    {
        *WRITTEN_FILES, INFO_FILE, CONFIG_FILE, "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
        "generation_config.json", "chat_template.json", "config.json", "trainer_state.json",
        "training_args.json",
    }
)  # fmt: skip


def is_pickle(name: str) -> bool:
    """A file that may hold pickled objects (loading it can run code), by its suffixes."""
    return bool({s.lower() for s in Path(name).suffixes} & REFUSED_PICKLES)


def looks_like_data(name: str) -> bool:
    """A file that looks like training data or an archive of it, by its suffixes (metadata aside)."""
    path = Path(name)
    return path.name not in METADATA_FILES and bool({s.lower() for s in path.suffixes} & REFUSED_DATA)


def training_text_files(directory: str | Path) -> list[str]:
    """The adapter's files that carry training text outright: the lexical model (the words and
    character n-grams of the training texts) and files that look like data."""
    directory = Path(directory)
    found = [LEXICAL_FILE] if (directory / LEXICAL_FILE).is_file() else []
    return found + [
        str(p.relative_to(directory))
        for p in adapter_files(directory)
        if p.name != LEXICAL_FILE and looks_like_data(p.name)
    ]


def data_warning(directory: str | Path, *, private: bool) -> str:
    """What an upload says about training data, public or private: a private repository is read by
    everyone given access to it, and by all if it is ever made public."""
    carried = training_text_files(directory)
    named = (
        f" Files that carry training text: {', '.join(carried)}."
        if carried
        else " No file of it holds training text outright, but the weights can still reproduce examples."
    )
    if not private:
        return MEMORISATION_WARNING + named
    return (
        "The repository will be private, but everyone given access to it can read it, and anyone "
        "if it is ever made public: the adapter can reproduce training examples it memorised." + named
        + " Do not upload an adapter trained on data those readers may not see."
    )  # fmt: skip


def adapter_kind(directory: Path, info: AdapterInfo) -> str:
    """'alora' or 'lora', from validora.json, cross-checked with PEFT's config.

    An `alora_invocation_tokens` key that is present but null is a plain LoRA.
    """
    path = directory / CONFIG_FILE
    try:
        config = parse_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is not readable JSON: {exc}. Restore it from the training run.") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} must hold a JSON object. Restore it from the training run.")
    peft_alora = config.get("alora_invocation_tokens") is not None
    if info.adapter_type not in layouts.KINDS or peft_alora != info.is_alora:
        raise AdapterError(
            f"{directory}: {INFO_FILE} says adapter_type {info.adapter_type!r} but {CONFIG_FILE} "
            f"{'has' if peft_alora else 'has no'} alora_invocation_tokens; the directory is inconsistent."
        )
    return info.adapter_type


def adapter_files(directory: Path) -> list[Path]:
    """What an upload takes from the directory: every file except hidden ones (editor, OS, VCS)."""
    return [
        p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]


def symlinks(directory: Path) -> list[str]:
    """Symbolic links an upload would meet (hidden folders aside), shown as `link -> target`.

    Every link is refused, not only those leaving the directory: a link to a hidden file or to a
    file of the Hugging Face cache would publish what the user never put in the adapter.
    """
    return [
        f"{p.relative_to(directory)} -> {os.readlink(p)}"
        for p in sorted(directory.rglob("*"))
        if p.is_symlink() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]


def refused_files(directory: Path, *, allow_data: bool) -> tuple[list[str], list[str]]:
    """(pickled weights, which are never published; files that look like training data, unless allowed)."""
    pickles, data = [], []
    for path in adapter_files(directory):
        rel = path.relative_to(directory)
        if is_pickle(path.name):
            pickles.append(f"{rel} (may hold pickled weights or objects: validora loads safetensors only)")
        elif allow_data:
            continue
        elif looks_like_data(path.name):
            data.append(f"{rel} (looks like training data)")
        elif path.suffix != ".safetensors" and path.stat().st_size > MAX_OTHER_BYTES:
            data.append(f"{rel} ({path.stat().st_size / 1e6:.0f} MB and not weights: data?)")
    return pickles, data


# Keys whose values are model or file locations, wherever they sit in validora.json, adapter_config.json
# and metrics.json; each is published through names.public_name(). validora.json's "training" block no
# longer records basemodel, datafile, outfile or promptfile, but adapters trained before it stopped do.
SCRUBBED_FILES = (INFO_FILE, CONFIG_FILE, "metrics.json")
PATH_KEYS = frozenset(
    {"base_model", "basemodel", "base_model_name_or_path", "datafile", "outfile", "promptfile"}
)


def scrub(value: Any, removed: set[str]) -> Any:
    """`value` with every path-valued key made public; the directory parts taken away go into `removed`."""
    if isinstance(value, list):
        return [scrub(v, removed) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if key in PATH_KEYS and isinstance(v, str):
            out[key] = public_name(v)
            folder = v.rstrip("/\\")[: -len(out[key]) or None].rstrip("/\\")
            if re.search(r"[/\\]", folder.strip("/\\")):  # two levels or more: specific enough to look for
                removed.add(folder)
        else:
            out[key] = scrub(v, removed)
    return out


def _public_json(path: Path, public: AdapterInfo, removed: set[str]) -> bytes:
    """A JSON file of the adapter without this machine's paths (home directories, data files)."""
    try:
        data = scrub(parse_json(path.read_bytes()), removed)
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is not valid JSON: {exc}") from None
    if path.name == CONFIG_FILE and isinstance(data, dict):  # PEFT's field: the hub id when there is one
        data["base_model_name_or_path"] = public_base(public.base_model)
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _check_no_local_paths(root: Path, removed: set[str], card: str) -> None:
    """Refuse an upload set that still names a scrubbed directory (a user's io.yaml, notes, ...)."""
    texts = {"the repository card": card.encode("utf-8")} | {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix not in (".safetensors", ".png")  # weights and plots hold no paths
    }
    found = [
        f"{name} contains the local path {folder!r}"
        for name, data in texts.items()
        for folder in sorted(removed)
        if folder.encode("utf-8", "surrogatepass") in data
    ]
    if found:
        raise HubError(
            "Refusing to upload:\n  " + "\n  ".join(found) + "\nRemove the path from those files "
            "(`m alora io-yaml` writes an io.yaml without one). Nothing was sent."
        )


_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    """Lay the adapter out in `dest` as the repository will hold it.

    Every published file (JSON metadata, model card, repository card, io.yaml) is built from the
    scrubbed metadata, and the set is refused if any text file still names a scrubbed directory.
    """
    directory = Path(directory)
    links = symlinks(directory)
    if links:
        raise HubError(
            "Refusing to upload symbolic links (validora publishes no link, so that none can send a file "
            "from outside the adapter):\n  " + "\n  ".join(links) + "\nReplace each with a copy of the "
            "file if it belongs in the adapter (cp -rL copies a folder without links). Nothing was sent."
        )
    info = AdapterInfo.read(directory)
    kind = adapter_kind(directory, info)
    pickles, data = refused_files(directory, allow_data=allow_data)
    if data and not pickles:
        raise HubError(
            "allow_data is needed, if the data may be published; refusing to upload:\n  " + "\n  ".join(data)
            + "\nOr remove them from the adapter directory. Nothing was sent.",
            option="allow_data",
        )  # fmt: skip
    if pickles:
        hint = " (the data files may stay with allow_data, if the data may be published)" if data else ""
        raise HubError(
            "Refusing to upload:\n  " + "\n  ".join(pickles + data)
            + f"\nRemove them from the adapter directory{hint}. Nothing was sent."
        )  # fmt: skip
    removed: set[str] = set()  # the local directories scrubbing took out
    public = replace(info, **scrub({"base_model": info.base_model, "training": info.training}, removed))
    own_io = directory / "io.yaml"
    io_text = ioyaml.validate(io_yaml or own_io, info.labels) if io_yaml or own_io.is_file() else None
    if intrinsic:
        name = intrinsic_name or directory.resolve().name
        base = public_base(public.base_model).split("/")[-1]
        default = "" if intrinsic_name else " (by default the adapter directory's name)"
        segments = [(f"intrinsic_name {name!r}{default}", name, "intrinsic_name"), (f"The base model name {base!r}", base, None)]  # fmt: skip
        for what, segment, option in segments:
            if not _SEGMENT.match(segment):
                raise HubError(
                    f"{what} cannot be a repository folder: use letters, digits, '.', '_' and '-'.",
                    option=option,
                )
        prefix = layouts.intrinsic_path(name, base, kind)
        io_text = io_text or ioyaml.generate(public)
    else:
        prefix = ""
    target = dest / prefix
    target.mkdir(parents=True, exist_ok=True)
    for path in adapter_files(directory):
        rel = path.relative_to(directory)
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() in SCRUBBED_FILES:
            (target / rel).write_bytes(_public_json(path, public, removed))
        else:
            shutil.copy2(path, target / rel)
    metrics_path = target / "metrics.json"
    metrics = parse_json(metrics_path.read_bytes()) if metrics_path.is_file() else {}  # scrubbed above
    metrics = metrics if isinstance(metrics, dict) else {}
    name = prefix.split("/")[0] if prefix else None
    card = model_card(public, metrics, repo_id=repo_id, intrinsic_name=name)
    (target / "README.md").write_text(card, encoding="utf-8")
    if prefix:  # the repository's own card, used when it has none yet
        card = model_card(public, metrics, repo_id=repo_id, intrinsic_name=name, images_at=f"{prefix}/")
    if io_text is not None:
        (target / "io.yaml").write_text(io_text, encoding="utf-8")
    _check_no_local_paths(dest, removed, card)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    return UploadSet(root=dest, prefix=prefix, files=files, card=card)


def stale(plan: UploadSet, remote: set[str], local: set[str]) -> set[str]:
    """Remote files an earlier upload of this adapter left that this one no longer has.

    Intrinsics layout: anything in the adapter's own folder. Plain layout (the repository is the
    adapter, but its owner may have added files): only what validora itself writes or refuses.
    """
    if plan.prefix:
        return {f for f in remote - local if f.startswith(plan.prefix + "/")}
    ours = {"io.yaml", INFO_FILE, CONFIG_FILE, *WRITTEN_FILES} - {"README.md"}  # the card is always rewritten
    return {
        f
        for f in remote - local
        if f in ours or {s.lower() for s in Path(f).suffixes} & (DATA_SUFFIXES | PICKLE_SUFFIXES)
    }


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
        message = commit_message or f"Upload validora adapter{' ' + plan.prefix if plan.prefix else ''}"
        done = hub.upload_files(
            Path(tmp), repo_id, private=private, revision=revision, commit_message=message,
            root_readme=plan.card if intrinsic else None, stale=lambda remote, local: stale(plan, remote, local),
        )  # fmt: skip
        return plan, done
