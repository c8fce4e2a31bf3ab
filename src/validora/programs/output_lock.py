"""The lock a batch run holds on its output: two `predict --output` runs appending to one file would
write every result twice, so the second is refused at once, before anything is touched.

The flock is on a hidden sibling `.NAME.lock` (the output itself may not exist yet), taken when the run
is planned and held until it ends (or the process does, however it ends). The lock file is removed while
still held; a run that opened it just before sees another inode afterwards and takes the new one.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from validora.core import files
from validora.errors import ConfigError


def lock_path(output: str | Path) -> Path:
    """The hidden lock file a run holds while it writes `output`."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def hold(output: Path) -> int:
    """An flock on `lock_path(output)` (-1 where flock is unavailable); another run holding it is refused
    at once: two runs appending to one file would write every result twice."""
    lock = lock_path(output)
    for _ in range(10):
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError:
            return -1  # a read-only directory: nothing can be written there anyway
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
