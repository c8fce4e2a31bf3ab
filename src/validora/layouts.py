"""Where an adapter sits in a repository: at the root (plain) or in the intrinsics layout.

The Granite intrinsics repositories hold `<intrinsic_name>/<base_model_name>/<alora|lora>/`; older
ones `<intrinsic_name>/<alora|lora>/<base_model_name>/`. Both are found when loading; uploads write
the current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = ("alora", "lora")
MARKER = "validora.json"


@dataclass(frozen=True)
class Located:
    path: Path
    intrinsic_name: str | None  # None: plain layout
    base_model_name: str | None
    kind: str | None


def intrinsic_path(intrinsic_name: str, base_model_name: str, kind: str) -> str:
    return f"{intrinsic_name}/{base_model_name}/{kind}"


def _key(name: str) -> str:
    return Path(name.rstrip("/")).name.lower()


def candidates(root: Path) -> list[Located]:
    """Every adapter in a repository snapshot, in either intrinsics layout."""
    found = []
    for marker in sorted(root.glob(f"*/*/*/{MARKER}")):
        intrinsic, a, b = marker.parent.relative_to(root).parts
        if b in KINDS:
            found.append(Located(marker.parent, intrinsic, a, b))
        elif a in KINDS:
            found.append(Located(marker.parent, intrinsic, b, a))
    return found


def locate(root: Path, *, intrinsic_name: str | None = None, base_model_name: str | None = None) -> Located:
    """The one adapter a snapshot holds for these names; aLoRA is preferred over LoRA for the same pair."""
    if (root / MARKER).is_file():
        return Located(root, None, None, None)
    found = candidates(root)
    if intrinsic_name:
        found = [c for c in found if c.intrinsic_name == intrinsic_name]
    if base_model_name:
        found = [c for c in found if _key(c.base_model_name or "") == _key(base_model_name)]
    pairs = {(c.intrinsic_name, _key(c.base_model_name or "")) for c in found}
    if len(pairs) == 1:
        return min(found, key=lambda c: KINDS.index(c.kind or "lora"))
    listing = ", ".join(str(c.path.relative_to(root)) for c in candidates(root)) or "none"
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
        "and, if it exists for several base models, base_model_name= (CLI: --intrinsic-name, --base-model)."
    )
