"""The adapter directory: PEFT weights + validora.json, written atomically, loaded back onto a base model.

Writing: the new adapter is filled in a hidden sibling `.NAME.partial-*` and swapped in with two
renames (the earlier adapter goes to `.NAME.old-*` and is deleted after). SIGINT/SIGTERM wait until
the swap is over; a run killed outright leaves those siblings, and the next run (or load) restores
the earlier adapter if `NAME` is missing and removes the rest. A writer holds an flock on every
directory it works on, so leftovers of a run still in progress are never touched.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from validora.errors import AdapterError, HubError
from validora.prompting import PROMPT_FORMAT_VERSION, PromptFormat

FORMAT_VERSION = 1
INFO_FILE = "validora.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
REQUIRED_FILES = (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE)
# Everything Trainer.save writes; any other file in an adapter directory is the user's and is kept.
WRITTEN_FILES = frozenset(
    {*REQUIRED_FILES, "metrics.json", "training_curves.png", "confusion_matrix.png", "README.md"}
)
ADAPTER_TYPES = ("alora", "lora")
LEFTOVER_KINDS = ("partial", "old", "probe")
ADAPTER_SIZE_ESTIMATE = (
    50 * 2**20
)  # bytes; the free-space check asks for twice the larger of this and the earlier adapter
SWAP_DELAY_ENV = "VALIDORA_TEST_SWAP_DELAY"  # tests: seconds to pause, with a line on stderr, inside the swap


@dataclass
class AdapterInfo:
    """Contents of validora.json: everything inference needs besides the PEFT files."""

    adapter_type: str  # "alora" | "lora"
    base_model: str
    labels: list[str]
    prompt: dict[str, Any]  # PromptFormat.describe()
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Trained on examples with a "requirement" field: the requirement text is part of its prompt.
    # Otherwise it is a classifier of the text alone and a requirement only chooses passing labels.
    requirements: bool = False
    format_version: int = FORMAT_VERSION
    validora_version: str = ""

    @property
    def is_alora(self) -> bool:
        return self.adapter_type == "alora"

    @property
    def invocation_prompt(self) -> str:
        return self.prompt["invocation_prompt"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, directory: str | Path) -> AdapterInfo:
        """Read and check validora.json; a malformed one (a hub repository may hold any) is an AdapterError."""
        directory = Path(directory)
        path = directory / INFO_FILE
        if not directory.exists():
            recover(directory)  # a save killed between its two renames
        if not directory.is_dir():
            raise AdapterError(f"Adapter directory not found: {directory}")
        if not path.is_file():
            raise AdapterError(f"{directory} is not a validora adapter: it has no {INFO_FILE}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise AdapterError(f"{path} is unreadable: it is not UTF-8 text ({exc.reason}).") from None
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{path} is unreadable: {exc}") from None
        _check_info(data, path, directory)
        info = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise AdapterError(
                    f"{directory} is incomplete: {name} is missing (only safetensors weights load)."
                )
        return info


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_int(i) and i >= 0 for i in v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _check_info(data: Any, path: Path, directory: Path) -> None:
    """Types and consistency of every field inference reads; the message names the file and the field."""

    def bad(name: str, expected: str, value: Any = None) -> AdapterError:
        head, _, key = name.partition(".")
        if head not in data or (key and key not in data[head]):
            return AdapterError(f"{path}: field {name!r} is missing; it must be {expected}.")
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return AdapterError(f"{path}: field {name!r} must be {expected}, not {shown}.")

    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    version = data.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise bad("format_version", "a positive integer", version)
    prompt = data.get("prompt")
    if not isinstance(prompt, dict):
        raise bad("prompt", "an object (the prompt format)", prompt)
    prompt_version = prompt.get("prompt_format_version", 1)
    if not _is_int(prompt_version) or prompt_version < 1:
        raise bad("prompt.prompt_format_version", "a positive integer", prompt_version)
    if version > FORMAT_VERSION or prompt_version > PROMPT_FORMAT_VERSION:
        raise AdapterError(f"{directory} was written by a newer validora; upgrade validora to load it.")
    labels = data.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(_text(x) for x in labels):
        raise bad("labels", "a list of at least two non-empty strings", labels)
    if len(set(labels)) != len(labels):
        raise bad("labels", "a list of distinct labels", labels)
    label_ids = prompt.get("label_ids")
    checks = [
        ("adapter_type", data.get("adapter_type") in ADAPTER_TYPES, " or ".join(map(repr, ADAPTER_TYPES))),
        ("base_model", _text(data.get("base_model")), "a non-empty string"),
        ("prompt.invocation_prompt", _text(prompt.get("invocation_prompt")), "a non-empty string"),
        ("prompt.invocation_ids", _ids(prompt.get("invocation_ids")), "a non-empty list of token ids"),
        (
            "prompt.label_ids",
            isinstance(label_ids, dict) and set(label_ids) == set(labels) and all(map(_ids, label_ids.values())),
            "an object giving every label (and only those) a non-empty list of token ids",
        ),
        ("prompt.labels", prompt.get("labels", labels) == labels, "the same list as 'labels'"),
        ("prompt.max_length", _is_int(prompt.get("max_length", 1024)) and prompt.get("max_length", 1024) > 0,
         "a positive integer"),
        ("prompt.eos_id", prompt.get("eos_id") is None or _is_int(prompt.get("eos_id")), "a token id"),
        ("training", isinstance(data.get("training", {}), dict), "an object"),
        ("metrics", isinstance(data.get("metrics", {}), dict), "an object"),
        ("requirements", isinstance(data.get("requirements", False), bool), "true or false"),
        ("validora_version", isinstance(data.get("validora_version", ""), str), "a string"),
    ]  # fmt: skip
    for name, ok, expected in checks:
        if not ok:
            head, _, key = name.partition(".")
            raise bad(name, expected, prompt.get(key) if key else data.get(head))


def prompt_format(info: AdapterInfo, tokenizer: Any) -> PromptFormat:
    """Rebuild the training-time prompt format, refusing a tokenizer that encodes it differently."""
    fmt = PromptFormat(
        tokenizer,
        info.labels,
        invocation_prompt=info.invocation_prompt,
        max_length=int(info.prompt.get("max_length", 1024)),
    )
    fmt.check_matches(info.prompt)
    return fmt


def attach(model: Any, directory: str | Path, name: str) -> Any:
    """Load the adapter's weights onto `model` (a base model or an existing PeftModel) as `name`."""
    from peft import PeftModel

    directory = Path(directory)
    if isinstance(model, PeftModel):
        model.load_adapter(str(directory), adapter_name=name, is_trainable=False, use_safetensors=True)
        return model
    return PeftModel.from_pretrained(
        model, str(directory), adapter_name=name, is_trainable=False, use_safetensors=True
    )


def is_complete(directory: Path) -> bool:
    """Holds everything loading needs (a complete earlier adapter can be restored)."""
    return all((directory / name).is_file() for name in REQUIRED_FILES)


def is_replaceable(directory: Path) -> bool:
    """Only an empty directory or an earlier validora adapter may be replaced (with --overwrite)."""
    return not directory.exists() or (
        directory.is_dir() and (not any(directory.iterdir()) or (directory / INFO_FILE).is_file())
    )


def check_target(target: Path, *, overwrite: bool) -> None:
    """Fail before any work if `target` may not be written; called at setup and again just before the swap.

    Leftovers of an interrupted save are restored or removed first (a warning says which); then the
    directory that will hold `target` must take a new entry and have room for an adapter.
    """
    target = Path(target)
    recover(target)
    if target.exists() and not overwrite and not (target.is_dir() and not any(target.iterdir())):
        raise AdapterError(f"{target} already exists; pass --overwrite to replace it.")
    if not is_replaceable(target):
        raise AdapterError(
            f"{target} exists and is not a validora adapter directory; refusing to replace it. "
            "Choose another --outfile."
        )
    _check_writable(target)


def _check_writable(target: Path) -> None:
    """Create and remove a probe sibling, and compare the free space with a rough adapter size."""
    parent = target.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # missing folders are created at save time, inside this one
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent))
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise AdapterError(
            f"Cannot write {target}: {exc.strerror or exc} in {parent}. Choose another --outfile."
        ) from None
    need = 2 * max(ADAPTER_SIZE_ESTIMATE, _size(target))
    if free < need:
        raise AdapterError(
            f"Not enough free space for {target}: {free / 2**20:.0f} MiB free in {parent}, "
            f"about {need / 2**20:.0f} MiB needed. Free some space or choose another --outfile."
        )


def _size(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


@contextmanager
def staged_directory(target: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling to fill; rename it onto `target` only when the block completes.

    On any error or interrupt the temporary directory is removed and `target` is left as it was.
    Files of an earlier adapter that validora does not write (an io.yaml, notes) are carried over.
    """
    target = Path(target)
    check_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = private_tempdir(target, "partial")
    lock = _lock(staging)
    try:
        try:
            yield staging
            _pause_for_tests("staged")
            kept = _keep_user_files(target, staging)
        except Exception as exc:
            if isinstance(exc, OSError) or _disk_full(exc):
                full = _disk_full(exc) or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                raise AdapterError(
                    f"Could not write the adapter beside {target}: {exc}. "
                    + ("The earlier adapter there is kept." if target.exists() else "Nothing was written.")
                    + (" The disk is full: free some space and train again." if full else "")
                ) from exc
            raise
        _swap_into_place(staging, target)
        if kept:
            warnings.warn(
                f"Kept {len(kept)} file(s) of yours in {target} that validora does not write: {', '.join(kept)}.",
                stacklevel=3,
            )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        _unlock(lock)


def _disk_full(exc: BaseException) -> bool:
    """safetensors reports a full disk as its own error type, not OSError."""
    text = str(exc)
    return "No space left" in text or "StorageFull" in text or "Disk quota" in text


def _keep_user_files(target: Path, staging: Path) -> list[str]:
    """Copy (never move: a kill must not lose them) what the user added to the earlier adapter."""
    if not target.is_dir() or not (target / INFO_FILE).is_file():
        return []
    kept = []
    for entry in sorted(target.iterdir()):
        dest = staging / entry.name
        if entry.name in WRITTEN_FILES or os.path.lexists(dest):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, symlinks=True)
        else:
            shutil.copy2(entry, dest, follow_symlinks=False)
        kept.append(entry.name)
    return kept


def private_tempdir(target: Path, kind: str) -> Path:
    """A sibling temporary directory with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def _swap_into_place(staging: Path, target: Path) -> None:
    """Two renames with SIGINT/SIGTERM held back; a kill in between is undone by recover()."""
    with _signals_deferred():
        if not target.exists():
            os.replace(staging, target)
            return
        lock = _lock(target)
        if lock is None:
            raise AdapterError(f"Another validora run is replacing {target} right now; try again after it.")
        try:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
            _pause_for_tests("between renames")
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)  # put the earlier adapter back
                raise
            shutil.rmtree(old, ignore_errors=True)
        finally:
            _unlock(lock)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (main thread only).

    A Python-level handler, not a signal mask: a process-directed signal may land on any thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler not in (signal.SIG_IGN, None):
            previous[sig] = handler
            signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def _pause_for_tests(moment: str) -> None:
    """With VALIDORA_TEST_SWAP_DELAY set, say where the save is on stderr and wait: a kill lands there."""
    delay = os.environ.get(SWAP_DELAY_ENV)
    if delay:
        print(f"validora-test: {moment}", file=sys.stderr, flush=True)
        time.sleep(float(delay))


def _lock(directory: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `directory`, or None if another process holds one.

    The lock follows the directory through renames and ends with the process, however it ends.
    -1 where no lock can be taken (no flock on this system or file system): nothing is judged stale then.
    """
    try:
        import fcntl
    except ImportError:
        return -1
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        return -1
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        os.close(fd)


def _leftovers(target: Path) -> list[Path]:
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.name.startswith(prefix)
        and p.name[len(prefix) :].startswith(tuple(f"{k}-" for k in LEFTOVER_KINDS))
        and p.is_dir()
        and not p.is_symlink()
    )


def recover(target: str | Path) -> str | None:
    """Undo what a killed save left beside `target`; return (and warn) one line saying what was done.

    `target` missing and an earlier adapter stranded as `.NAME.old-*`: it is renamed back. Staging
    directories of dead runs are removed, even complete ones (they were never swapped in), and so
    are old copies whose files `target` holds. Directories another live process holds are left alone.
    """
    target = Path(target)
    held = [(p, fd) for p in _leftovers(target) if (fd := _lock(p)) is not None and fd >= 0]
    done: list[str] = []
    try:
        olds = [p for p, _ in held if p.name.startswith(f".{target.name}.old-")]
        restored = None
        if olds and not os.path.lexists(target):
            restored = max(olds, key=lambda p: (is_complete(p), p.stat().st_ctime_ns))
            os.replace(restored, target)
            done.append(f"restored the earlier adapter {target} from {restored.name}")
        removed, stranded = [], []
        for path, _ in held:
            if path == restored:
                continue
            if path in olds and _holds_more(path, target):
                stranded.append(path.name)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        if removed:
            done.append(f"removed {', '.join(removed)}")
        if stranded:
            done.append(
                f"kept {', '.join(stranded)} (it holds files {target} lacks: move them back, then delete it)"
            )
    finally:
        for _, fd in held:
            os.close(fd)
    if not done:
        return None
    note = f"An earlier save of {target} was interrupted: {'; '.join(done)}."
    warnings.warn(note, stacklevel=2)
    return note


def _holds_more(old: Path, target: Path) -> bool:
    """An old copy holds a user file the current adapter lacks (only if a save predates kept files)."""
    with suppress(OSError):
        return any(not os.path.lexists(target / p.name) for p in old.iterdir() if p.name not in WRITTEN_FILES)
    return False


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _is_local(name: str) -> bool:
    """A path to a model on this machine rather than a hub id or a short name."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or name.lower().endswith(".gguf")
        or ("/" in name and Path(name).expanduser().exists())
    )


def _last(name: str) -> str:
    return Path(str(name).rstrip("/")).name.lower()


def base_key(name: str) -> str:
    """Comparable form of a base-model name: a local model's resolved path; otherwise (hub id, alias,
    short name) the last component in lower case, so `granite-3.2-8b-instruct` matches its hub id."""
    name = str(name)
    return str(Path(name).expanduser().resolve()) if _is_local(name) else _last(name)


def same_base_model(a: str, b: str) -> bool:
    """Whether two base-model names mean the same model.

    Local paths: the same resolved path (`/a/granite` is not `/b/granite`). Hub ids: equal ignoring
    case. A short name without "/" (the embedded alias, Mellea-style `granite-3.2-8b-instruct`, or a
    published adapter's base) matches any name with that last component.
    """
    a, b = str(a).rstrip("/"), str(b).rstrip("/")
    if "/" not in a or "/" not in b:
        return _last(a) == _last(b)
    if _is_local(a) or _is_local(b):
        return _is_local(a) and _is_local(b) and base_key(a) == base_key(b)
    return a.lower() == b.lower()


def resolve_adapter_dir(
    model_id: str | Path,
    *,
    intrinsic_name: str | None = None,
    base_model_name: str | None = None,
    revision: str | None = None,
) -> tuple[Path, str | None]:
    """A local adapter directory for a directory, a hub id (plain or intrinsics layout) or a snapshot.

    Returns the directory and, for the intrinsics layout, the intrinsic's name.
    """
    from validora import layouts

    local = Path(model_id).expanduser()
    text = str(model_id)
    if not local.exists() and local.parent.is_dir():
        recover(local)  # a save killed between its two renames left the adapter beside its name
    if local.is_dir():
        root = local
    elif text.startswith((".", "/", "~")) or text.count("/") != 1 or local.exists():
        raise AdapterError(f"Adapter directory not found: {model_id}")
    else:
        from validora.hub import download_adapter

        try:
            root = download_adapter(
                text, revision=revision, intrinsic_name=intrinsic_name, base_model_name=base_model_name
            )
        except HubError as exc:
            raise HubError(f"No local directory {text!r}, and as a hub id: {exc}") from None
    if root is local and not layouts.candidates(root) and not (root / INFO_FILE).is_file():
        raise AdapterError(
            f"{root} is not a validora adapter: it has no {INFO_FILE} "
            "(nor adapters in <intrinsic_name>/<base_model_name>/<alora|lora>/)."
        )
    try:
        found = layouts.locate(root, intrinsic_name=intrinsic_name, base_model_name=base_model_name)
    except LookupError as exc:
        raise AdapterError(f"{model_id}: {exc}") from None
    return found.path, found.intrinsic_name


class CustomIntrinsicAdapter:
    """A trained validora adapter, from a local directory or a hub id, ready to add to a backend.

    A hub repository may hold the adapter at its root or in the intrinsics layout
    (`<intrinsic_name>/<base_model_name>/<alora|lora>/`); `intrinsic_name` picks one of several.
    """

    def __init__(
        self,
        model_id: str,
        base_model_name: str | None = None,
        intrinsic_name: str | None = None,
        *,
        revision: str | None = None,
    ):
        self.model_id = model_id
        self.path, found_name = resolve_adapter_dir(
            model_id, intrinsic_name=intrinsic_name, base_model_name=base_model_name, revision=revision
        )
        self.info = AdapterInfo.read(self.path)
        self.name = intrinsic_name or found_name or _last(model_id)
        self.base_model_name = base_model_name or self.info.base_model
        if not same_base_model(self.base_model_name, self.info.base_model):
            raise AdapterError(
                f"Adapter {model_id!r} was trained on base model {self.info.base_model!r}, "
                f"not {self.base_model_name!r}."
            )

    @property
    def is_alora(self) -> bool:
        return self.info.is_alora

    @property
    def labels(self) -> list[str]:
        return list(self.info.labels)

    def __repr__(self) -> str:
        return f"CustomIntrinsicAdapter({self.name!r}, {self.info.adapter_type}, labels={self.labels})"
