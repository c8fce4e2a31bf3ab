"""Adapter directory → llama.cpp LoRA adapter GGUF, so that `llama-server --lora FILE` serves it.

The file is what llama.cpp's own `convert_lora_to_gguf.py` writes for the same adapter (a test compares
them tensor by tensor and key by key): `blk.N.attn_q.weight.lora_a` (rank × in) and `.lora_b`
(out × rank) in float32, the rows of q/k `lora_b` permuted into llama.cpp's RoPE layout as the
converter does for Llama-family models, `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, and for aLoRA `adapter.alora.invocation_tokens`. The converter itself needs the
llama.cpp tree and the base model's config; this needs only the `gguf` package.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from validora.adapter.loading import resolve_adapter_dir
from validora.adapter.saving import _pause_for_tests, recover
from validora.adapter.schema import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo
from validora.core import files
from validora.core.jsonio import parse_json
from validora.core.models import BaseModelSpec, resolve_base_model
from validora.core.targets import DECODER_PROJECTIONS
from validora.errors import AdapterError, ConfigError, ModelError
from validora.llamacpp.server import served_invocation, served_name

# HF architecture → (llama.cpp architecture, q/k rows permuted like the converter's `undo_permute`).
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "GraniteForCausalLM": ("granite", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}
PERMUTED = {arch: permute for arch, permute in ARCHITECTURES.values()}  # by a GGUF's general.architecture


@dataclass(frozen=True)
class BaseShape:
    """What the export needs to know about the base model: its llama.cpp architecture and head counts."""

    arch: str
    permute: bool
    n_layers: int
    n_head: int
    n_kv_head: int
    gguf: Path | None  # the base model as llama-server loads it, when it is already a GGUF file
    tensors: dict[str, tuple[int, ...]] | None = None  # GGUF tensor name → shape (ne0, ne1), to check against


def base_shape(spec: BaseModelSpec) -> BaseShape:
    """Read the architecture from the base GGUF's metadata or the model directory's config.json."""
    if spec.kind in ("embedded", "gguf"):
        from gguf import GGUFReader

        reader = GGUFReader(spec.location)

        def value(key: str) -> Any:
            field = reader.fields.get(key)
            if field is None:
                raise ModelError(
                    f"{spec.location} has no {key!r} in its metadata; it is not a usable base model."
                )
            return field.contents()

        arch = value("general.architecture")
        if arch not in PERMUTED:
            raise ConfigError(_unsupported(f"llama.cpp architecture {arch!r}", sorted(PERMUTED)))
        n_head = int(value(f"{arch}.attention.head_count"))
        return BaseShape(
            arch, PERMUTED[arch], int(value(f"{arch}.block_count")), n_head,
            int(reader.fields[f"{arch}.attention.head_count_kv"].contents())
            if f"{arch}.attention.head_count_kv" in reader.fields else n_head,
            Path(spec.location), {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors},
        )  # fmt: skip
    config = _config(spec)
    name = (config.get("architectures") or ["?"])[0]
    if name not in ARCHITECTURES:
        raise ConfigError(_unsupported(f"base architecture {name!r}", sorted(ARCHITECTURES)))
    arch, permute = ARCHITECTURES[name]
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    return BaseShape(arch, permute, int(config["num_hidden_layers"]), n_head, n_kv, None)


def _unsupported(what: str, known: list[str]) -> str:
    return f"Cannot export for {what}: llama.cpp adapters are written here only for {', '.join(known)}."


def _config(spec: BaseModelSpec) -> dict[str, Any]:
    if spec.kind == "dir":
        path: Path | None = Path(spec.location) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.location, "config.json")
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.is_file():
        raise ModelError(
            f"The config of base model {spec.name!r} is not available locally; download the model first "
            "(`hf download` or a first `m alora predict`) or pass its directory as basemodel."
        )
    try:
        config = parse_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelError(f"The config of base model {spec.name!r} ({path}) is unreadable: {exc}.") from None
    if not isinstance(config, dict):
        raise ModelError(f"The config of base model {spec.name!r} ({path}) must hold a JSON object.")
    return config


def conversion_hint(spec: BaseModelSpec) -> str | None:
    """The llama.cpp command that makes a GGUF of a base model that is not one already (None if it is)."""
    if spec.kind in ("embedded", "gguf"):
        return None
    source = spec.location if spec.kind == "dir" else f"$(hf download {spec.location})"
    return f"python llama.cpp/convert_hf_to_gguf.py {source} --outtype f16 --outfile base.gguf"


def _lora_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        config = parse_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is unreadable: {exc}. Restore it from the training run.") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path} must hold a JSON object. Restore it from the training run.")
    if not isinstance(config.get("lora_alpha"), int | float) or isinstance(config["lora_alpha"], bool):
        raise AdapterError(f"{path}: lora_alpha must be a number, not {config.get('lora_alpha')!r}.")
    return config


def _check_links(directory: Path) -> None:
    """Refuse links out of the adapter directory (those of a Hugging Face cache snapshot to its blobs
    aside): the export would read what the user never put in the adapter."""
    parts = directory.resolve().parts
    cached = "snapshots" in parts and parts[parts.index("snapshots") - 1].startswith("models--")
    allowed = Path(*parts[: parts.index("snapshots")]) if cached else None
    if links := files.links_leaving(directory, allowed=allowed):
        raise AdapterError(
            f"{directory} holds symbolic links to files outside it:\n  " + "\n  ".join(links) + "\nvalidora "
            "does not export through them. Replace each with a copy of the file if it belongs in the adapter."
        )


def _metadata(gguf: Any, directory: Path, total_params: int) -> Any:
    """gguf's metadata heuristics (what the converter records: name, tags, ... from README.md and
    config.json), on files checked first: a broken or hostile card is skipped with a warning, not a crash."""
    from validora.adapter.card import front_matter

    problem = None
    try:
        card = directory / "README.md"
        if card.is_file():
            front_matter(card.read_text(encoding="utf-8"), f"{card} (front matter)")
        for name in ("config.json", "generation_config.json"):
            if (directory / name).is_file():
                parse_json((directory / name).read_bytes())
    except (ConfigError, OSError, ValueError) as exc:
        problem = str(exc)
    if problem is None:
        try:
            return gguf.Metadata.load(None, directory, None, total_params)
        except Exception as exc:  # gguf's heuristics on the user's card: any type may fail
            problem = f"gguf could not read its metadata: {type(exc).__name__}: {exc}"
    warnings.warn(
        f"{directory}: {problem}. The GGUF is written without the card's metadata (name, tags, license).",
        stacklevel=3,
    )
    return gguf.Metadata.load(None, None, None, total_params)


def _check_expressible(config: dict[str, Any], info: AdapterInfo, directory: Path) -> list[int] | None:
    """Refuse what a llama.cpp LoRA adapter cannot hold; return the aLoRA invocation tokens."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{directory} is a {config.get('peft_type')} adapter; llama.cpp serves LoRA only.")
    refusals = [
        (config.get("use_dora"), "DoRA (use_dora)"),
        (config.get("modules_to_save"), "fully trained modules (modules_to_save)"),
        (config.get("bias", "none") != "none" or config.get("lora_bias"), "trained biases (bias/lora_bias)"),
        (config.get("fan_in_fan_out"), "transposed Conv1D weights (fan_in_fan_out)"),
        (config.get("alpha_pattern"), "per-module alphas (alpha_pattern)"),
        (config.get("use_rslora"), "rank-stabilised scaling (use_rslora)"),
        (config.get("trainable_token_indices"), "trained token embeddings (trainable_token_indices)"),
    ]
    for present, what in refusals:
        if present:
            raise ConfigError(f"{directory} uses {what}, which a llama.cpp LoRA adapter cannot express.")
    tokens = config.get("alora_invocation_tokens")
    if info.is_alora and tokens != info.prompt["invocation_ids"]:
        raise AdapterError(
            f"{directory}: adapter_config.json's alora_invocation_tokens {tokens} differ from the "
            f"invocation ids in validora.json {info.prompt['invocation_ids']}; the adapter is inconsistent."
        )
    if not info.is_alora and tokens:
        raise AdapterError(
            f"{directory} is a LoRA adapter in validora.json but aLoRA in adapter_config.json."
        )
    return list(tokens) if info.is_alora else None


def _pairs(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """PEFT tensors grouped by the base weight they adapt, in the file's key order (as the converter)."""
    from safetensors import safe_open

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterError(f"{directory} has no {WEIGHTS_FILE} (or it is not a regular file).")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                base = key.replace("base_model.model.", "", 1)
                for part in ("A", "B"):
                    if base.endswith(f".lora_{part}.weight"):
                        weight = base.removesuffix(f".lora_{part}.weight") + ".weight"
                        tensor = f.get_tensor(key).float().numpy()
                        pairs.setdefault(weight, {})[part] = np.ascontiguousarray(tensor)
                        break
                else:
                    raise ConfigError(
                        f"{path} holds {key}, which is not a LoRA A/B matrix; "
                        "a llama.cpp LoRA adapter cannot express it."
                    )
    except ConfigError:
        raise
    except Exception as exc:  # safetensors and torch raise their own error types
        raise AdapterError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); it is truncated or "
            "not the adapter's weights. Restore it from the training run."
        ) from None
    if not pairs:
        raise AdapterError(f"{path} holds no LoRA weights (no lora_A/lora_B tensors).")
    for weight, pair in pairs.items():
        if any(t.ndim != 2 for t in pair.values()):
            shapes = {k: tuple(t.shape) for k, t in pair.items()}
            raise AdapterError(f"{path}: the LoRA matrices of {weight} are not 2-D: {shapes}.")
    return pairs


def _permute(b: np.ndarray, heads: int) -> np.ndarray:
    """The converter's LlamaModel.permute applied to lora_b's rows (HF rotary halves → interleaved pairs)."""
    out, rank = b.shape
    return np.ascontiguousarray(
        b.reshape(heads, 2, out // heads // 2, rank).swapaxes(1, 2).reshape(out, rank)
    )


def _tensors(directory: Path, shape: BaseShape) -> list[tuple[str, np.ndarray]]:
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == shape.arch)
    names = gguf.get_tensor_name_map(arch, shape.n_layers)
    found: list[tuple[str, np.ndarray]] = []
    for weight, pair in _pairs(directory).items():
        module = weight.split(".")[-2]
        name = names.get_name(weight, try_suffixes=(".weight",))
        if name is None or module not in DECODER_PROJECTIONS:
            raise ConfigError(
                f"{directory} adapts {weight}; llama.cpp adapters are exported here only for the "
                f"linear layers {', '.join(DECODER_PROJECTIONS)} of the decoder blocks."
            )
        if set(pair) != {"A", "B"}:
            raise AdapterError(
                f"{directory / WEIGHTS_FILE} lacks lora_{'B' if 'A' in pair else 'A'} for {weight}."
            )
        a, b = pair["A"], pair["B"]
        if shape.permute and module in ("q_proj", "k_proj"):
            b = _permute(b, shape.n_head if module == "q_proj" else shape.n_kv_head)
        if shape.tensors is not None:
            want = shape.tensors.get(name)
            if want is None or want[:2] != (a.shape[1], b.shape[0]) or a.shape[0] != b.shape[1]:
                raise AdapterError(
                    f"{weight}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the base "
                    f"tensor {name} {want} of {shape.gguf}; the adapter was trained on another model."
                )
        found += [(name + ".lora_a", a), (name + ".lora_b", b)]
    return found


def export_gguf(
    adapter_dir: str | Path,
    outfile: str | Path,
    *,
    basemodel: str | None = None,
    overwrite: bool = False,
    same_as_converter: bool = False,
) -> Path:
    """Write the adapter at `adapter_dir` (a directory or hub id) as a llama.cpp LoRA adapter GGUF at
    `outfile`; return its path. The file appears complete or not at all.

    `basemodel` overrides the base model recorded in validora.json (its architecture and head counts
    decide tensor names and the q/k permutation). By default the file is written for llama-server:
    the invocation is `served_invocation(info)` (without its first token, so the server starts the
    adapter where training did); and `adapter.lora.task_name` carries `served_name(directory)`,
    by which `LlamaCppBackend` finds the very adapter among those a server lists. `same_as_converter`
    writes instead the bytes llama.cpp's own convert_lora_to_gguf.py writes (unshifted, no task name).
    """
    import gguf

    directory, _ = resolve_adapter_dir(adapter_dir)
    _check_links(directory)
    info = AdapterInfo.read(directory)
    config = _lora_config(directory)
    tokens = _check_expressible(config, info, directory)
    if not same_as_converter and tokens is not None:
        if len(tokens) < 2:
            raise ConfigError(
                f"{directory}: a one-token invocation cannot be shifted for llama-server; export it "
                "with same_as_converter (the server then starts the adapter one token early).",
                option="same_as_converter",
            )
        tokens = served_invocation(info)
    out = _check_outfile(Path(outfile), overwrite=overwrite)
    shape = base_shape(resolve_base_model(basemodel or info.base_model))
    tensors = _tensors(directory, shape)

    writer = gguf.GGUFWriter(path=None, arch=shape.arch)
    for name, data in tensors:
        writer.add_tensor(name, data)
    total_params = writer.get_total_parameter_count()[0]
    metadata = _metadata(gguf, directory, total_params)
    if metadata.name is None:  # the converter falls back to the base model directory's name
        metadata.name = Path(shape.gguf or basemodel or info.base_model).name
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    metadata.set_gguf_meta_model(writer)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    if not same_as_converter:
        writer.add_string(gguf.Keys.Adapter.LORA_TASK_NAME, served_name(directory))
    if tokens:
        writer.add_key_value(
            gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS,
            tokens,
            gguf.GGUFValueType.ARRAY,
            gguf.GGUFValueType.UINT32,
        )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_atomically(writer, out)
    return out


def _check_outfile(out: Path, *, overwrite: bool) -> Path:
    """Refuse before any work: an existing file without `overwrite`, a directory, a non-.gguf name."""
    if out.suffix.lower() != ".gguf":
        raise ConfigError(f"outfile {out} must end in .gguf.", option="outfile")
    recover(out)  # what a killed export left beside it
    if out.is_dir():
        raise ConfigError(
            f"outfile {out} is a directory; give a file name ending in .gguf.", option="outfile"
        )
    if os.path.lexists(out) and not overwrite:
        raise AdapterError(f"overwrite is needed to replace {out}: it already exists.", option="overwrite")
    return out


def _write_atomically(writer: Any, out: Path) -> None:
    """Fill a file in a hidden sibling directory, then rename it over `out` (an earlier file stays whole
    until then); the directory is flock-ed so a concurrent export's recover() leaves it alone."""
    try:
        with files.staging_directory(out) as staging:
            tmp = staging / out.name
            try:
                writer.write_header_to_file(path=tmp)
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file(progress=False)
                writer.close()
                _pause_for_tests("staged")
            except OSError as exc:
                kept = "The earlier file there is kept." if out.exists() else "Nothing was written."
                raise AdapterError(f"Could not write {out}: {exc}. {kept}") from exc
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def serve_hint(adapter_dir: str | Path, outfile: str | Path, *, basemodel: str | None = None) -> str:
    """How to serve the exported file: the llama-server command, or first the base model's conversion."""
    directory, _ = resolve_adapter_dir(adapter_dir)
    spec = resolve_base_model(basemodel or AdapterInfo.read(directory).base_model)
    if hint := conversion_hint(spec):
        return f"The base model is not a GGUF file; make one with llama.cpp first:\n  {hint}\n" + (
            f"then: llama-server -m base.gguf --lora {outfile} --lora-init-without-apply"
        )
    return f"Serve it with: llama-server -m {spec.location} --lora {outfile} --lora-init-without-apply"
