"""The adapter directory: PEFT weights + validora.json, written atomically, loaded back onto a base model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from validora.errors import AdapterError, HubError
from validora.prompting import PROMPT_FORMAT_VERSION, PromptFormat

FORMAT_VERSION = 1
INFO_FILE = "validora.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


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
        directory = Path(directory)
        path = directory / INFO_FILE
        if not directory.is_dir():
            raise AdapterError(f"Adapter directory not found: {directory}")
        if not path.is_file():
            raise AdapterError(f"{directory} is not a validora adapter: it has no {INFO_FILE}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            info = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError) as exc:
            raise AdapterError(f"{path} is unreadable: {exc}") from None
        if (
            info.format_version > FORMAT_VERSION
            or info.prompt.get("prompt_format_version", 1) > PROMPT_FORMAT_VERSION
        ):
            raise AdapterError(f"{directory} was written by a newer validora; upgrade validora to load it.")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise AdapterError(
                    f"{directory} is incomplete: {name} is missing (only safetensors weights load)."
                )
        return info


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


def is_replaceable(directory: Path) -> bool:
    """Only an empty directory or an earlier validora adapter may be replaced (with --overwrite)."""
    return not directory.exists() or (
        directory.is_dir() and (not any(directory.iterdir()) or (directory / INFO_FILE).is_file())
    )


def check_target(target: Path, *, overwrite: bool) -> None:
    """Fail before any work if `target` may not be written; called again just before the swap."""
    if target.exists() and not overwrite and not (target.is_dir() and not any(target.iterdir())):
        raise AdapterError(f"{target} already exists; pass --overwrite to replace it.")
    if not is_replaceable(target):
        raise AdapterError(
            f"{target} exists and is not a validora adapter directory; refusing to replace it. "
            "Choose another --outfile."
        )


@contextmanager
def staged_directory(target: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling to fill; rename it onto `target` only when the block completes.

    On any error or interrupt the temporary directory is removed and `target` is left as it was.
    """
    target = Path(target)
    check_target(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = private_tempdir(target, "partial")
    try:
        yield staging
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def private_tempdir(target: Path, kind: str) -> Path:
    """A sibling temporary directory with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)  # put the earlier adapter back
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def base_key(name: str) -> str:
    """Comparable form of a base-model name: last path component, lower case."""
    return Path(name.rstrip("/")).name.lower()


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
    if local.is_dir():
        root = local
    elif text.startswith((".", "/", "~")) or text.count("/") != 1 or local.exists():
        raise AdapterError(f"Adapter directory not found: {model_id}")
    else:
        from validora.hub import download_adapter

        try:
            root = download_adapter(text, revision=revision)
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
        self.name = intrinsic_name or found_name or base_key(model_id)
        self.base_model_name = base_model_name or self.info.base_model
        if base_key(self.base_model_name) != base_key(self.info.base_model):
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
