"""The adapter directory: PEFT weights + validora.json, written atomically, loaded back onto a base model.

Writing fills a hidden sibling `.NAME.partial-*`, then swaps it in by two renames (the earlier adapter
goes to `.NAME.old-*`, deleted after) while SIGINT/SIGTERM wait. A run killed outright leaves those;
the next run or load puts a stranded earlier adapter back and removes the rest, never touching the
directories a live writer holds an flock on.
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

from validora.core.calibration import positive_number
from validora.core.names import last_component, same_base_model
from validora.core.prompting import PROMPT_FORMAT_VERSION, PromptFormat
from validora.errors import AdapterError, HubError

FORMAT_VERSION = 1
INFO_FILE = "validora.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEXICAL_FILE = "lexical.safetensors"
CONFIG_FILE = "adapter_config.json"
REQUIRED_FILES = (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE)
# Everything Trainer.save writes; any other file in an adapter directory is the user's and is kept.
RELIABILITY_FILE = "reliability_diagram.png"
WRITTEN_FILES = {
    *REQUIRED_FILES, "metrics.json", "training_curves.png", "confusion_matrix.png", RELIABILITY_FILE, "README.md",
    LEXICAL_FILE,
}  # fmt: skip
ADAPTER_TYPES = ("alora", "lora")
LEFTOVER_KINDS = ("partial", "old", "probe")
ADAPTER_SIZE_ESTIMATE = 50 * 2**20  # the free-space check wants twice this or twice the earlier adapter
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
    # Label probabilities are softmax(loglik / temperature), fitted on the held-out split at the end
    # of training (calibration.py); files written before calibration existed load with 1.0.
    temperature: float = 1.0
    # The lexical model mixed into the label probabilities (readout.Readout.describe); None: the adapter alone.
    lexical: dict[str, Any] | None = None
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
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            raise AdapterError(f"{path} is unreadable: {why}.") from None
        _check_info(data, path, directory)
        info = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        info.temperature = float(info.temperature)
        for name in (n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / n).is_file()):
            raise AdapterError(
                f"{directory} is incomplete: {name} is missing (only safetensors weights load)."
            )
        return info


def _int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(map(_int, v))


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def valid_description(v: Any) -> bool:
    """Whether validora.json's "lexical" is null or what `Readout.describe` writes (the parts it reads)."""
    if v is None:
        return True
    weight = v.get("weight") if isinstance(v, dict) else None
    temperature = v.get("mixture_temperature") if isinstance(v, dict) else None
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (weight, temperature))
    return numbers and 0 <= weight < 1 and 0 < temperature < float("inf")


def _check_info(data: Any, path: Path, directory: Path) -> None:
    """Types and consistency of every field inference reads; the message names the file and the field."""

    def bad(name: str, expected: str) -> AdapterError:
        head, _, key = name.partition(".")
        if head not in data or (key and key not in data[head]):
            return AdapterError(f"{path}: field {name!r} is missing; it must be {expected}.")
        shown = json.dumps(data[head][key] if key else data[head], ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return AdapterError(f"{path}: field {name!r} must be {expected}, not {shown}.")

    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    version = data.get("format_version", FORMAT_VERSION)
    if not _int(version, 1):
        raise bad("format_version", "a positive integer")
    prompt = data.get("prompt")
    if not isinstance(prompt, dict):
        raise bad("prompt", "an object (the prompt format)")
    prompt_version = prompt.get("prompt_format_version", 1)
    if not _int(prompt_version, 1):
        raise bad("prompt.prompt_format_version", "a positive integer")
    if version > FORMAT_VERSION or prompt_version > PROMPT_FORMAT_VERSION:
        raise AdapterError(f"{directory} was written by a newer validora; upgrade validora to load it.")
    labels = data.get("labels")
    if not (isinstance(labels, list) and all(map(_text, labels)) and len(set(labels)) == len(labels) > 1):
        raise bad("labels", "a list of at least two distinct non-empty strings")
    label_ids = prompt.get("label_ids")
    checks = [
        ("adapter_type", data.get("adapter_type") in ADAPTER_TYPES, " or ".join(map(repr, ADAPTER_TYPES))),
        ("base_model", _text(data.get("base_model")), "a non-empty string"),
        ("prompt.invocation_prompt", _text(prompt.get("invocation_prompt")), "a non-empty string"),
        ("prompt.invocation_ids", _ids(prompt.get("invocation_ids")), "a non-empty list of token ids"),
        ("prompt.label_ids", isinstance(label_ids, dict) and set(label_ids) == set(labels)
         and all(map(_ids, label_ids.values())), "an object giving each label, and only those, token ids"),
        ("prompt.labels", prompt.get("labels", labels) == labels, "the same list as 'labels'"),
        ("prompt.max_length", _int(prompt.get("max_length", 1024), 1), "a positive integer"),
        ("prompt.eos_id", prompt.get("eos_id") is None or _int(prompt.get("eos_id")), "a token id"),
        ("training", isinstance(data.get("training", {}), dict), "an object"),
        ("metrics", isinstance(data.get("metrics", {}), dict), "an object"),
        ("requirements", isinstance(data.get("requirements", False), bool), "true or false"),
        ("temperature", positive_number(data.get("temperature", 1.0)), "a finite number above 0"),
        ("validora_version", isinstance(data.get("validora_version", ""), str), "a string"),
        ("lexical", valid_description(data.get("lexical")), 'null or an object with "weight" in [0, 1) and "mixture_temperature" > 0'),
    ]  # fmt: skip
    for name, ok, expected in checks:
        if not ok:
            raise bad(name, expected)


def prompt_format(info: AdapterInfo, tokenizer: Any) -> PromptFormat:
    """Rebuild the training-time prompt format, refusing a tokenizer that encodes it differently."""
    length = int(info.prompt.get("max_length", 1024))
    fmt = PromptFormat(tokenizer, info.labels, invocation_prompt=info.invocation_prompt, max_length=length)
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


def is_replaceable(directory: Path, *, adopt: bool = False) -> bool:
    """Only an empty directory or an earlier validora adapter may be replaced (with --overwrite); with
    `adopt`, also a PEFT adapter directory, every file of which the replacement keeps (importing.py)."""
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
        raise AdapterError(f"{target} already exists; pass --overwrite to replace it.")
    if not is_replaceable(target, adopt=adopt):
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
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent)
        with suppress(FileNotFoundError):  # another run's cleanup may have taken it already
            os.rmdir(probe)
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise AdapterError(
            f"Cannot write {target}: {exc.strerror or exc} in {parent}. Choose another --outfile."
        ) from None
    earlier = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
    need = 2 * max(ADAPTER_SIZE_ESTIMATE, earlier)
    if free < need:
        raise AdapterError(
            f"Not enough free space for {target}: {free / 2**20:.0f} MiB free in {parent}, "
            f"about {need / 2**20:.0f} MiB needed. Free some space or choose another --outfile."
        )


@contextmanager
def staged_directory(target: str | Path, *, overwrite: bool, adopt: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling to fill; it replaces `target` only when the block completes, taking
    the earlier adapter's files validora does not write (an io.yaml, notes). Else `target` is untouched.
    `adopt`: `target` is a PEFT directory imported in place; every entry the block did not write is copied."""
    target = Path(target)
    check_target(target, overwrite=overwrite, adopt=adopt)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = private_tempdir(target, "partial")
    lock = _lock(staging)
    try:
        try:
            yield staging
            _pause_for_tests("staged")
            kept = _keep_user_files(target, staging, every=adopt)
        except Exception as exc:  # safetensors reports a full disk as its own error type
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
            if full or isinstance(exc, OSError):
                raise AdapterError(
                    f"Could not write the adapter beside {target}: {exc}. "
                    + ("The earlier adapter there is kept." if target.exists() else "Nothing was written.")
                    + (" The disk is full: free some space and train again." if full else "")
                ) from exc
            raise
        _swap_into_place(staging, target)
        if kept and not adopt:
            said = f"Kept {len(kept)} file(s) of yours in {target} that validora does not write"
            warnings.warn(f"{said}: {', '.join(kept)}.", stacklevel=3)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None and lock >= 0:
            os.close(lock)


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


def private_tempdir(target: Path, kind: str) -> Path:
    """A sibling temporary directory with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def _swap_into_place(staging: Path, target: Path) -> None:
    """Two renames with SIGINT/SIGTERM held back; a kill in between is undone by recover()."""
    lock = _wait_for_lock(target) if target.exists() else -1
    try:
        with _signals_deferred():
            if not target.exists():
                os.replace(staging, target)
                return
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
        if lock >= 0:
            os.close(lock)


@contextmanager
def _signals_deferred() -> Iterator[None]:
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


def _pause_for_tests(moment: str) -> None:
    """With VALIDORA_TEST_SWAP_DELAY set, say where the save is on stderr and wait: a kill lands there."""
    if delay := os.environ.get(SWAP_DELAY_ENV):
        print(f"validora-test: {moment}", file=sys.stderr, flush=True)
        time.sleep(float(delay))


def _wait_for_lock(target: Path, seconds: float = 60.0) -> int:
    """Another run's swap of the same target takes milliseconds: wait for it rather than discard ours."""
    deadline = time.monotonic() + seconds
    while (lock := _lock(target)) is None:
        if time.monotonic() > deadline:
            raise AdapterError(f"Another validora run has been replacing {target} for over a minute.")
        time.sleep(0.2)
    return lock


def _lock(directory: Path) -> int | None:
    """A descriptor holding an exclusive flock on `directory` (it follows renames and ends with the
    process, however it ends); None if another process holds it; -1 where flock is unavailable."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as exc:
        os.close(fd)
        return None if isinstance(exc, BlockingIOError) else -1


def _leftovers(target: Path) -> list[Path]:
    starts = tuple(f".{target.name}.{kind}-" for kind in LEFTOVER_KINDS)
    with suppress(OSError):
        found = [p for p in target.parent.iterdir() if p.name.startswith(starts) and not p.is_symlink()]
        return sorted(p for p in found if p.is_dir())
    return []


def recover(target: str | Path) -> str | None:
    """Undo what a killed save left beside `target`; return (and warn) one line saying what was done.
    `target` missing: the newest `.NAME.old-*` is renamed back. The rest goes (staging of dead runs,
    even complete; old copies unless one holds a file `target` lacks); a live writer's is left alone."""
    target = Path(target)
    held = {p: fd for p in _leftovers(target) if (fd := _lock(p)) is not None and fd >= 0}
    olds = [p for p in held if p.name.startswith(f".{target.name}.old-")]
    done, removed, stranded = [], [], []
    try:
        if olds and not os.path.lexists(target):
            back = max(olds, key=lambda p: ((p / WEIGHTS_FILE).is_file(), p.stat().st_ctime_ns))
            os.replace(back, target)
            done.append(f"restored the earlier adapter {target} from {back.name}")
            olds.remove(back)
            os.close(held.pop(back))
        for path in held:
            user = [p.name for p in path.iterdir() if p.name not in WRITTEN_FILES] if path in olds else []
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
    if not done:
        return None
    note = f"An earlier save of {target} was interrupted: {'; '.join(done)}."
    warnings.warn(note, stacklevel=2)
    return note


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve_adapter_dir(
    model_id: str | Path,
    *,
    intrinsic_name: str | None = None,
    base_model_name: str | None = None,
    revision: str | None = None,
) -> tuple[Path, str | None]:
    """A local adapter directory for a directory, a hub id (plain or intrinsics layout) or a snapshot;
    and, for the intrinsics layout, the intrinsic's name."""
    from validora.adapter import layouts

    local = Path(model_id).expanduser()
    text = str(model_id)
    if not local.exists() and local.parent.is_dir():
        recover(local)  # a save killed between its two renames left the adapter beside its name
    if local.is_dir():
        root = local
    elif text.startswith((".", "/", "~")) or text.count("/") != 1 or local.exists():
        raise AdapterError(f"Adapter directory not found: {model_id}")
    else:
        from validora.adapter.hub import download_adapter

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
        self.name = intrinsic_name or found_name or last_component(model_id)
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
