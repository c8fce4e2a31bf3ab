"""One adapter read whole: every file a load needs, read once into memory from one directory.

A load used to read validora.json, spend seconds loading the base model, then read the weights and the
lexical file by path; `train --overwrite` swaps the directory by renames (core/files.swap_into_place)
in between, so adapter A's labels could be scored with adapter B's weights. Here every file is read
once, relative to one open directory (dirread.py), before anything else: what is checked, attached and
scored is one adapter, and `digest` is the adapter_digest of exactly those bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from validora.adapter.layouts import DIGESTED_FILES
from validora.adapter.schema import AdapterInfo
from validora.errors import AdapterError


@dataclass(frozen=True)
class AdapterSnapshot:
    """The bytes of one adapter's files, read from one directory at one time, and what they say."""

    path: Path
    files: Mapping[str, bytes]  # file name -> contents; lexical.safetensors only when present
    info: AdapterInfo

    @property
    def digest(self) -> str:
        """layouts.adapter_digest of these bytes (what programs/batch.py records for a run)."""
        digest = hashlib.sha256()
        for name in DIGESTED_FILES:
            if name in self.files:
                digest.update(name.encode() + b"\0")
                digest.update(self.files[name])
        return digest.hexdigest()


def check_hashes(snapshot: AdapterSnapshot) -> None:
    """Each file whose sha256 validora.json records must have it: a changed byte that leaves every number
    finite and every shape right still changes verdicts. Checked after the files' own checks, which say
    more precisely what is wrong when they find it."""
    for name, recorded in (snapshot.info.file_sha256 or {}).items():
        data = snapshot.files.get(name)
        if data is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise AdapterError(
                f"{snapshot.path / name} is not the file its validora.json records (sha256 "
                f"{recorded[:12]}..., this one {hashlib.sha256(data).hexdigest()[:12]}...): it was changed or "
                "damaged after the adapter was saved. Train, import or download the adapter again."
            )


def read_snapshot(directory: str | Path) -> AdapterSnapshot:
    """Read an adapter directory whole (validora.json, adapter_config.json, the weights, the lexical
    file if present) and check validora.json; anything unreadable is an AdapterError naming the file."""
    directory = Path(directory)
    files, info = AdapterInfo.read_files(directory)
    return AdapterSnapshot(directory, MappingProxyType(files), info)
