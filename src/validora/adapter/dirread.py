"""An adapter directory's files read whole, once, into memory, relative to one open directory.

A load used to read validora.json, spend seconds loading the base model, then read the weights and the
lexical file by path; `train --overwrite` swaps the directory by renames (core/files.swap_into_place)
in between, so adapter A's labels could be scored with adapter B's weights. Here the directory is
opened once (a directory descriptor) and each file is read relative to it: a rename swap cannot mix
two adapters, it leaves this read the whole earlier one. A directory removed while it is read is read
again from its path (the adapter now there), a few times, then refused.

Each file must be a regular file (a FIFO is refused before it is opened for reading, so it cannot hang
the load; a directory in a file's place is named); a symlink pointing out of the adapter directory is
refused and named.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from validora.errors import AdapterError

ATTEMPTS = 3  # reads of a directory that vanished under them, before the load is refused
_KIND = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}  # fmt: skip


class _Vanished(Exception):
    """The directory (or one of its files) went away while it was read: read it again."""


def read_files(
    directory: Path, names: Sequence[str], optional: frozenset[str] = frozenset()
) -> dict[str, bytes]:
    """{name: contents} of `names` in `directory`, all read from one directory; `names[0]` is the file
    that makes the directory an adapter, the others are required unless `optional`."""
    for _ in range(ATTEMPTS):
        try:
            files = _read_files(directory, names)
        except _Vanished:
            continue
        if names[0] not in files:
            raise AdapterError(f"{directory} is not a validora adapter: it has no {names[0]}.")
        for name in names[1:]:
            if name not in files and name not in optional:
                raise AdapterError(
                    f"{directory} is incomplete: {name} is missing (only safetensors weights load)."
                )
        return files
    raise AdapterError(
        f"{directory} kept changing while it was read ({ATTEMPTS} tries): another process (a training "
        "run with overwrite, an import) is replacing it. Load it again when that has finished."
    )


def _read_files(directory: Path, names: Sequence[str]) -> dict[str, bytes]:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AdapterError(f"Adapter directory not found: {directory}") from None
    except NotADirectoryError:
        raise AdapterError(f"{directory} is not a directory, so it is not a validora adapter.") from None
    except OSError as exc:
        raise AdapterError(f"Cannot open the adapter directory {directory}: {exc.strerror}.") from None
    try:
        files: dict[str, bytes] = {}
        for name in names:
            data = _read_at(dir_fd, directory, name)
            if data is not None:
                files[name] = data
        if os.fstat(dir_fd).st_nlink == 0:  # removed while read (a swap then a cleanup): read the new one
            raise _Vanished
    finally:
        os.close(dir_fd)
    return files


def _read_at(dir_fd: int, directory: Path, name: str) -> bytes | None:
    """The contents of `name` in the open directory; None if it is absent (an error unless optional)."""
    path = directory / name
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: opening a FIFO never waits
    if stat.S_ISLNK(st.st_mode):
        _check_link(dir_fd, directory, name)
    else:
        flags |= os.O_NOFOLLOW
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise _not_regular(path, st.st_mode)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if stat.S_ISLNK(st.st_mode):
            raise AdapterError(f"{path} is a symlink to a file that does not exist.") from None
        raise _Vanished from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink between the stat and the open
            raise _Vanished from None
        raise AdapterError(f"Cannot read {path}: {exc.strerror}.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        chunks = []
        while chunk := os.read(fd, 1 << 22):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise AdapterError(f"Cannot read {path}: {exc.strerror}.") from None
    finally:
        os.close(fd)


def _not_regular(path: Path, mode: int) -> AdapterError:
    kind = _KIND.get(stat.S_IFMT(mode), "not a regular file")
    return AdapterError(
        f"{path} is {kind}, not a regular file: the adapter directory is damaged. Train or import the "
        "adapter again."
    )


def _check_link(dir_fd: int, directory: Path, name: str) -> None:
    """A symlink may point only inside the adapter directory (a snapshot's links into its blobs are the
    hub cache's: those sit beside it, so a hub snapshot's own files are resolved there)."""
    target = os.readlink(name, dir_fd=dir_fd)
    try:
        root = directory.resolve()
        resolved = (root / target).resolve()
    except (RuntimeError, OSError) as exc:  # a link loop
        raise AdapterError(
            f"{directory / name} is a symbolic link that cannot be followed ({exc})."
        ) from None
    allowed = [root, *_hub_blobs(root)]
    if not any(resolved.is_relative_to(r) for r in allowed):
        raise AdapterError(
            f"{directory / name} is a symlink to {target}, outside the adapter directory; an adapter's "
            "files must be its own. Replace the link with a copy of the file if it is meant to be there."
        )


def _hub_blobs(root: Path) -> list[Path]:
    """The blobs folder of a Hugging Face cache snapshot holding `root` (models--x/snapshots/<rev>/...)."""
    for parent in root.parents:
        if parent.name == "snapshots" and parent.parent.name.startswith(("models--", "datasets--")):
            return [parent.parent / "blobs"]
    return []
