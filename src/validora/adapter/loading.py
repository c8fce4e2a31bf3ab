"""Opening an adapter: a local directory, a hub id or a snapshot becomes a checked `CustomIntrinsicAdapter`,
whose weights `attach` loads onto a base model and whose prompt format `prompt_format` rebuilds.

Only reads: a directory an interrupted save left beside its name is reported (a warning), not moved.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from validora.adapter.schema import INFO_FILE, AdapterInfo, pending_recovery
from validora.core.names import is_path_form, last_component, same_base_model
from validora.core.prompting import DEFAULT_MAX_LENGTH, PromptFormat
from validora.errors import AdapterError, HubError


def prompt_format(info: AdapterInfo, tokenizer: Any) -> PromptFormat:
    """Rebuild the training-time prompt format, refusing a tokenizer that encodes it differently."""
    length = int(info.prompt.get("max_length", DEFAULT_MAX_LENGTH))
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
    if not local.exists() and local.parent.is_dir() and (note := pending_recovery(local)):
        warnings.warn(note, stacklevel=2)  # a save killed between its two renames
    if local.is_dir():
        root = local
    elif is_path_form(text) or "/" not in text or local.exists():  # hub adapters have an owner: org/name
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
