"""Writing an adapter directory atomically, and recovering what a killed save left beside it.

Writing fills a hidden sibling `.NAME.partial-*`, then swaps it in by two renames (the earlier adapter
goes to `.NAME.old-*`, deleted after) while SIGINT/SIGTERM wait (core/files.py). A run killed outright
leaves those; the next save (every writer comes through check_target) puts a stranded earlier adapter
back and removes the rest, never touching the directories a live writer holds an flock on. Loading
never does: it only reports a pending recovery (schema.pending_recovery).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from validora.adapter.schema import CONFIG_FILE, INFO_FILE, WEIGHTS_FILE, WRITTEN_FILES
from validora.core import files
from validora.errors import AdapterError

ADAPTER_SIZE_ESTIMATE = 50 * 2**20  # the free-space check wants twice this or twice the earlier adapter
SWAP_DELAY_ENV = "VALIDORA_TEST_SWAP_DELAY"  # tests: seconds to pause, with a warning line, inside the swap


def is_replaceable(directory: Path, *, adopt: bool = False) -> bool:
    """Only an empty directory or an earlier validora adapter may be replaced (with overwrite); with
    `adopt`, also a PEFT adapter directory, every file of which the replacement keeps (peft_import.py)."""
    marker = CONFIG_FILE if adopt else INFO_FILE
    return not directory.exists() or (
        directory.is_dir() and (not any(directory.iterdir()) or (directory / marker).is_file())
    )


def check_target(target: Path, *, overwrite: bool, adopt: bool = False) -> None:
    """Fail before any work if `target` may not be written (at setup, again before the swap): after
    recover(), the folder that will hold it must take a new entry and have room for an adapter."""
    target = Path(target)
    recover(target)
    if target.exists() and not overwrite and not (target.is_dir() and not any(target.iterdir())):
        raise AdapterError(f"overwrite is needed to replace {target}: it already exists.", option="overwrite")
    if not is_replaceable(target, adopt=adopt):
        raise AdapterError(
            f"outfile {target} exists and is not a validora adapter directory; refusing to replace it. "
            "Choose another.",
            option="outfile",
        )
    _check_writable(target)


def _check_writable(target: Path) -> None:
    """Create and remove a probe sibling, and compare the free space with a rough adapter size."""
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # missing folders are created at save time, inside this one
    try:
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent)
        with suppress(FileNotFoundError):  # another run's cleanup may have taken it already
            os.rmdir(probe)
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise AdapterError(
            f"outfile {target} cannot be written: {exc.strerror or exc} in {parent}. Choose another.",
            option="outfile",
        ) from None
    earlier = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
    need = 2 * max(ADAPTER_SIZE_ESTIMATE, earlier)
    if free < need:
        raise AdapterError(
            f"outfile {target} does not fit: not enough free space, {free / 2**20:.0f} MiB free in {parent}, "
            f"about {need / 2**20:.0f} MiB needed. Free some space or choose another.",
            option="outfile",
        )


@contextmanager
def staged_directory(target: str | Path, *, overwrite: bool, adopt: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling to fill; it replaces `target` only when the block completes, taking
    the earlier adapter's files validora does not write (an io.yaml, notes). Else `target` is untouched.
    `adopt`: `target` is a PEFT directory imported in place; every entry the block did not write is copied.
    Every writer enters here (or check_target): what an interrupted save left is recovered first."""
    target = Path(target)
    check_target(target, overwrite=overwrite, adopt=adopt)
    kept: list[str] = []

    def finish(staging: Path) -> None:
        _pause_for_tests("staged")
        kept.extend(_keep_user_files(target, staging, every=adopt))

    def failed(exc: Exception) -> Exception | None:  # safetensors reports a full disk as its own error type
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
        if not (full or isinstance(exc, OSError)):
            return None
        return AdapterError(
            f"Could not write the adapter beside {target}: {exc}. "
            + ("The earlier adapter there is kept." if target.exists() else "Nothing was written.")
            + (" The disk is full: free some space and train again." if full else "")
        )

    with files.staged_directory(target, finish=finish, failed=failed, pause=_pause_for_tests) as staging:
        yield staging
    if kept and not adopt:
        said = f"Kept {len(kept)} file(s) of yours in {target} that validora does not write"
        warnings.warn(f"{said}: {', '.join(kept)}.", stacklevel=3)


def _keep_user_files(target: Path, staging: Path, *, every: bool = False) -> list[str]:
    """Copy (never move: a kill must not lose them) what the user added to the earlier adapter."""
    if not target.is_dir() or (not every and not (target / INFO_FILE).is_file()):
        return []
    mine = [p for p in sorted(target.iterdir()) if every or p.name not in WRITTEN_FILES]
    for entry in (kept := [p for p in mine if not os.path.lexists(staging / p.name)]):
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
    return [p.name for p in kept]


def _pause_for_tests(moment: str) -> None:
    """With VALIDORA_TEST_SWAP_DELAY set, say where the save is (a warning line) and wait: a kill lands there."""
    if delay := os.environ.get(SWAP_DELAY_ENV):
        warnings.warn(f"validora-test: {moment}", stacklevel=2)
        time.sleep(float(delay))


def recover(target: str | Path) -> str | None:
    """Undo what a killed save left beside `target`; return (and warn) one line saying what was done.
    `target` missing: the newest `.NAME.old-*` is renamed back. The rest goes (staging of dead runs,
    even complete; old copies unless one holds a file `target` lacks); a live writer's is left alone."""
    target = Path(target)
    done = files.recover(
        target,
        complete=lambda p: (p / WEIGHTS_FILE).is_file(),
        owned=lambda name: name in WRITTEN_FILES,
        what="adapter",
    )
    if not done:
        return None
    note = f"An earlier save of {target} was interrupted: {'; '.join(done)}."
    warnings.warn(note, stacklevel=2)
    return note


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
