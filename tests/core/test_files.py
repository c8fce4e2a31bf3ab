"""core/files.py on its own: atomic files, locks held by another process, staged directories, recovery.

The adapter directory's own cases (user files, free space, signals) are in test_adapter_dir.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from validora.core import files


def holder(path: Path, *, create: bool = False) -> subprocess.Popen:
    """Another process holding an flock on `path` until its stdin closes."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, {"os.O_RDWR | os.O_CREAT" if create else "os.O_RDONLY"})
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_an_atomic_file_replaces_whole_or_not_at_all(tmp_path: Path):
    target = tmp_path / "sub" / "state.json"
    files.atomic_write_text(target, "one")
    assert target.read_text() == "one" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    with pytest.raises(RuntimeError), files.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    with files.atomic_file(target, prefix="state.json.tmp-", private=True) as tmp:
        tmp.write_text("two")
    assert target.read_text() == "two" and target.stat().st_mode & 0o777 == 0o600


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_sweep_removes_dead_writers_temporaries_but_not_a_live_ones(tmp_path: Path):
    target = tmp_path / "state"
    dead, live = tmp_path / "state.tmp-dead", tmp_path / "state.tmp-live"
    dead.write_text("x")
    live.write_text("y")
    proc = holder(live)
    try:
        files.sweep_files(target, "state.tmp-")
        assert not dead.exists() and live.exists()
    finally:
        proc.communicate("")
    files.sweep_files(target, "state.tmp-")
    assert not live.exists()


def test_a_lock_file_held_elsewhere_is_reported_or_waited_for(tmp_path: Path):
    lock = tmp_path / "x.lock"
    proc = holder(lock, create=True)
    try:
        with files.file_lock(lock, wait=False) as free:
            assert free is False
        assert files.try_lock(lock) is None
    finally:
        proc.communicate("")
    with files.file_lock(lock, wait=False) as free:
        assert free is True
    fd = files.try_lock(lock)
    assert fd is not None and fd >= 0
    files.release(fd)


def test_a_staged_directory_replaces_the_target_only_when_the_block_completes(tmp_path: Path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("earlier")
    with (
        pytest.raises(ValueError, match="instead"),
        files.staged_directory(target, failed=lambda exc: ValueError("instead")) as staging,
    ):
        (staging / "a").write_text("new")
        raise OSError("disk")
    assert (target / "a").read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    moments = []
    with files.staged_directory(
        target, finish=lambda s: (s / "b").write_text("kept"), pause=moments.append
    ) as s:
        (s / "a").write_text("new")
    assert (target / "a").read_text() == "new" and (target / "b").read_text() == "kept"
    assert moments == ["between renames"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recover_puts_back_the_newest_complete_old_copy_and_sweeps_the_rest(tmp_path: Path):
    for name in (".out.old-a", ".out.old-b", ".out.partial-c"):
        (tmp_path / name).mkdir()
    (tmp_path / ".out.old-a" / "weights").write_text("w")
    done = files.recover(tmp_path / "out", complete=lambda p: (p / "weights").is_file(), what="thing")
    assert done == [
        f"restored the earlier thing {tmp_path / 'out'} from .out.old-a",
        "removed .out.old-b, .out.partial-c",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "weights").is_file()
    assert files.recover(tmp_path / "out") == [] and files.leftovers(tmp_path / "out") == []
