"""Base-model names: when two name the same model, and what of a name may be published.

Adapters record the base model they were trained on as an alias (`smollm2-135m-instruct`), a hub id
(`org/name`) or, for a local model, its resolved path. These rules are the one place that compares
such names and that strips local paths from anything that leaves this machine.
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?")


def is_path_form(name: str) -> bool:
    """Whether `name` can only be a path ("." "/" "~" first, or two "/"), not a hub id (`org/name`) or
    a short name: the one test of "path or hub id?" for base models and adapters alike."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def is_local(name: str) -> bool:
    """A path to a model on this machine rather than a hub id or a short name."""
    local = is_path_form(name) or name.lower().endswith(".gguf")
    return local or ("/" in name and Path(name).expanduser().exists())


def last_component(name: str) -> str:
    """The last path component in lower case: the short form Mellea-style code passes as a base name."""
    return Path(str(name).rstrip("/")).name.lower()


def base_key(name: str) -> str:
    """Comparable form of a base-model name: a local model's resolved path; otherwise (hub id, alias,
    short name) the last component in lower case, so `granite-3.2-8b-instruct` matches its hub id."""
    name = str(name)
    return str(Path(name).expanduser().resolve()) if is_local(name) else last_component(name)


def same_base_model(a: str, b: str) -> bool:
    """Local paths: the same resolved path (`/a/granite` is not `/b/granite`). Hub ids: equal ignoring
    case. A short name without "/" (the embedded alias, Mellea-style `granite-3.2-8b-instruct`, or a
    published adapter's base) matches any name with that last component."""
    a, b = str(a).rstrip("/"), str(b).rstrip("/")
    if "/" not in a or "/" not in b:
        return last_component(a) == last_component(b)
    if is_local(a) or is_local(b):
        return is_local(a) and is_local(b) and base_key(a) == base_key(b)
    return a.lower() == b.lower()


def public_name(name: str) -> str:
    """A model or file name as it may leave this machine: the one rule for everything published.

    An alias or hub id (``org/name``) is kept; a local path (absolute, ``~``, ``./``, ``../``, Windows,
    more than one ``/``, or an existing relative folder) keeps only its last component, so no
    directory name is published.
    """
    stripped = name.rstrip("/\\")
    if _HUB_ID.fullmatch(stripped) and not is_local(stripped):
        return stripped
    return re.split(r"[/\\]", stripped)[-1]
