"""Adapters trained elsewhere: a PEFT LoRA/aLoRA directory without validora.json becomes a validora adapter.

Nothing about the weights changes. The import reads `adapter_config.json` (base model, aLoRA invocation
tokens), takes the labels from the caller or from an intrinsics folder's `io.yaml`, proves that the
base model's tokenizer encodes the invocation prompt to exactly the stored invocation tokens, and writes
`validora.json` through the same staged, atomic writer as training: in place (every file of the
directory kept) or into a new directory. Labels are scored as validora's own PromptFormat scores them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from validora.adapter.layouts import KINDS, is_adapter_file
from validora.adapter.saving import check_target, recover, staged_directory
from validora.adapter.schema import CONFIG_FILE, INFO_FILE, WEIGHTS_FILE, AdapterInfo, file_hashes
from validora.core.files import links_leaving
from validora.core.jsonio import parse_json
from validora.core.models import EMBEDDED_ALIAS, EMBEDDED_GGUF, cache_dir, load_tokenizer, resolve_base_model
from validora.core.names import public_name
from validora.core.prompting import DEFAULT_MAX_LENGTH, PromptFormat
from validora.errors import AdapterError, ConfigError, ModelError

IO_YAML = "io.yaml"
# validora.json's training.labels_from when the caller gave the labels (files before this wrote "--labels").
LABELS_GIVEN = "labels"
PICKLED_WEIGHTS = "adapter_model.bin"


@dataclass(frozen=True)
class Imported:
    """What an import wrote: the adapter directory and its validora.json, and the files left behind."""

    path: Path
    info: AdapterInfo
    in_place: bool
    labels_from: str  # "labels" (the caller's) or the io.yaml they were read from
    skipped: list[str]  # source entries not copied into a new directory (pickles, folders, data)


def parse_labels(text: str) -> list[str]:
    """`a,b,c` → labels; empty or repeated entries are refused rather than dropped."""
    labels = [part.strip() for part in text.split(",")]
    if any(not label for label in labels):
        raise ConfigError(f"labels has an empty entry: {text!r}; give them as a,b,c.", option="labels")
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ConfigError(f"labels repeats {', '.join(map(repr, twice))}; each label once.", option="labels")
    if len(labels) < 2:
        raise ConfigError(f"labels needs at least two labels, not {labels}.", option="labels")
    return labels


def read_config(source: Path) -> dict[str, Any]:
    """adapter_config.json of a LoRA/aLoRA adapter for a causal LM, with safetensors weights beside it."""
    path = source / CONFIG_FILE
    if not path.is_file():
        nested = sorted(p.parent.relative_to(source).as_posix() for p in source.glob(f"*/*/*/{CONFIG_FILE}"))
        hint = f" Adapters in the intrinsics layout below it: {', '.join(nested)}." if nested else ""
        raise ConfigError(f"{source} is not a PEFT adapter directory: it has no {CONFIG_FILE}.{hint}")
    try:
        config = parse_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc}. Restore it from the tool that trained the adapter."
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object.")
    if config.get("peft_type", "LORA") != "LORA" or config.get("task_type") not in (None, "CAUSAL_LM"):
        raise ConfigError(
            f"{path}: a {config.get('peft_type')} adapter for {config.get('task_type')}; validora imports "
            "LoRA and aLoRA adapters of causal language models (peft_type LORA, task_type CAUSAL_LM)."
        )
    tokens = config.get("alora_invocation_tokens")
    if tokens is not None and not (
        isinstance(tokens, list) and tokens and all(isinstance(t, int) and t >= 0 for t in tokens)
    ):
        raise ConfigError(
            f"{path}: alora_invocation_tokens must be a non-empty list of token ids, not {tokens!r}."
        )
    if tokens and config.get("modules_to_save"):
        raise ConfigError(
            f"{path}: an aLoRA adapter with modules_to_save {config['modules_to_save']} changes the model "
            "before its invocation, which aLoRA scoring assumes it does not."
        )
    if not (source / WEIGHTS_FILE).is_file():
        pickled = (source / PICKLED_WEIGHTS).is_file()
        raise ConfigError(
            f"{source} has no {WEIGHTS_FILE}"
            + (
                f", only {PICKLED_WEIGHTS}: pickled weights can run code when loaded, so validora loads "
                "safetensors only. Convert them where you trust the file, e.g. "
                "`PeftModel.from_pretrained(model, DIR).save_pretrained(OUT, safe_serialization=True)`."
                if pickled
                else "."
            )
        )
    _check_weights(source / WEIGHTS_FILE)
    return config


def _check_weights(path: Path) -> None:
    """A truncated or foreign file fails here, not when an evaluation loads it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types
        raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from None
    if not any("lora_" in name for name in names):
        raise ConfigError(f"{path} holds no LoRA weights (no lora_A/lora_B tensors).")


def resolve_labels(source: Path, labels: list[str] | None) -> tuple[list[str], str]:
    """The labels given, or those of the folder's io.yaml; both given, they must be the same set."""
    from validora.adapter import ioyaml

    io_yaml = source / IO_YAML
    if not io_yaml.is_file():
        if labels is None:
            raise ConfigError(
                f"labels a,b,c are needed: {source} has no {IO_YAML} to read them from (the adapter's "
                "answers, each exactly as it was trained).",
                option="labels",
            )
        return labels, LABELS_GIVEN
    try:
        found = ioyaml.labels_from(io_yaml)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} validora imports adapters that answer with one label; if this {IO_YAML} does not "
            "describe the adapter, move it out of the directory."
        ) from None
    if labels is not None and set(labels) != set(found):
        raise ConfigError(
            f"labels {labels} differ from the labels {found} of {io_yaml}; give the same set "
            "(in any order) or leave them out.",
            option="labels",
        )
    return labels or found, str(io_yaml)


def base_model_name(config: dict[str, Any], basemodel: str | None) -> str:
    """`basemodel`, else base_model_name_or_path; a conversion of the embedded GGUF is the embedded alias."""
    name = basemodel or config.get("base_model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"basemodel is needed: {CONFIG_FILE} names no base model (base_model_name_or_path).",
            option="basemodel",
        )
    path = Path(name).expanduser()
    if path.parent == cache_dir() / "gguf" and path.name.startswith(f"{Path(EMBEDDED_GGUF).stem}-"):
        return EMBEDDED_ALIAS
    return name


def load_format(
    name: str, labels: list[str], invocation_prompt: str | None, max_length: int, *, given: bool
) -> tuple[str, PromptFormat]:
    """The base model's canonical name and validora's prompt format on its tokenizer (no weights loaded)."""
    try:
        spec = resolve_base_model(name)
        tokenizer = load_tokenizer(spec)
    except ModelError as exc:
        if given:
            raise ConfigError(str(exc), option="basemodel") from None
        raise ConfigError(
            f"basemodel is needed (a local model directory or a Hub id in the cache): {exc}",
            option="basemodel",
        ) from None
    return spec.name, PromptFormat(tokenizer, labels, invocation_prompt, max_length)


def check_invocation(fmt: PromptFormat, stored: list[int], *, given: bool) -> None:
    """The stored aLoRA invocation tokens must be the tokenizer's ids of the invocation prompt."""
    if fmt.invocation_ids == list(stored):
        return
    decoded = fmt.tokenizer.decode(stored)
    how = "given" if given else "derived from the base model's chat template"
    again = list(fmt.tokenizer(decoded, add_special_tokens=False)["input_ids"]) == list(stored)
    mismatch = (
        f"the invocation prompt {how} is {json.dumps(fmt.invocation_prompt)} (ids {fmt.invocation_ids})"
    )
    if again:
        raise ConfigError(
            f"invocation_prompt {json.dumps(decoded)} is what the adapter's alora_invocation_tokens {stored} "
            f"decode to, but {mismatch}. If the adapter was trained with that text, import it with that "
            "invocation prompt.",
            option="invocation_prompt",
        )
    raise ConfigError(
        f"basemodel may not be the adapter's: its alora_invocation_tokens {stored} decode to "
        f"{json.dumps(decoded)}, which does not encode back to the same ids with this tokenizer, and {mismatch}.",
        option="basemodel",
    )


def _origin(source: Path) -> str:
    """Where the adapter came from, without this machine's folders: its name, or in the intrinsics
    layout its `<intrinsic_name>/<base_model_name>/<alora|lora>` (publish.py scrubs full paths only)."""
    parts = source.resolve().parts
    if parts[-1] in KINDS and len(parts) > 3 and (source / IO_YAML).is_file():
        return "/".join(parts[-3:])
    return public_name(str(source.resolve()))


def _inside(a: Path, b: Path) -> bool:
    return a != b and a.is_relative_to(b)


def import_adapter(
    source: str | Path,
    *,
    labels: list[str] | None = None,
    invocation_prompt: str | None = None,
    basemodel: str | None = None,
    outfile: str | Path | None = None,
    overwrite: bool = False,
    requirements: bool = False,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> Imported:
    """Make `source` (a PEFT LoRA/aLoRA directory) a validora adapter: in place only with `overwrite`,
    else a copy at `outfile`. Every input problem is a ConfigError raised before anything is written."""
    from validora import __version__

    source = Path(source)
    if not os.path.lexists(source):
        recover(source)  # an in-place import killed between its two renames: the directory comes back
    if not source.is_dir():
        raise ConfigError(f"Adapter directory not found: {source}")
    if links := links_leaving(source):
        raise ConfigError(
            f"{source} holds symbolic links to files outside it:\n  " + "\n  ".join(links) + "\nvalidora "
            "does not import them (a copy would take in, and an upload publish, a file that is not part "
            "of the adapter). Replace each with a copy of the file if it belongs in the adapter."
        )
    target = Path(outfile) if outfile is not None else source
    in_place = target.resolve() == source.resolve()
    if (source / INFO_FILE).is_file():
        raise ConfigError(
            f"{source} is already a validora adapter ({INFO_FILE}); use it as it is, or remove its "
            f"{INFO_FILE} to import it again."
        )
    config = read_config(source)
    labels, labels_from = resolve_labels(source, labels)
    if in_place and not overwrite:
        raise ConfigError(
            f"overwrite is needed to import in place: that adds {INFO_FILE} to {source}. Or give an "
            "outfile, a new directory, to write the validora adapter as a copy.",
            option="overwrite",
        )
    if _inside(target.resolve(), source.resolve()) or _inside(source.resolve(), target.resolve()):
        raise ConfigError(f"outfile {target} and {source} must not contain each other.", option="outfile")
    try:
        check_target(target, overwrite=overwrite, adopt=in_place)
    except AdapterError as exc:
        raise ConfigError(str(exc), option=exc.option) from None
    name, fmt = load_format(
        base_model_name(config, basemodel), labels, invocation_prompt, max_length, given=basemodel is not None
    )
    stored = config.get("alora_invocation_tokens")
    if stored:
        check_invocation(fmt, stored, given=invocation_prompt is not None)
    info = AdapterInfo(
        adapter_type="alora" if stored else "lora",
        base_model=name,
        labels=labels,
        prompt=fmt.describe(),
        training={
            "imported_from": _origin(source),
            "labels_from": LABELS_GIVEN if labels_from == LABELS_GIVEN else IO_YAML,
            "base_model_name_or_path": config.get("base_model_name_or_path"),
            **{k: config[k] for k in ("r", "lora_alpha", "target_modules", "peft_version") if k in config},
        },
        requirements=requirements,
        temperature=1.0,
        lexical=None,
        validora_version=__version__,
    )
    skipped: list[str] = []
    with staged_directory(target, overwrite=overwrite, adopt=in_place) as staging:
        skipped = _copy_adapter_files(source, staging, every=in_place)
        info = replace(info, file_sha256=file_hashes(staging))  # the weights as imported
        (staging / INFO_FILE).write_text(info.to_json(), encoding="utf-8")
        AdapterInfo.read(staging)  # what every later load checks, before the directory changes
    return Imported(path=target, info=info, in_place=in_place, labels_from=labels_from, skipped=skipped)


def _copy_adapter_files(source: Path, staging: Path, *, every: bool) -> list[str]:
    """Copy the adapter's own files (links, all inside it, followed) and return the entries left out (folders,
    pickles, data); `every`: in place, copy every entry as it is (staged_directory checks that too)."""
    skipped = []
    for entry in sorted(source.iterdir()):
        if every and entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        elif every or (entry.is_file() and _adapter_file(entry.name)):
            shutil.copy2(entry, staging / entry.name, follow_symlinks=not every)
        else:
            skipped.append(entry.name + ("/" if entry.is_dir() else ""))
    return skipped


def _adapter_file(name: str) -> bool:
    """An entry a copy takes: not hidden, no pickle, nothing an upload would refuse as data."""
    from validora.adapter.publish import is_pickle, looks_like_data

    return is_adapter_file(name) and not is_pickle(name) and not looks_like_data(name)
