"""What a load checks in an adapter's PEFT files before they touch a model, and how they are attached.

adapter_config.json: its type (LoRA), every number (finite, in a sane range), its target modules (linear
layers of this base model) and, for an aLoRA, invocation tokens equal to validora.json's. The weights:
a whole safetensors file holding every LoRA tensor the config implies for this base model, with its
shape, as floating point, finite, and nothing else. PEFT only warns about missing or renamed keys and
then predicts with an untrained adapter; here each is an AdapterError naming the adapter and the keys.
The files come from a snapshot (snapshot.py): what is checked is what is attached.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from validora.adapter.schema import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo
from validora.core.jsonio import parse_json
from validora.errors import AdapterError

if TYPE_CHECKING:
    import torch

MAX_RANK = 4096
MAX_ALPHA = 1e5  # alpha / r scales every update: 1e30 turns each verdict into NaN
MIN_ALPHA = 1e-3  # and 1e-300 switches the adapter off: the base model's verdicts given as the adapter's
_SHOWN = 5
_REDO = "Train or import the adapter again."


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= high


def check_config(data: bytes, info: AdapterInfo, where: str) -> dict[str, Any]:
    """adapter_config.json's contents, checked against validora.json; `where` names the file in messages."""
    try:
        config = parse_json(data)
    except ValueError as exc:
        raise AdapterError(f"{where} is not valid JSON: {exc}. {_REDO}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{where} must hold a JSON object, not {type(config).__name__}. {_REDO}")

    def bad(field: str, expected: str) -> AdapterError:
        shown = repr(config.get(field, "(missing)"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return AdapterError(f"{where}: {field} must be {expected}, not {shown}. {_REDO}")

    if config.get("peft_type") != "LORA":
        raise bad("peft_type", '"LORA" (validora loads LoRA and aLoRA adapters only)')
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise bad("task_type", '"CAUSAL_LM"')
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(key, "a finite number")
    targets = config.get("target_modules")
    checks = [
        ("r", _count(config.get("r"), MAX_RANK), f"a whole number from 1 to {MAX_RANK}"),
        ("lora_alpha", _number(config.get("lora_alpha")) and MIN_ALPHA <= config["lora_alpha"] <= MAX_ALPHA,
         f"a number from {MIN_ALPHA:g} to {MAX_ALPHA:g}"),
        ("lora_dropout", _number(config.get("lora_dropout", 0.0)) and 0 <= config.get("lora_dropout", 0.0) < 1,
         "a number in [0, 1)"),
        ("target_modules", (isinstance(targets, str) and bool(targets)) or (
            isinstance(targets, list) and bool(targets) and all(isinstance(t, str) and t for t in targets)),
         "a non-empty list of module names"),
        ("layers_to_transform", config.get("layers_to_transform") is None or _layers(config["layers_to_transform"]),
         "null or a list of layer numbers"),
        ("rank_pattern", not config.get("rank_pattern"), "empty (validora loads one rank for every layer)"),
        ("alpha_pattern", not config.get("alpha_pattern"), "empty (validora loads one alpha for every layer)"),
        ("fan_in_fan_out", not config.get("fan_in_fan_out"), "false"),
        ("use_rslora", isinstance(config.get("use_rslora", False), bool), "true or false"),
        ("use_dora", isinstance(config.get("use_dora", False), bool), "true or false"),
        ("bias", config.get("bias", "none") in ("none", "all", "lora_only"), '"none", "all" or "lora_only"'),
    ]  # fmt: skip
    for field, ok, expected in checks:
        if not ok:
            raise bad(field, expected)
    tokens = config.get("alora_invocation_tokens")
    ids = info.prompt.get("invocation_ids")
    if info.is_alora and tokens != ids:
        why = "has none" if not tokens else f"has {_short(tokens)}"
        raise AdapterError(
            f"{where} does not match validora.json: validora.json describes an aLoRA whose invocation tokens "
            f"are {_short(ids)}, but adapter_config.json's alora_invocation_tokens {why}. The two files "
            f"come from different adapters or one was edited. {_REDO}"
        )
    if not info.is_alora and tokens:
        raise AdapterError(
            f"{where} does not match validora.json: validora.json describes a plain LoRA, but "
            f"adapter_config.json has alora_invocation_tokens {_short(tokens)} (an aLoRA). {_REDO}"
        )
    return config


def _layers(v: Any) -> bool:
    if isinstance(v, int) and not isinstance(v, bool):
        return v >= 0
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


def _short(items: Any) -> str:
    text = repr(items)
    return text if len(text) <= 60 else text[:57] + "..."


def expected_shapes(model: Any, config: dict[str, Any], adapter: str) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies on this base model (as PEFT saves them) and its shape.

    `model` may be a plain base model or a PeftModel already holding other adapters."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = config["target_modules"]
    layers = config.get("layers_to_transform")
    layers = {layers} if isinstance(layers, int) else set(layers) if layers is not None else None
    r = int(config["r"])
    shapes: dict[str, tuple[int, ...]] = {}
    matched: set[str] = set()
    for name, module in base.named_modules():
        if not name or name.endswith(".base_layer"):
            continue
        last = name.rsplit(".", 1)[-1]
        if isinstance(targets, str):
            if not re.fullmatch(targets, name):
                continue
        elif last not in targets:
            continue
        linear = getattr(module, "base_layer", module)
        if not isinstance(linear, torch.nn.Linear):
            continue
        if layers is not None:
            numbers = re.findall(r"\.(\d+)\.", f".{name}.")
            if not numbers or int(numbers[0]) not in layers:
                continue
        matched.add(last)
        key = f"base_model.model.{name}"
        shapes[f"{key}.lora_A.weight"] = (r, linear.in_features)
        shapes[f"{key}.lora_B.weight"] = (linear.out_features, r)
        if config.get("use_dora"):
            shapes[f"{key}.lora_magnitude_vector"] = (linear.out_features,)
    unknown = [t for t in targets if t not in matched] if isinstance(targets, list) else []
    if unknown or not shapes:
        linear = {n.rsplit(".", 1)[-1] for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
        raise AdapterError(
            f"Adapter {adapter!r}: its target modules {', '.join(unknown) or targets!s} are not linear layers "
            f"of this base model (its linear layers: {', '.join(sorted(linear - {'lm_head'}))}). The adapter "
            "was trained on another architecture: load it onto its own base model."
        )
    return shapes


def check_weights(
    data: bytes, config: dict[str, Any], model: Any, adapter: str, where: str
) -> dict[str, torch.Tensor]:
    """The weights file's tensors, checked against what the config implies on `model`."""
    import torch
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError/ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AdapterError(
            f"{where} is not a whole safetensors file (truncated or damaged: {first}). {_REDO}"
        ) from None
    shapes = expected_shapes(model, config, adapter)
    allowed_extra = _allowed_extra(config)
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(k for k in set(tensors) - set(shapes) if not allowed_extra(k))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected tensors are missing ({_few(missing)})")
        if extra:
            parts.append(f"{len(extra)} tensors are not this adapter's ({_few(extra)})")
        cause = "it holds no tensors" if not tensors else "and ".join(parts)
        raise AdapterError(
            f"Adapter {adapter!r}: {where} does not hold the weights its config implies for this base model: "
            f"{cause}. A renamed, emptied or foreign weights file would predict with an untrained adapter. "
            f"{_REDO}"
        )
    saved = [m for m in config.get("modules_to_save") or [] if isinstance(m, str)]
    if unsaved := [m for m in saved if not any(m in key.split(".") for key in tensors)]:
        raise AdapterError(
            f"Adapter {adapter!r}: its config lists modules_to_save {unsaved}, but {where} holds no weights "
            f"for them. {_REDO}"
        )
    for key, tensor in tensors.items():
        if key in shapes and tuple(tensor.shape) != shapes[key]:
            raise AdapterError(
                f"Adapter {adapter!r}: {where}: tensor {key} has shape {tuple(tensor.shape)}, not "
                f"{shapes[key]} (r={config['r']} on this base model). {_REDO}"
            )
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise AdapterError(
                f"Adapter {adapter!r}: {where}: tensor {key} is {tensor.dtype}, not floating point. {_REDO}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterError(
                f"Adapter {adapter!r}: {where}: tensor {key} holds NaN or infinite values, so every verdict "
                f"would be NaN. {_REDO}"
            )
    return tensors


def _allowed_extra(config: dict[str, Any]) -> Any:
    """Keys PEFT saves for features beyond plain LoRA that an imported adapter may use."""
    saved = [m for m in config.get("modules_to_save") or [] if isinstance(m, str)]
    bias = config.get("bias", "none") != "none"

    def allowed(key: str) -> bool:
        parts = key.split(".")
        return any(m in parts for m in saved) or (bias and key.endswith(".bias"))

    return allowed


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def check_base_weights(info: AdapterInfo, model: Any, adapter: str, *, allow_base_mismatch: bool) -> None:
    """Refuse a base model whose weights differ from those the adapter was trained on (validora.json's
    base_fingerprint); `allow_base_mismatch` turns the refusal into a warning. Adapters without a
    fingerprint are checked by name only, by the caller."""
    import warnings

    from validora.core.models import fingerprint_mismatch

    recorded = info.base_fingerprint
    if recorded is None:
        return
    try:
        why = fingerprint_mismatch(recorded, model)
    except Exception as exc:  # an edited fingerprint the schema let through: never a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AdapterError(
            f"Adapter {adapter!r}: validora.json's base_fingerprint is malformed ({first}), so the base "
            f"model's weights cannot be checked. {_REDO}"
        ) from None
    if why is None:
        return
    text = (
        f"Adapter {adapter!r} was trained on other base-model weights than the model it is loaded onto "
        f"({why}), although it was trained on {info.base_model!r}. Its verdicts are not the trained ones."
    )
    if allow_base_mismatch:
        warnings.warn(text + " Loading anyway (allow_base_mismatch=True).", stacklevel=3)
        return
    raise AdapterError(
        text + " Load it onto the base model it was trained on, or pass allow_base_mismatch=True to load "
        "it anyway."
    )


def attach_files(
    model: Any, files: Mapping[str, bytes], config: dict[str, Any], name: str, where: str = ""
) -> Any:
    """Attach checked PEFT files (from a snapshot) to `model` (a base model or a PeftModel) as `name`.

    They are written to a private temporary directory and loaded by PEFT's own loader, so a LoRA or
    aLoRA behaves exactly as one loaded from its directory (aLoRA offsets live in the PeftModel). The
    config is written as checked: an encoding the check accepted (a BOM) cannot trip PEFT's reader."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="validora-adapter-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
        (Path(tmp) / WEIGHTS_FILE).write_bytes(files[WEIGHTS_FILE])
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(tmp, adapter_name=name, is_trainable=False, use_safetensors=True)
                return model
            return PeftModel.from_pretrained(
                model, tmp, adapter_name=name, is_trainable=False, use_safetensors=True
            )
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # what the checks did not foresee
            raise AdapterError(
                f"Adapter {name!r} ({where or 'read into memory'}): PEFT could not load its weights "
                f"({exc!r}). {_REDO}"
            ) from None
