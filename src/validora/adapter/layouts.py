"""Where an adapter sits in a repository: at the root (plain) or in the intrinsics layout.

The Granite intrinsics repositories hold `<intrinsic_name>/<base_model_name>/<alora|lora>/`; older
ones `<intrinsic_name>/<alora|lora>/<base_model_name>/`. Both are found when loading; uploads write
the current one. The rules work on a list of repository paths (a Hub listing, before anything is
downloaded) and on a directory (a local copy or a snapshot) alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from validora.core.names import last_component, same_base_model

KINDS = ("alora", "lora")
MARKER = "validora.json"
# Never part of an adapter: pickles (validora loads safetensors only) and files that look like data.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
DATA_SUFFIXES = frozenset(
    {".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".feather", ".xlsx", ".gz", ".zip"}
)


@dataclass(frozen=True)
class Located:
    path: Path  # the adapter's folder: under the root given to locate(), or relative for choose()
    intrinsic_name: str | None  # None: plain layout
    base_model_name: str | None
    kind: str | None


def intrinsic_path(intrinsic_name: str, base_model_name: str, kind: str) -> str:
    return f"{intrinsic_name}/{base_model_name}/{kind}"


def _candidates(paths: Iterable[str]) -> list[Located]:
    """The intrinsics-layout adapters among repository paths (folders relative to the root)."""
    found = []
    for path in sorted(paths):
        parts = PurePosixPath(path).parts
        if len(parts) != 4 or parts[3] != MARKER:
            continue
        intrinsic, a, b = parts[:3]
        if b in KINDS:
            found.append(Located(Path(*parts[:3]), intrinsic, a, b))
        elif a in KINDS:
            found.append(Located(Path(*parts[:3]), intrinsic, b, a))
    return found


def _markers(root: Path) -> list[str]:
    found = [p.relative_to(root).as_posix() for p in root.glob(f"*/*/*/{MARKER}")]
    # present in any form: a FIFO or a directory in its place is named by the read, not taken for absent
    return [*found, MARKER] if os.path.lexists(root / MARKER) else found


def candidates(root: Path) -> list[Located]:
    """Every adapter in a repository snapshot, in either intrinsics layout."""
    return [replace(c, path=root / c.path) for c in _candidates(_markers(root))]


def choose(
    paths: Iterable[str], *, intrinsic_name: str | None = None, base_model_name: str | None = None
) -> Located:
    """The one adapter a repository listing holds for these names (path relative to the root).

    aLoRA is preferred over LoRA for the same pair; raises LookupError naming what exists.
    """
    paths = list(paths)
    if MARKER in paths:
        return Located(Path("."), None, None, None)
    every = _candidates(paths)
    found = every
    if intrinsic_name:
        found = [c for c in found if c.intrinsic_name == intrinsic_name]
    if base_model_name:
        found = [c for c in found if same_base_model(c.base_model_name or "", base_model_name)]
    pairs = {(c.intrinsic_name, last_component(c.base_model_name or "")) for c in found}
    if len(pairs) == 1:
        return min(found, key=lambda c: KINDS.index(c.kind or "lora"))
    listing = ", ".join(c.path.as_posix() for c in every) or "none"
    if not found:
        wanted = " and ".join(
            f"{what} {name!r}"
            for what, name in (("intrinsic_name", intrinsic_name), ("base model", base_model_name))
            if name
        )
        raise LookupError(
            f"No validora adapter{' for ' + wanted if wanted else ''} in this repository "
            f"(adapters found: {listing}). Expected {MARKER} at the root or in "
            "<intrinsic_name>/<base_model_name>/<alora|lora>/."
        )
    raise LookupError(
        f"This repository holds several adapters ({listing}); choose one with intrinsic_name= "
        "and, if it exists for several base models, base_model_name=."
    )


def locate(root: Path, *, intrinsic_name: str | None = None, base_model_name: str | None = None) -> Located:
    """The one adapter a snapshot directory holds for these names (the rules of choose())."""
    found = choose(_markers(root), intrinsic_name=intrinsic_name, base_model_name=base_model_name)
    return replace(found, path=root / found.path)


def is_adapter_file(path: str) -> bool:
    """False for files an adapter never needs: hidden ones, pickles, data."""
    p = PurePosixPath(path)
    suffixes = {s.lower() for s in p.suffixes}
    return not p.name.startswith(".") and not suffixes & (PICKLE_SUFFIXES | DATA_SUFFIXES)


def files_of(paths: Iterable[str], found: Located) -> list[str]:
    """The repository files that make up a chosen adapter: those directly in its folder (io.yaml included)."""
    folder = PurePosixPath(found.path.as_posix())
    return sorted(p for p in paths if PurePosixPath(p).parent == folder and is_adapter_file(p))


# What makes an adapter this adapter: weights, PEFT config, validora.json (labels, temperature, prompt),
# the lexical model (lexical.py).
DIGESTED_FILES = ("adapter_config.json", "adapter_model.safetensors", "validora.json", "lexical.safetensors")


def adapter_digest(adapter: str | Path) -> str:
    """sha256 over the adapter's weights, PEFT config and validora.json (labels, temperature)."""
    digest = hashlib.sha256()
    for name in DIGESTED_FILES:
        path = Path(adapter) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
