"""The fuzzing suite's cases (issue 20, item 9): each one mutates a copy of a trained adapter's files one
field at a time, or is a hostile input for a reader. The list is deterministic: systematic one-field
cases plus cases drawn from a seeded random generator. test_fuzz.py runs them.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INFO, CONFIG, WEIGHTS, LEXICAL = (
    "validora.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "lexical.safetensors",
)
SEED = 20
DEEP = 10_000  # nesting depth of the deep-nesting cases

Mutator = Callable[[Path], None]  # mutates the adapter directory it is given, in place


@dataclass(frozen=True)
class AdapterCase:
    id: str
    mutate: Mutator
    # The file now says something else that changes scores (a plausible temperature, say): any finite
    # verdict over the same labels is right, as is a refusal.
    changes: bool = False


# Fields an older validora.json lacks (the defaults apply: scores change).
OPTIONAL_SCORE_FIELDS = {("temperature",), ("lexical",)}
# Fields whose plausible values change scores; "float" (2.5) is such a value for each.
SCORE_FIELDS = {("temperature",), ("lexical", "mixture_temperature"), ("lora_alpha",), ("r",)}


# Values of a score-changing field that are valid for it besides 2.5 ("weight" lies in [0, 1)).
IN_RANGE = {(("lexical", "weight"), "0"), (("lexical", "weight"), "1e-300")}


# The shape of the fixture adapter's JSON files (tests/conftest.py `trained_adapter`): the case list is
# made at collection time, before it is trained. A value's type decides which values a field gets.
_LABEL_IDS = {
    "piston_rings": [96, 2],
    "connecting_rod": [7958, 2],
    "mini_carburetor": [40760, 2],
    "no_failure": [4607, 2],
}
INFO_SHAPE: dict[str, Any] = {
    "adapter_type": "alora",
    "base_model": "smollm2-135m-instruct",
    "labels": list(_LABEL_IDS),
    "prompt": {
        "prompt_format_version": 2, "invocation_prompt": "<|im_start|>check_requirement\n",
        "invocation_ids": [1, 5875], "eos_id": 2, "labels": list(_LABEL_IDS), "label_ids": _LABEL_IDS,
        "max_length": 1024,
    },
    "training": {"epochs": 2, "learning_rate": 0.002, "rank": 8, "lexical_weight": 0.5, "max_length": 1024},
    "metrics": {"best_epoch": 2, "val_accuracy": 0.25, "val_ece": 0.19},
    "requirements": False,
    "temperature": 20.0,
    "lexical": {"file": "lexical.safetensors", "kind": "char_wb 2-5", "C": 100.0, "weight": 0.5, "mixture_temperature": 0.5},
    "format_version": 1,
    "validora_version": "0.1.0",
}  # fmt: skip
CONFIG_REQUIRED = ("r", "lora_alpha", "target_modules", "peft_type", "alora_invocation_tokens", "task_type")
CONFIG_SHAPE: dict[str, Any] = {
    "alora_invocation_tokens": [1, 5875], "base_model_name_or_path": "x", "bias": "none", "fan_in_fan_out": False,
    "inference_mode": True, "init_lora_weights": True, "layers_to_transform": None, "lora_alpha": 8,
    "lora_dropout": 0.05, "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.22.0", "r": 8,
    "rank_pattern": {}, "alpha_pattern": {}, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
    "use_dora": False, "use_rslora": False,
}  # fmt: skip


# ---------------------------------------------------------------- JSON helpers


def deep_list(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEEP) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def _dump(value: Any) -> str:
    return json.dumps(value, indent=1, allow_nan=True)


def leaves(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths (tuples of keys and indices) of every scalar leaf of a JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in leaves(v, (*path, i))] or [path]
    return [path]


def _set(data: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _delete(data: Any, path: tuple) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


RAW = object()  # marks a value written as raw JSON text (deep nesting, literal overflow)


def set_json(name: str, path: tuple, value: Any, raw: str | None = None) -> Mutator:
    """Set one field of a JSON file; `raw` replaces it with that JSON text as written."""

    def mutate(d: Path) -> None:
        data = json.loads((d / name).read_text(encoding="utf-8"))
        if raw is None:
            _set(data, path, value)
            (d / name).write_text(_dump(data), encoding="utf-8")
            return
        marker = "@@RAW@@"
        _set(data, path, marker)
        (d / name).write_text(_dump(data).replace(f'"{marker}"', raw), encoding="utf-8")

    return mutate


def delete_json(name: str, path: tuple) -> Mutator:
    def mutate(d: Path) -> None:
        data = json.loads((d / name).read_text(encoding="utf-8"))
        _delete(data, path)
        (d / name).write_text(_dump(data), encoding="utf-8")

    return mutate


def write_bytes(name: str, content: bytes) -> Mutator:
    def mutate(d: Path) -> None:
        (d / name).write_bytes(content)

    return mutate


def _pid(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "root"


# Values for a numeric field: (id, python value or None with raw JSON text)
NUMERIC = [
    ("nan", math.nan, None),
    ("inf", math.inf, None),
    ("-1", -1, None),
    ("0", 0, None),
    ("1e300", 1e300, None),
    ("1e-300", 1e-300, None),
    ("float", 2.5, None),
    ("str", "7", None),
    ("null", None, "null"),
    ("bool", True, None),
    ("deep", None, deep_list()),
]
TEXTY = [
    ("empty", "", None),
    ("surrogate", "\ud800", None),
    ("nul", "a\x00b", None),
    ("int", 3, None),
    ("null", None, "null"),
    ("deep", None, deep_object()),
    ("huge", "x" * 1_000_000, None),
]


def _json_file_cases(
    name: str, tag: str, data: dict, fields: list[tuple], rng: random.Random
) -> list[AdapterCase]:
    """Systematic cases for the given fields (every numeric one gets every NUMERIC value, text ones
    TEXTY), each key deleted, extra keys, and whole-file damage."""
    cases: list[AdapterCase] = []
    for path in fields:
        current = _get(data, path)
        values = NUMERIC if isinstance(current, (int, float)) and not isinstance(current, bool) else TEXTY
        for vid, value, raw in values:
            changes = (path in SCORE_FIELDS and vid == "float") or (path, vid) in IN_RANGE
            cases.append(AdapterCase(f"{tag}:{_pid(path)}={vid}", set_json(name, path, value, raw), changes))
    for key in data if tag == "info" else CONFIG_REQUIRED:
        changes = (key,) in OPTIONAL_SCORE_FIELDS  # older files lack them: the defaults apply
        cases.append(AdapterCase(f"{tag}:missing-{key}", delete_json(name, (key,)), changes))
    cases += [
        AdapterCase(f"{tag}:extra-key", set_json(name, ("zz_extra",), 1)),
        AdapterCase(f"{tag}:extra-key-deep", set_json(name, ("zz_extra",), None, deep_object())),
        AdapterCase(f"{tag}:empty-file", write_bytes(name, b"")),
        AdapterCase(f"{tag}:not-object", write_bytes(name, b"[1, 2]")),
        AdapterCase(f"{tag}:deep-file", write_bytes(name, deep_list().encode())),
        AdapterCase(f"{tag}:invalid-utf8", write_bytes(name, b'{"a": "\xff\xfe"}')),
        AdapterCase(f"{tag}:truncated", lambda d: (d / name).write_bytes((d / name).read_bytes()[:50])),
        AdapterCase(
            f"{tag}:bom", lambda d: (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())
        ),
        AdapterCase(f"{tag}:surrogate-key", set_json(name, ("\ud800",), 1)),
    ]
    return cases


def info_cases(info: dict, rng: random.Random) -> list[AdapterCase]:
    """validora.json: every field inference reads gets every value; metrics/training leaves by lot."""
    read = [
        ("adapter_type",), ("base_model",), ("temperature",), ("requirements",), ("format_version",),
        ("labels",), ("labels", 0), ("prompt", "invocation_prompt"), ("prompt", "invocation_ids", 0),
        ("prompt", "max_length"), ("prompt", "prompt_format_version"),
    ]  # fmt: skip
    read += [("prompt", "label_ids", info["labels"][0], 0)]
    read += [("lexical", "weight"), ("lexical", "mixture_temperature")]  # "file", "kind", "C": not read
    read += [("prompt", k) for k in info["prompt"] if isinstance(info["prompt"][k], (int, float, str))]
    read = [p for p in dict.fromkeys(read) if _has(info, p)]
    cases = _json_file_cases(INFO, "info", info, read, rng)
    cases += [
        AdapterCase(f"info:missing-prompt.{k}", delete_json(INFO, ("prompt", k))) for k in info["prompt"]
    ]
    cases += [
        AdapterCase("info:labels-duplicate", set_json(INFO, ("labels",), [info["labels"][0]] * 2)),
        AdapterCase("info:labels-swapped", set_json(INFO, ("labels",), info["labels"][::-1])),
        AdapterCase("info:labels-one", set_json(INFO, ("labels",), info["labels"][:1])),
        AdapterCase("info:label_ids-empty", set_json(INFO, ("prompt", "label_ids"), {})),
        AdapterCase("info:invocation_ids-huge-id", set_json(INFO, ("prompt", "invocation_ids", 0), 10**9)),
        AdapterCase(
            "info:label_ids-huge-id", set_json(INFO, ("prompt", "label_ids", info["labels"][0], 0), 10**9)
        ),
        AdapterCase("info:lexical-on-without-file", lambda d: (d / LEXICAL).unlink(missing_ok=True)),
    ]
    others = [
        p for p in leaves({"metrics": info.get("metrics"), "training": info.get("training")}) if len(p) > 1
    ]
    for path in rng.sample(others, min(4, len(others))):
        vid, value, raw = rng.choice(NUMERIC + TEXTY)
        cases.append(AdapterCase(f"info:rand:{_pid(path)}={vid}", set_json(INFO, path, value, raw)))
    return cases


def _has(data: Any, path: tuple) -> bool:
    try:
        _get(data, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def config_cases(config: dict, rng: random.Random) -> list[AdapterCase]:
    """adapter_config.json: the fields PEFT reads, with values of every kind."""
    cases: list[AdapterCase] = []
    numeric = [k for k in ("r", "lora_alpha") if k in config]
    cases += _json_file_cases(CONFIG, "config", config, [(k,) for k in numeric], rng)
    special: dict[str, list[tuple[str, Any]]] = {
        "r": [("10000", 10000), ("1", 1)],
        "lora_dropout": [("nan", math.nan), ("-1", -1), ("1e300", 1e300), ("str", "x")],
        "target_modules": [
            ("none-match", ["no_such_module"]),
            ("empty", []),
            ("string", "q_proj"),
            ("null", None),
            ("int", 3),
            ("all-linear", "all-linear"),
            ("more", ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]),
        ],
        "peft_type": [("PREFIX_TUNING", "PREFIX_TUNING"), ("bogus", "BOGUS"), ("null", None), ("int", 1)],
        "alora_invocation_tokens": [
            ("empty", []),
            ("negative", [-1]),
            ("huge", [10**12]),
            ("string", "abc"),
            ("null", None),
            ("floats", [1.5]),
            ("long", list(range(100000))),
            ("nested", [[1]]),
        ],
        "task_type": [("bogus", "BOGUS"), ("SEQ_CLS", "SEQ_CLS"), ("int", 5)],
        "base_model_name_or_path": [("other", "gpt2"), ("surrogate", "\ud800"), ("int", 1)],
        "use_dora": [("true", True), ("string", "yes")],
        "bias": [("all", "all"), ("bogus", "bogus")],
        "fan_in_fan_out": [("true", True)],
        "modules_to_save": [("lm_head", ["lm_head"]), ("bogus", ["no_such"])],
        "layers_to_transform": [("999", [999]), ("negative", [-1])],
        "rank_pattern": [("bad", {"q_proj": "x"}), ("big", {"q_proj": 4096})],
        "alpha_pattern": [("nan", {"q_proj": math.nan})],
        "inference_mode": [("false", False)],
    }
    for key, values in special.items():
        for vid, value in values:
            cases.append(AdapterCase(f"config:{key}={vid}", set_json(CONFIG, (key,), value)))
    return cases


# ---------------------------------------------------------------- safetensors helpers


def read_st(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_st(header: dict | str, data: bytes) -> bytes:
    text = header if isinstance(header, str) else json.dumps(header, allow_nan=True)
    encoded = text.encode("utf-8", "surrogatepass")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def st_edit(name: str, edit: Callable[[dict, bytes], tuple[dict | str, bytes]]) -> Mutator:
    def mutate(d: Path) -> None:
        header, data = read_st((d / name).read_bytes())
        (d / name).write_bytes(write_st(*edit(header, data)))

    return mutate


def raw_edit(name: str, edit: Callable[[bytes], bytes]) -> Mutator:
    def mutate(d: Path) -> None:
        (d / name).write_bytes(edit((d / name).read_bytes()))

    return mutate


def tensors_edit(
    name: str, edit: Callable[[dict], dict], meta_edit: Callable[[dict], dict] | None = None
) -> Mutator:
    """Rewrite the file through safetensors.numpy with `edit` applied to its tensors (and metadata)."""

    def mutate(d: Path) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(d / name), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        tensors = edit(tensors)
        if meta_edit is not None:
            meta = meta_edit(dict(meta))
        save_file(tensors, str(d / name), metadata=meta or None)

    return mutate


def _first(tensors: dict, index: int = 0) -> str:
    return sorted(tensors)[index % len(tensors)]


def _poison(value: float, index: int = 0) -> Callable[[dict], dict]:
    def edit(t: dict) -> dict:
        key = _first(t, index)
        a = t[key].astype(t[key].dtype, copy=True)
        if a.dtype.kind == "f":
            a.flat[0] = value
        t[key] = a
        return t

    return edit


def _flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        b = bytearray(raw)
        i = at(raw)
        b[i] ^= 0xFF
        return bytes(b)

    return edit


def _header_len(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def st_cases(name: str, tag: str, rng: random.Random) -> list[AdapterCase]:
    """Damage to a safetensors file: bytes, header, tensors."""
    import numpy as np

    def rename(t: dict) -> dict:
        key = _first(t)
        t[key + ".renamed"] = t.pop(key)
        return t

    def drop(t: dict) -> dict:
        t.pop(_first(t))
        return t

    def extra(t: dict) -> dict:
        t["zz.extra.weight"] = np.ones((2, 2), dtype=np.float32)
        return t

    def dtype(to: Any) -> Callable[[dict], dict]:
        def edit(t: dict) -> dict:
            key = _first(t)
            t[key] = t[key].astype(to)
            return t

        return edit

    def shape(t: dict) -> dict:
        key = _first(t)
        t[key] = np.ascontiguousarray(t[key].reshape(-1)[: max(1, t[key].size // 2)])
        return t

    def transpose(t: dict) -> dict:
        key = _first(t)
        t[key] = np.ascontiguousarray(t[key].T)
        return t

    def empty_tensor(t: dict) -> dict:
        key = _first(t)
        t[key] = np.zeros((0, *t[key].shape[1:]), dtype=t[key].dtype)
        return t

    def header_offsets(h: dict, data: bytes) -> tuple[dict, bytes]:
        key = sorted(k for k in h if k != "__metadata__")[0]
        start, _ = h[key]["data_offsets"]
        h[key]["data_offsets"] = [start, start + 10**9]
        return h, data

    def header_meta_bad(h: dict, data: bytes) -> tuple[dict, bytes]:
        h["__metadata__"] = {"format": 1, "x": [1]}
        return h, data

    def header_surrogate(h: dict, data: bytes) -> tuple[dict, bytes]:
        return json.dumps(h)[:-1] + ', "\\ud800": {}}', data

    def header_deep(h: dict, data: bytes) -> tuple[dict, bytes]:
        return json.dumps(h)[:-1] + ', "zz": ' + deep_list(2000) + "}", data

    cases = [
        AdapterCase(f"{tag}:empty-file", write_bytes(name, b"")),
        AdapterCase(f"{tag}:truncated-4", raw_edit(name, lambda r: r[:4])),
        AdapterCase(f"{tag}:truncated-header", raw_edit(name, lambda r: r[: 8 + _header_len(r) // 2])),
        AdapterCase(
            f"{tag}:truncated-data",
            raw_edit(name, lambda r: r[: 8 + _header_len(r) + (len(r) - 8 - _header_len(r)) // 2]),
        ),
        AdapterCase(f"{tag}:truncated-last-byte", raw_edit(name, lambda r: r[:-1])),
        AdapterCase(f"{tag}:header-len-huge", raw_edit(name, lambda r: struct.pack("<Q", 2**63) + r[8:])),
        AdapterCase(f"{tag}:header-len-zero", raw_edit(name, lambda r: struct.pack("<Q", 0) + r[8:])),
        AdapterCase(f"{tag}:header-offsets-past-end", st_edit(name, header_offsets)),
        AdapterCase(f"{tag}:header-metadata-not-strings", st_edit(name, header_meta_bad)),
        AdapterCase(f"{tag}:header-surrogate", st_edit(name, header_surrogate)),
        AdapterCase(f"{tag}:header-deep", st_edit(name, header_deep)),
        AdapterCase(
            f"{tag}:header-not-json",
            raw_edit(name, lambda r: r[:8] + b"\xff" * _header_len(r) + r[8 + _header_len(r) :]),
        ),
        AdapterCase(f"{tag}:trailing-garbage", raw_edit(name, lambda r: r + b"garbage!")),
        AdapterCase(f"{tag}:nan-in-tensor", tensors_edit(name, _poison(math.nan))),
        AdapterCase(f"{tag}:inf-in-tensor", tensors_edit(name, _poison(math.inf))),
        AdapterCase(f"{tag}:huge-in-tensor", tensors_edit(name, _poison(3e38, 1))),
        AdapterCase(f"{tag}:dtype-float16", tensors_edit(name, dtype(np.float16))),
        AdapterCase(f"{tag}:dtype-int64", tensors_edit(name, dtype(np.int64))),
        AdapterCase(f"{tag}:dtype-bool", tensors_edit(name, dtype(np.bool_))),
        AdapterCase(f"{tag}:dtype-float64", tensors_edit(name, dtype(np.float64))),
        AdapterCase(f"{tag}:missing-key", tensors_edit(name, drop)),
        AdapterCase(f"{tag}:extra-key", tensors_edit(name, extra)),
        AdapterCase(f"{tag}:renamed-key", tensors_edit(name, rename)),
        AdapterCase(f"{tag}:zero-tensors", tensors_edit(name, lambda t: {})),
        AdapterCase(f"{tag}:wrong-shape", tensors_edit(name, shape)),
        AdapterCase(f"{tag}:transposed", tensors_edit(name, transpose)),
        AdapterCase(f"{tag}:zero-size-tensor", tensors_edit(name, empty_tensor)),
    ]
    for i in range(3):  # seeded byte flips: header, then data
        pos = rng.random()
        cases.append(
            AdapterCase(
                f"{tag}:flip-header-{i}", raw_edit(name, _flip(lambda r, p=pos: 8 + int(p * _header_len(r))))
            )
        )
        pos = rng.random()
        cases.append(AdapterCase(
            f"{tag}:flip-data-{i}",
            raw_edit(name, _flip(lambda r, p=pos: 8 + _header_len(r) + int(p * (len(r) - 8 - _header_len(r))))),
        ))  # fmt: skip
    return cases


def lexical_cases(rng: random.Random) -> list[AdapterCase]:
    """lexical.safetensors: the file's bytes and tensors, and each metadata field."""
    cases = st_cases(LEXICAL, "lexical", rng)
    meta_values: dict[str, list[tuple[str, str]]] = {
        "temperature": [("nan", "nan"), ("inf", "inf"), ("-1", "-1"), ("0", "0"), ("1e300", "1e300"),
                        ("1e-300", "1e-300"), ("text", "warm"), ("empty", "")],
        "c": [("nan", "nan"), ("-1", "-1"), ("text", "x")],
        "kind": [("bogus", "bogus"), ("empty", ""), ("surrogate", "\ud800")],
        "labels": [("not-json", "[oops"), ("dict", "{}"), ("swapped", "SWAP"), ("deep", deep_list()),
                   ("ints", "[1, 2, 3, 4]"), ("surrogate", '["\\ud800"]')],
        "terms": [("not-json", "[oops"), ("empty", "[]"), ("deep", deep_list()), ("ints", "[1]"),
                  ("dict", '{"a": 1}'), ("duplicates", "DUP"), ("surrogate", "SURR")],
    }  # fmt: skip

    def set_meta(key: str, value: str) -> Callable[[dict], dict]:
        def edit(m: dict) -> dict:
            if value == "SWAP":
                m[key] = json.dumps(json.loads(m[key])[::-1])
            elif value == "DUP":
                terms = json.loads(m[key])
                m[key] = json.dumps([terms[0]] * len(terms))
            elif value == "SURR":
                terms = json.loads(m[key])
                m[key] = json.dumps(["\ud800", *terms[1:]])
            else:
                m[key] = value
            return m

        return edit

    def drop_meta(key: str) -> Callable[[dict], dict]:
        return lambda m: {k: v for k, v in m.items() if k != key}

    for key, values in meta_values.items():
        for vid, value in values:
            cases.append(AdapterCase(f"lexical:meta.{key}={vid}", _meta_mutator(set_meta(key, value))))
        # A lexical model saved before its temperature was fitted loads with 1.0: scores change.
        older = key == "temperature"
        cases.append(AdapterCase(f"lexical:meta.missing-{key}", _meta_mutator(drop_meta(key)), older))
    cases.append(AdapterCase("lexical:meta-none", _meta_mutator(lambda m: {})))
    return cases


def _meta_mutator(meta_edit: Callable[[dict], dict]) -> Mutator:
    def mutate(d: Path) -> None:
        if (d / LEXICAL).exists():  # an adapter without a lexical model: nothing to damage
            # the header written as JSON by hand: safetensors itself cannot write a lone surrogate
            st_edit(
                LEXICAL, lambda h, data: ({**h, "__metadata__": meta_edit(dict(h["__metadata__"]))}, data)
            )(d)

    return mutate


def fs_cases() -> list[AdapterCase]:
    """Symlinks out of the directory, directories and FIFOs in place of files (the folder `outside`
    beside the adapter holds `copy/`, the unmutated files, and `junk`, a line of text)."""
    cases: list[AdapterCase] = []
    for name in (INFO, CONFIG, WEIGHTS, LEXICAL):
        short = name.split(".")[0]

        def link(target: Callable[[Path], Path], n: str = name) -> Mutator:
            def mutate(d: Path) -> None:
                (d / n).unlink(missing_ok=True)
                (d / n).symlink_to(target(d))

            return mutate

        def as_dir(d: Path, n: str = name) -> None:
            (d / n).unlink(missing_ok=True)
            (d / n).mkdir()

        def as_fifo(d: Path, n: str = name) -> None:
            (d / n).unlink(missing_ok=True)
            os.mkfifo(d / n)

        cases += [
            AdapterCase(
                f"fs:{short}-symlink-outside-copy", link(lambda d, n=name: d.parent / "outside" / "copy" / n)
            ),
            AdapterCase(f"fs:{short}-symlink-outside-junk", link(lambda d: d.parent / "outside" / "junk")),
            AdapterCase(f"fs:{short}-symlink-dev-zero", link(lambda d: Path("/dev/zero"))),
            AdapterCase(f"fs:{short}-symlink-dangling", link(lambda d: d.parent / "outside" / "nowhere")),
            AdapterCase(f"fs:{short}-symlink-loop", link(lambda d, n=name: d / n)),
            AdapterCase(f"fs:{short}-directory", as_dir),
            AdapterCase(f"fs:{short}-fifo", as_fifo),
        ]
    return cases


def adapter_cases() -> list[AdapterCase]:
    rng = random.Random(SEED)
    cases = info_cases(INFO_SHAPE, rng) + config_cases(CONFIG_SHAPE, rng) + st_cases(WEIGHTS, "weights", rng)
    cases += lexical_cases(rng) + fs_cases()
    cases += random_cases(INFO_SHAPE, CONFIG_SHAPE, rng)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    return cases


def random_cases(info: dict, config: dict, rng: random.Random, n: int = 8) -> list[AdapterCase]:
    """Seeded draws: a random leaf of validora.json or adapter_config.json set to a random value."""
    cases = []
    pool = [(INFO, "info", p) for p in leaves(info) if p] + [
        (CONFIG, "config", p) for p in leaves(config) if p
    ]
    for i in range(n):
        name, tag, path = rng.choice(pool)
        vid, value, raw = rng.choice(NUMERIC + TEXTY)
        cases.append(AdapterCase(f"rand{i}:{tag}:{_pid(path)}={vid}", set_json(name, path, value, raw)))
    return cases


# ---------------------------------------------------------------- hostile inputs to the readers

REFUSE = "refuse"  # an expected outcome: only a ValidoraError is right
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class Content:
    """The bytes of an input file and what a JSONL reader must make of them: (item, label) rows or
    REFUSE; `may_refuse`: a ValidoraError is acceptable too."""

    id: str
    raw: bytes
    rows: Any
    may_refuse: bool = True
    labeled: bool = True


def _line(item: Any, label: Any = "no_failure", ascii_only: bool = True, **extra: Any) -> bytes:
    return json.dumps({"item": item, "label": label, **extra}, ensure_ascii=ascii_only).encode("utf-8")


GOOD_ROWS = [("The piston rings are worn.", "piston_rings"), ("Runs fine.", "no_failure")]
GOOD = [_line(i, lab) for i, lab in GOOD_ROWS]


def _file(*lines: bytes, end: bytes = b"\n") -> bytes:
    return b"".join(line + end for line in lines)


def reader_contents() -> list[Content]:
    x = ("x", "no_failure")
    return [
        Content("crlf", _file(*GOOD, end=b"\r\n"), GOOD_ROWS, may_refuse=False),
        Content("cr-only", _file(*GOOD, end=b"\r"), REFUSE),
        Content("bom", b"\xef\xbb\xbf" + _file(*GOOD), REFUSE),
        Content("empty-file", b"", REFUSE),
        Content("blank-lines", b"\n\r\n \t\n", REFUSE),
        Content("deep-item-10000", _file(b'{"item": ' + deep_list().encode() + b', "label": "a"}'), REFUSE),
        Content("deep-line-10000", _file(deep_object().encode()), REFUSE),
        Content("deep-extra-key-10000", _file(b'{"item": "x", "label": "no_failure", "meta": ' + deep_list().encode() + b"}"), [x]),
        Content("deep-requirement-10000", _file(b'{"item": "x", "label": "a", "requirement": ' + deep_list().encode() + b"}"), REFUSE),
        Content("surrogate-escape-item", _file(_line("a\ud800b")), REFUSE),
        Content("surrogate-escape-label", _file(_line("x", "\udfff")), REFUSE),
        Content("surrogate-escape-key", _file(b'{"item": "x", "label": "no_failure", "\\ud800": 1}'), [x]),
        Content("surrogate-raw-bytes", _file(b'{"item": "a\xed\xa0\x80b", "label": "no_failure"}'), REFUSE),
        Content("nul-escaped", _file(_line("a\x00b")), [("a\x00b", "no_failure")]),
        Content("nul-raw", _file(b'{"item": "a\x00b", "label": "no_failure"}'), REFUSE),
        Content("nul-bytes-line", _file(b"\x00\x00\x00", *GOOD), REFUSE),
        Content("ansi-escaped", _file(_line("\x1b[31mred\x1b[0m", "\x1b[2J")), [("\x1b[31mred\x1b[0m", "\x1b[2J")]),
        Content("ansi-raw", _file(b'{"item": "\x1b[31mred", "label": "no_failure"}'), REFUSE),
        Content("rtl-override", _file(_line("abc\u202edef", ascii_only=False)), [("abc\u202edef", "no_failure")],
                may_refuse=False),
        Content("unicode-line-separators", _file(_line("a\u2028b\x85c\u2029d", ascii_only=False)),
                [("a\u2028b\x85c\u2029d", "no_failure")], may_refuse=False),
        Content("escaped-line-separators", _file(_line("a\x1cb\x1dc\x1ed\x0be\x0cf")),
                [("a\x1cb\x1dc\x1ed\x0be\x0cf", "no_failure")], may_refuse=False),
        Content("huge-line-10mb", _file(_line("x" * TEN_MB), *GOOD), [("x" * TEN_MB, "no_failure"), *GOOD_ROWS]),
        Content("huge-garbage-line-10mb", _file(b"x" * TEN_MB), REFUSE),
        Content("invalid-utf8", _file(GOOD[0], b'{"item": "\xff\xfe", "label": "a"}'), REFUSE),
        Content("utf16", "\n".join(line.decode() for line in GOOD).encode("utf-16"), REFUSE),
        Content("huge-int-5000-digits", _file(b'{"item": "x", "label": "no_failure", "n": 1' + b"0" * 5000 + b"}"), [x]),
        Content("huge-int-item", _file(b'{"item": 1' + b"0" * 5000 + b', "label": "no_failure"}'), REFUSE),
        Content("nan-literal", _file(b'{"item": "x", "label": "no_failure", "n": NaN}'), [x]),
        Content("unlabeled", _file(b'{"item": "x"}'), [x], labeled=False),
    ]  # fmt: skip


def text_lines(raw: bytes) -> list[str] | None:
    """The texts a plain-text reader must return (BOM dropped, blank lines skipped, a CR before the
    newline dropped; none in an empty file), or None when only a refusal is right (a line that is not
    UTF-8)."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            return None
    return out


@dataclass(frozen=True)
class Description:
    """A requirement description and every acceptable reading of it (REFUSE: a RequirementError)."""

    id: str
    text: str
    expect: tuple


def descriptions() -> list[Description]:
    ok = 'must be "no_failure"'
    nf, rest = {"no_failure"}, {"piston_rings", "connecting_rod", "mini_carburetor"}
    either = (REFUSE, nf)
    return [
        Description("plain", ok, (nf,)),
        Description("crlf", ok + "\r\n", either),
        Description("bom", "\ufeff" + ok, either),
        Description("nul", ok + "\x00", either),
        Description("ansi", "\x1b[31m" + ok + "\x1b[0m", either),
        Description("rtl-override", "\u202e" + ok, either),
        Description("surrogate-label", 'must be "\ud800"', (REFUSE,)),
        Description("surrogate-tail", ok + "\ud800", either),
        Description("empty", "", (REFUSE,)),
        Description("blank", " \t\r\n", (REFUSE,)),
        Description("parens-10000", "(" * DEEP + ok + ")" * DEEP, either),
        Description("not-10000", "not " * DEEP + "no_failure", (REFUSE, nf, rest)),
        Description("must-not-10000", "must not " * DEEP + "be no_failure", (REFUSE, nf, rest)),
        Description("either-10000", "either " * DEEP + "no_failure or piston_rings", (REFUSE, {"no_failure", "piston_rings"})),
        Description("clauses-5000", " and ".join([ok] * 5000), either),
        Description("quotes-10000", '"' * DEEP, (REFUSE,)),
        Description("brackets-10000", "[" * DEEP + "]" * DEEP, (REFUSE,)),
        Description("or-list-10000", "must be one of " + ", ".join(['"no_failure"'] * DEEP) + ' or "piston_rings"',
                    (REFUSE, {"no_failure", "piston_rings"})),
        Description("huge-10mb-padding", ok + " " * TEN_MB, either),
        Description("huge-10mb-word", "x" * TEN_MB, (REFUSE,)),
        Description("control-chars", "must\x00be\x1b[31m no_failure\u202e", either),
    ]  # fmt: skip
