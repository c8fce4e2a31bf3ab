"""The adapter directory's format: its file names, validora.json (`AdapterInfo`) and every check a load makes.

An adapter directory holds the PEFT files (adapter_config.json, adapter_model.safetensors) and
validora.json; saving.py writes one atomically, loading.py opens one. Reading never writes: what an
interrupted save left beside a directory is only reported here, and recovered by the next save.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from validora.adapter.dirread import read_files
from validora.core import files
from validora.core.calibration import STORED_T_RANGE  # a stored temperature outside it is corruption
from validora.core.jsonio import parse_json
from validora.core.prompting import DEFAULT_MAX_LENGTH, PROMPT_FORMAT_VERSION
from validora.errors import AdapterError

FORMAT_VERSION = 1
INFO_FILE = "validora.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEXICAL_FILE = "lexical.safetensors"
CONFIG_FILE = "adapter_config.json"
REQUIRED_FILES = (INFO_FILE, CONFIG_FILE, WEIGHTS_FILE)
SNAPSHOT_FILES = (*REQUIRED_FILES, LEXICAL_FILE)  # what a load reads, once
# Everything Trainer.save writes; any other file in an adapter directory is the user's and is kept.
RELIABILITY_FILE = "reliability_diagram.png"
WRITTEN_FILES = {
    *REQUIRED_FILES, "metrics.json", "training_curves.png", "confusion_matrix.png", RELIABILITY_FILE, "README.md",
    LEXICAL_FILE,
}  # fmt: skip
ADAPTER_TYPES = ("alora", "lora")


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
    # The base model's weights at training (core/models.weights_fingerprint); None: files written before
    # it existed or imported from PEFT, which are checked by the base model's name alone.
    base_fingerprint: dict[str, Any] | None = None
    # sha256 of the weights and the lexical file as saved (`file_hashes`): a byte changed later that keeps
    # every number finite is caught at load (snapshot.check_hashes). None: files written before it existed.
    file_sha256: dict[str, str] | None = None
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
        """Read and check validora.json; a malformed one (a hub repository may hold any) is an AdapterError.

        A load that also needs the weights reads `snapshot.read_snapshot` instead: one read of all files."""
        directory = Path(directory)
        if not directory.exists() and (note := pending_recovery(directory)):
            warnings.warn(note, stacklevel=2)  # a save killed between its two renames
        return cls.read_files(directory)[1]

    @classmethod
    def read_files(cls, directory: Path) -> tuple[dict[str, bytes], AdapterInfo]:
        """Every file of the adapter, read once from one directory (dirread.py), and its checked info."""
        files = read_files(directory, SNAPSHOT_FILES, optional=frozenset({LEXICAL_FILE}))
        info = cls.from_bytes(files[INFO_FILE], directory / INFO_FILE, directory)
        if info.lexical is not None and LEXICAL_FILE not in files:
            raise AdapterError(
                f"{directory} is incomplete: {LEXICAL_FILE} is missing, but validora.json describes a lexical "
                "model mixed into its probabilities. Train or import the adapter again."
            )
        return files, info

    @classmethod
    def from_bytes(cls, data: bytes, path: Path, directory: Path) -> AdapterInfo:
        """validora.json's contents, checked (`path` and `directory` name it in messages)."""
        try:
            value = parse_json(data)
        except ValueError as exc:
            raise AdapterError(f"{path} is unreadable: {exc}. Train or import the adapter again.") from None
        _check_info(value, path, directory)
        info = cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})
        info.temperature = float(info.temperature)
        return info


def _int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(map(_int, v))


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def sane_temperature(v: Any) -> bool:
    """A finite number within STORED_T_RANGE (1e-300 or 1e300 would turn every verdict into NaN or 1/K)."""
    return _number(v) and STORED_T_RANGE[0] <= v <= STORED_T_RANGE[1]


def valid_description(v: Any) -> bool:
    """Whether validora.json's "lexical" is null or what `Readout.describe` writes (the parts it reads)."""
    if v is None:
        return True
    weight = v.get("weight") if isinstance(v, dict) else None
    temperature = v.get("mixture_temperature") if isinstance(v, dict) else None
    return _number(weight) and 0 <= weight < 1 and sane_temperature(temperature)


HASHED_FILES = (WEIGHTS_FILE, LEXICAL_FILE)


def file_hashes(directory: Path) -> dict[str, str]:
    """validora.json's "file_sha256" for the files of HASHED_FILES that `directory` holds."""
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in HASHED_FILES
        if (directory / name).is_file()
    }


def valid_hashes(v: Any) -> bool:
    """Whether "file_sha256" is null or what `file_hashes` writes."""
    hexes = (
        isinstance(v, dict) and set(v) <= set(HASHED_FILES) and all(isinstance(h, str) for h in v.values())
    )
    return v is None or (
        hexes and all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in v.values())
    )


def valid_fingerprint(v: Any) -> bool:
    """Whether "base_fingerprint" is null or what core/models.weights_fingerprint writes."""
    if v is None:
        return True
    if not (isinstance(v, dict) and _int(v.get("version"), 1) and _text(v.get("dtype"))):
        return False
    tensors = v.get("tensors")
    return isinstance(tensors, list) and bool(tensors) and all(
        isinstance(t, dict) and _text(t.get("name")) and isinstance(t.get("shape"), list)
        and all(_int(n) for n in t["shape"]) and _int(t.get("stride"), 1)
        and isinstance(t.get("sha256"), str) and len(t["sha256"]) == 64
        and isinstance(t.get("values"), list) and all(map(_number, t["values"]))
        for t in tensors
    )  # fmt: skip


def _non_finite(value: Any, prefix: str = "") -> str | None:
    """The dotted name of the first NaN or infinite number anywhere in `value` (json reads NaN, Infinity)."""
    stack = [(prefix, value)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return name
        if isinstance(item, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(item))
    return None


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
        ("prompt.max_length", _int(prompt.get("max_length", DEFAULT_MAX_LENGTH), 1), "a positive integer"),
        ("prompt.eos_id", prompt.get("eos_id") is None or _int(prompt.get("eos_id")), "a token id"),
        ("training", isinstance(data.get("training", {}), dict), "an object"),
        ("metrics", isinstance(data.get("metrics", {}), dict), "an object"),
        ("requirements", isinstance(data.get("requirements", False), bool), "true or false"),
        ("temperature", sane_temperature(data.get("temperature", 1.0)),
         f"a finite number above 0 (from {STORED_T_RANGE[0]} to {STORED_T_RANGE[1]:g})"),
        ("validora_version", isinstance(data.get("validora_version", ""), str), "a string"),
        ("lexical", valid_description(data.get("lexical")), 'null or an object with "weight" in [0, 1) and '
         f'"mixture_temperature" from {STORED_T_RANGE[0]} to {STORED_T_RANGE[1]:g}'),
        ("base_fingerprint", valid_fingerprint(data.get("base_fingerprint")), "null or the fingerprint validora writes"),
        ("file_sha256", valid_hashes(data.get("file_sha256")), "null or the sha256 of each saved file"),
    ]  # fmt: skip
    for name, ok, expected in checks:
        if not ok:
            raise bad(name, expected)
    if (where := _non_finite(data)) is not None:
        raise AdapterError(
            f"{path}: field {where!r} is not a finite number (NaN or infinity): the file is damaged. "
            "Train or import the adapter again."
        )


def pending_recovery(target: Path) -> str | None:
    """What an interrupted save left beside a missing `target`, said without touching it (reads never
    write): the next save to `target` recovers it (saving.recover); None if nothing was left."""
    found = []
    for path in files.leftovers(target):
        lock = files.try_lock(path)
        files.release(lock)
        if lock is not None:  # a live writer's siblings are its own
            found.append(path)
    olds = [p for p in found if p.name.startswith(f".{target.name}.old-")]
    if olds:
        back = max(olds, key=lambda p: ((p / WEIGHTS_FILE).is_file(), p.stat().st_ctime_ns))
        return (
            f"An earlier save of {target} was interrupted: the earlier adapter is in {back.name} beside it. "
            f"The next save to {target} (training or importing into it) puts it back; or rename it yourself: "
            f"mv {back} {target}"
        )
    if found:
        return (
            f"An earlier save of {target} was interrupted and left {', '.join(p.name for p in found)} "
            f"beside it; the next save to {target} (training or importing into it) removes them."
        )
    return None
