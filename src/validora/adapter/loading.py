"""Opening an adapter: a local directory, a hub id or a snapshot becomes a checked `CustomIntrinsicAdapter`,
whose weights `attach` loads onto a base model and whose prompt format `prompt_format` rebuilds.

Only reads: a directory an interrupted save left beside its name is reported (a warning), not moved.
An adapter is read once, whole (snapshot.py): what is checked, attached and scored is one adapter even
while `train --overwrite` replaces its directory; its PEFT files are checked against the base model
(integrity.py) before they touch it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from validora.adapter.integrity import attach_files, check_config, check_weights
from validora.adapter.schema import CONFIG_FILE, INFO_FILE, WEIGHTS_FILE, AdapterInfo, pending_recovery
from validora.adapter.snapshot import AdapterSnapshot, check_hashes, read_snapshot
from validora.core.names import is_path_form, last_component, same_base_model
from validora.core.prompting import DEFAULT_MAX_LENGTH, PromptFormat
from validora.errors import AdapterError, HubError


def prompt_format(info: AdapterInfo, tokenizer: Any) -> PromptFormat:
    """Rebuild the training-time prompt format, refusing a tokenizer that encodes it differently."""
    length = int(info.prompt.get("max_length", DEFAULT_MAX_LENGTH))
    fmt = PromptFormat(tokenizer, info.labels, invocation_prompt=info.invocation_prompt, max_length=length)
    fmt.check_matches(info.prompt)
    return fmt


def checked_config(snapshot: AdapterSnapshot) -> dict:
    """The snapshot's adapter_config.json, checked against its validora.json (no model needed)."""
    return check_config(snapshot.files[CONFIG_FILE], snapshot.info, str(snapshot.path / CONFIG_FILE))


def attach(model: Any, adapter: AdapterSnapshot | str | Path, name: str) -> Any:
    """Load the adapter's weights onto `model` (a base model or an existing PeftModel) as `name`.

    `adapter` is a snapshot (read_snapshot) or a directory, read whole here. Its config and weights are
    checked against `model` first: a missing, renamed, misshapen or non-finite tensor is an AdapterError."""
    snapshot = adapter if isinstance(adapter, AdapterSnapshot) else read_snapshot(adapter)
    config = checked_config(snapshot)
    where = str(snapshot.path / WEIGHTS_FILE)
    check_weights(snapshot.files[WEIGHTS_FILE], config, model, name_of(snapshot, name), where)
    check_hashes(snapshot)  # last: the checks above say more precisely what is wrong
    return attach_files(model, snapshot.files, config, name, str(snapshot.path))


def name_of(snapshot: AdapterSnapshot, name: str) -> str:
    """How messages name an adapter: its name in a backend; load_validator's internal one by its folder."""
    return snapshot.path.name if name == "validator" else name


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
    if root is local and not layouts.candidates(root) and not os.path.lexists(root / INFO_FILE):
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
        allow_base_mismatch: bool = False,
    ):
        """`allow_base_mismatch`: load onto a base model whose weights differ from those the adapter was
        trained on (validora.json's base_fingerprint), with a warning instead of an AdapterError."""
        self.model_id = model_id
        self.allow_base_mismatch = allow_base_mismatch
        self.path, found_name = resolve_adapter_dir(
            model_id, intrinsic_name=intrinsic_name, base_model_name=base_model_name, revision=revision
        )
        self.snapshot = read_snapshot(self.path)  # every file once: what is added is this one adapter
        self.info = self.snapshot.info
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
