"""io.yaml: how a client calls an adapter and reads its answer (the Granite intrinsics convention).

validora writes one for its adapters (`m alora io-yaml`) and checks a user's before any upload, with
line numbers, so that a broken or inconsistent file never reaches the Hub.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from validora.adapter.schema import AdapterInfo
from validora.errors import ConfigError

REQUIRED = ("model", "response_format", "transformations", "parameters")
OPTIONAL = ("instruction", "sentence_boundaries")  # the latter: used by Granite's citation intrinsics


def response_schema(labels: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(labels)}


# What YAML reads as a line break (U+0085, U+2028, U+2029) or refuses outright (C1 and other controls,
# lone surrogates, U+FFFE/U+FFFF); a BOM is escaped too. JSON escapes what remains below U+0020.
_NOT_YAML_TEXT = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029\ufeff]"
)


def json_line(value: Any) -> str:
    """`value` as JSON on one line that YAML keeps intact: any string round-trips through the file."""
    text = json.dumps(value, ensure_ascii=False)
    return _NOT_YAML_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def generate(info: AdapterInfo) -> str:
    """A correct io.yaml for this adapter: its answer is exactly one label.

    It names the base model by names.public_name(), so it never holds a local path.
    """
    from validora.core.names import public_name

    schema = json_line(response_schema(info.labels))
    longest = max(len(ids) for ids in info.prompt.get("label_ids", {}).values() or [[0] * 8])
    about = json_line(f"{info.adapter_type} adapter on {public_name(info.base_model)}")[1:-1]
    return f"""\
# io.yaml of a validora {about}.
# The answer is exactly one label; validora scores every label by its likelihood.
# Model name, or null to use the one in the request.
model: null
# JSON schema of the answer: one of the adapter's labels.
response_format: |
  {schema}
# Post-processing of the answer: none, the label is the result.
transformations: null
# Text appended to the conversation before the answer, or null: the adapter's invocation prompt
# ({json.dumps(info.invocation_prompt)}) comes from its chat template and is added by validora.
instruction: null
# Generation parameters for clients that decode the answer instead of scoring labels.
parameters:
  max_completion_tokens: {longest}
  temperature: 0.0
"""


def _line_of(node: Any, key: str) -> int | None:
    """1-based line of a top-level key in a composed YAML mapping."""
    for k, _ in getattr(node, "value", []) or []:
        if getattr(k, "value", None) == key:
            return k.start_mark.line + 1
    return None


def _enums(schema: Any) -> list[list[Any]]:
    """Every `enum` list anywhere in a JSON schema."""
    if isinstance(schema, dict):
        found = [schema["enum"]] if isinstance(schema.get("enum"), list) else []
        return found + [e for v in schema.values() for e in _enums(v)]
    if isinstance(schema, list):
        return [e for v in schema for e in _enums(v)]
    return []


MAX_BYTES = 1024 * 1024  # an io.yaml is a few hundred bytes
MAX_DEPTH = 64  # as core/jsonio's


def safe_yaml(text: str, where: str) -> tuple[Any, Any]:
    """(data, composed node) of a YAML text, refusing anchors and aliases (`&a`, `*a`): a recursive
    alias exhausts the recursion limit and a tree of them ("billion laughs") expands without end, and
    no io.yaml or model card needs one. A ConfigError (with `where`, the file, and a line) otherwise."""
    import yaml

    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{where}:{event.start_mark.line + 1}: the YAML is nested deeper than {MAX_DEPTH} levels."
                )
            anchor = getattr(event, "anchor", None)
            if isinstance(event, yaml.AliasEvent) or anchor is not None:
                line = event.start_mark.line + 1
                raise ConfigError(
                    f"{where}:{line}: YAML anchors and aliases (&{anchor} / *{anchor}) are not accepted "
                    "here: write the value out in full."
                )
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise ConfigError(f"{at}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:  # e.g. control characters: reported without a mark
        raise ConfigError(f"{where}: YAML error: {exc}") from None
    return data, node


def _load(path: Path) -> tuple[str, Any, Any]:
    """The file's text, its data and its composed node (for line numbers); a ConfigError if unreadable."""
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a regular file; give the io.yaml file itself.")
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(
                f"{path} is {path.stat().st_size / 2**20:.1f} MiB; an io.yaml is a few lines "
                f"(at most {MAX_BYTES // 2**20} MiB read). Check that it is the right file."
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"io_yaml {path} does not exist.", option="io_yaml") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    data, node = safe_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: io.yaml must be a mapping of fields ({', '.join(REQUIRED)}).")
    return text, data, node


def _schema(fmt: Any) -> tuple[Any, str | None]:
    """The JSON schema `response_format` holds (a JSON string or a mapping), or None and why not."""
    if isinstance(fmt, dict):
        return fmt, None
    if not isinstance(fmt, str):
        return None, "'response_format' must be a JSON schema (a string or a mapping)."
    from validora.core.jsonio import parse_json

    try:
        return parse_json(fmt), None
    except ValueError as exc:
        return None, f"'response_format' is not valid JSON: {exc}."


def labels_from(path: str | Path) -> list[str]:
    """The labels an io.yaml's `response_format` lists: one `enum` of distinct strings at the top of
    the schema, an answer that is exactly one label (what validora scores)."""
    path = Path(path)
    _, data, node = _load(path)
    line = _line_of(node, "response_format")
    schema, why = _schema(data.get("response_format"))
    enums = _enums(schema)
    if "response_format" not in data:
        why = "it has no 'response_format' field"
    elif why is None and len(enums) != 1:
        why = f"its 'response_format' has {len(enums) or 'no'} 'enum' lists, not one list of labels"
    elif why is None and not (isinstance(schema, dict) and schema.get("enum") is enums[0]):
        why = "its 'enum' sits inside a structured answer (a JSON object), not a bare label"
    elif why is None:
        labels = enums[0]
        if all(isinstance(v, str) and v.strip() for v in labels) and len(set(labels)) == len(labels) > 1:
            return list(labels)
        why = f"its 'enum' {json_line(labels)} is not a list of at least two distinct non-empty strings"
    raise ConfigError(f"{path}:{line or 1}: no labels in this io.yaml: {why}.")


def validate(path: str | Path, labels: list[str]) -> str:
    """Check an io.yaml file against the adapter's labels; return its text. All problems at once."""
    path = Path(path)
    text, data, node = _load(path)
    problems: list[str] = []

    def problem(key: str, message: str) -> None:
        line = _line_of(node, key)
        problems.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")

    for key in REQUIRED:
        if key not in data:
            problems.append(f"{path}: missing required field '{key}'.")
    for key in data:
        if key not in (*REQUIRED, *OPTIONAL):
            problem(str(key), f"unknown field {key!r} (known: {', '.join((*REQUIRED, *OPTIONAL))}).")
    if data.get("model") is not None and not isinstance(data["model"], str):
        problem("model", "'model' must be a model name or null.")
    if "response_format" in data:
        schema, why = _schema(data["response_format"])
        if why:
            problem("response_format", why)
        if schema is not None:
            enums = _enums(schema)
            if len(enums) != 1:
                problem(
                    "response_format",
                    f"'response_format' must list the adapter's labels in one 'enum'; found {len(enums)} enums.",
                )
            elif sorted(map(repr, enums[0])) != sorted(map(repr, labels)):
                missing = sorted(set(labels) - set(enums[0]))
                extra = sorted(map(repr, [e for e in enums[0] if e not in labels]))
                problem(
                    "response_format",
                    f"the 'enum' of 'response_format' does not match the adapter's labels {labels}: "
                    f"missing {missing}, not labels of the adapter {extra}.",
                )
    transformations = data.get("transformations")
    if transformations is not None and not (
        isinstance(transformations, list)
        and all(isinstance(t, dict) and "type" in t for t in transformations)
    ):
        problem("transformations", "'transformations' must be null or a list of mappings with a 'type'.")
    if data.get("instruction") is not None and not isinstance(data["instruction"], str):
        problem("instruction", "'instruction' must be a string or null.")
    if data.get("parameters") is not None and not isinstance(data["parameters"], dict):
        problem("parameters", "'parameters' must be a mapping (e.g. max_completion_tokens: 8) or null.")
    if problems:
        raise ConfigError(f"{path} is not a valid io.yaml for this adapter:\n  " + "\n  ".join(problems))
    return text
