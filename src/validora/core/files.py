"""Files a kill never leaves half-written: flocks, atomic file writes, staged directories, and their recovery.

A writer fills a hidden sibling (`.NAME.partial-*`, or a temporary file) that it holds an flock on, then
renames it over NAME. A flock ends with the process however it ends, so a sibling whose lock is free
is a leftover of a dead writer, and one whose lock is held belongs to a live one and is never touched.
Replacing a directory takes two renames (the earlier one goes to `.NAME.old-*`) while SIGINT/SIGTERM
wait; `recover()` undoes a kill between them. What a directory holds is its owner's business: callers
pass it in as predicates.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: nothing is locked there, writers go on unlocked
    fcntl = None  # type: ignore[assignment]

from validora.errors import AdapterError

LEFTOVER_KINDS = ("partial", "old", "probe")  # the hidden siblings `.NAME.<kind>-*` writers make


def _flock(fd: int, *, wait: bool) -> bool | None:
    """True: locked; False: another process holds it (only without `wait`); None: no flock here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError:  # locks unsupported on this file system
        return None


def try_lock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on `path`, a directory or an existing file (it follows
    renames and ends with the process); None if another process holds it; -1 where flock is unavailable."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0))
    except OSError:
        return -1
    locked = _flock(fd, wait=False)
    if locked:
        return fd
    os.close(fd)
    return None if locked is False else -1


def release(fd: int | None) -> None:
    """Close a descriptor from try_lock (None and -1 hold nothing)."""
    if fd is not None and fd >= 0:
        os.close(fd)


@contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the lock file `path` (created), released when the block ends or the process dies.

    Yields False if `wait` is False and another process holds it. Where flock is unavailable (Windows,
    some network file systems) yields `wait` without locking: a waiting caller goes on unlocked, a
    non-waiting one is told to leave the guarded thing alone.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield bool(_flock(fd, wait=wait)) or wait
    finally:
        os.close(fd)


def wait_for_lock(path: Path, seconds: float = 60.0) -> int:
    """Another run's swap of the same target takes milliseconds: wait for it rather than discard ours."""
    deadline = time.monotonic() + seconds
    while (lock := try_lock(path)) is None:
        if time.monotonic() > deadline:
            raise AdapterError(f"Another validora run has been replacing {path} for over a minute.")
        time.sleep(0.2)
    return lock


def _default_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def private_tempdir(target: Path, kind: str) -> Path:
    """A sibling temporary directory with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    path.chmod(_default_mode(0o777))
    return path


@contextmanager
def atomic_file(path: Path, *, prefix: str | None = None, private: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling to write (flock-ed meanwhile, so a sweep leaves it alone); it replaces
    `path` by one rename when the block completes, else it goes and `path` stays as it was. `prefix`
    names it (default `.NAME.tmp-`); `private` keeps mkstemp's 0600 instead of a plain file's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.tmp-", dir=path.parent)
    try:
        _flock(fd, wait=False)
        if not private:
            os.chmod(tmp, _default_mode(0o666))
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        os.close(fd)
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` (UTF-8) whole or not at all."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sweep_files(path: Path, prefix: str) -> None:
    """Remove temporary siblings `<prefix>*` of `path` left by killed atomic_file writers (not a live one's)."""
    with suppress(OSError):
        for tmp in path.parent.glob(f"{prefix}*"):
            with suppress(OSError):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    if _flock(fd, wait=False):
                        tmp.unlink()
                finally:
                    os.close(fd)


@contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """A hidden sibling `.NAME.partial-*` to fill, flock-ed while it lives (recover() leaves a live
    writer's alone) and removed when the block ends, whatever happens."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = private_tempdir(target, "partial")
    lock = try_lock(staging)
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        release(lock)


def _no_pause(moment: str) -> None:
    pass


def swap_into_place(staging: Path, target: Path, *, pause: Callable[[str], None] = _no_pause) -> None:
    """Two renames with SIGINT/SIGTERM held back; a kill in between is undone by recover().
    `pause(moment)`: a hook tests use to land a signal between the renames."""
    lock = wait_for_lock(target) if target.exists() else -1
    try:
        with signals_deferred():
            if not target.exists():
                os.replace(staging, target)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            pause("between renames")
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)  # put the earlier directory back
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        release(lock)


@contextmanager
def staged_directory(
    target: Path,
    *,
    finish: Callable[[Path], None] = lambda staging: None,
    failed: Callable[[Exception], Exception | None] = lambda exc: None,
    pause: Callable[[str], None] = _no_pause,
) -> Iterator[Path]:
    """Yield a staging directory; it replaces `target` only when the block completes. `finish(staging)`
    runs last before the swap (copy what to keep); an exception of the block or of `finish` is raised as
    `failed(exc)` where that returns one. Checking that `target` may be replaced is the caller's."""
    with staging_directory(target) as staging:
        try:
            yield staging
            finish(staging)
        except Exception as exc:
            if (instead := failed(exc)) is not None:
                raise instead from exc
            raise
        swap_into_place(staging, Path(target), pause=pause)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (main thread only). A Python
    handler, not a signal mask: a process-directed signal may land on any thread (torch's, say)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h not in (signal.SIG_IGN, None)}  # ignored stays so
    for sig in previous:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def leftovers(target: Path, kinds: Iterable[str] = LEFTOVER_KINDS) -> list[Path]:
    """The hidden sibling directories `.NAME.<kind>-*` writers of `target` made (live or dead ones)."""
    target = Path(target)
    starts = tuple(f".{target.name}.{kind}-" for kind in kinds)
    with suppress(OSError):
        found = [p for p in target.parent.iterdir() if p.name.startswith(starts) and not p.is_symlink()]
        return sorted(p for p in found if p.is_dir())
    return []


def recover(
    target: Path,
    *,
    complete: Callable[[Path], bool] = lambda directory: True,
    owned: Callable[[str], bool] = lambda name: True,
    what: str = "directory",
) -> list[str]:
    """Undo what a killed writer left beside `target`; return what was done, one phrase each (`what`
    names the kind of directory).

    `target` missing: the newest `.NAME.old-*` (a `complete` one first) is renamed back. The rest goes
    (staging of dead runs, even complete; old copies unless one holds an entry that `owned` does not
    claim and `target` lacks: that one is kept and named); a live writer's (flock held) is left alone.
    """
    target = Path(target)
    held = {p: fd for p in leftovers(target) if (fd := try_lock(p)) is not None and fd >= 0}
    olds = [p for p in held if p.name.startswith(f".{target.name}.old-")]
    done, removed, stranded = [], [], []
    try:
        if olds and not os.path.lexists(target):
            back = max(olds, key=lambda p: (complete(p), p.stat().st_ctime_ns))
            os.replace(back, target)
            done.append(f"restored the earlier {what} {target} from {back.name}")
            olds.remove(back)
            os.close(held.pop(back))
        for path in held:
            user = [p.name for p in path.iterdir() if not owned(p.name)] if path in olds else []
            if any(not os.path.lexists(target / name) for name in user):
                stranded.append(path.name)
            else:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    finally:
        for fd in held.values():
            os.close(fd)
    if removed:
        done.append(f"removed {', '.join(removed)}")
    if stranded:
        done.append(f"kept {', '.join(stranded)}: it holds files {target} lacks, move them back")
    return done


def links_leaving(directory: Path, *, allowed: Path | None = None) -> list[str]:
    """Symbolic links under `directory` (not followed into linked folders) whose target lies outside it
    (or nowhere), shown as `link -> target`: a copy or upload that followed one would take a file the
    user never put in the directory. `allowed`: a folder such links may point into as well (the
    Hugging Face cache keeps a snapshot's files as links to its blobs)."""
    directory = Path(directory)
    root = directory.resolve()
    roots = [root] + ([Path(allowed).resolve()] if allowed is not None else [])
    found = []
    for base, folders, names in os.walk(directory):  # os.walk does not enter linked folders
        for name in sorted(folders + names):
            path = Path(base) / name
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):  # dangling or a loop
                target = None
            if target is None or not any(target == r or target.is_relative_to(r) for r in roots):
                found.append(f"{path.relative_to(directory)} -> {os.readlink(path)}")
    return sorted(found)
