"""The lock a batch run holds on its output: two `predict --output` runs appending to one file would
write every result twice, so the second is refused at once, before anything is touched.

The flock is on a hidden sibling `.NAME.lock` of the real file (symlinks resolved: two runs reaching one
file through a link take one lock; the output itself may not exist yet), taken when the run is planned
and held until it ends (or the process does, however it ends). Only a read-only directory goes without
one (the output's own write then fails); a lock path that cannot be a lock file (a directory) is refused.
The lock file is removed while still held; a run that opened it just before sees another inode
afterwards and takes the new one.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from validora.core import files
from validora.errors import ConfigError


def lock_path(output: str | Path) -> Path:
    """The hidden lock file a run holds while it writes `output` (beside the file it really names)."""
    output = Path(os.path.realpath(output))
    return output.with_name(f".{output.name}.lock")


def hold(output: Path) -> int:
    """An flock on `lock_path(output)` (-1 where flock is unavailable); another run holding it is refused
    at once: two runs appending to one file would write every result twice."""
    lock = lock_path(output)
    for _ in range(10):
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            if not os.path.lexists(lock) and not os.access(lock.parent, os.W_OK):
                return -1  # a read-only directory: the output's own write fails there, with its message
            raise ConfigError(
                f"output {output} cannot be locked against another validora run: its lock file {lock} "
                f"cannot be created or opened ({exc.strerror or exc}). If no validora run is writing "
                f"{output}, remove {lock} and run again.",
                option="output",
            ) from None
        fd = files.try_lock(lock)
        if fd is None:
            raise ConfigError(
                f"output {output} is being written by another validora run right now (it holds {lock.name}); "
                "wait for that run to end (the same command then resumes where it stopped), or choose "
                "another output file. Nothing was changed.",
                option="output",
            )
        with suppress(OSError):
            if fd < 0 or os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        files.release(fd)  # the run before removed the lock file as we opened it: take the new one
    return -1


def let_go(output: Path, fd: int | None) -> None:
    if fd is not None and fd >= 0:
        with suppress(OSError):
            lock_path(output).unlink()  # removed while still held: a waiting opener sees another inode
        files.release(fd)
