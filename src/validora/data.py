"""Labeled JSONL: loading with line-numbered errors, and a seeded stratified split."""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from validora.errors import DataError, LineProblem

KNOWN_KEYS = frozenset({"item", "label", "requirement"})
MAX_REPORTED = 20


@dataclass(frozen=True)
class Example:
    item: str
    label: str
    requirement: str | None = None
    line: int = 0


def _check_line(raw: str, labeled: bool = True) -> tuple[Example | None, str | None, set[str]]:
    """Parse one line; return (example, problem, unknown keys)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})", set()
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", set()
    for key in ("item", "label") if labeled else ("item",):
        if key not in obj:
            return None, f'missing field "{key}"', set()
        if not isinstance(obj[key], str):
            return None, f'field "{key}" must be a string, got {type(obj[key]).__name__}', set()
        if not obj[key].strip():
            return None, f'field "{key}" is empty', set()
    requirement = obj.get("requirement")
    if requirement is not None and not isinstance(requirement, str):
        return None, f'field "requirement" must be a string, got {type(requirement).__name__}', set()
    label = obj.get("label")
    return (
        Example(obj["item"], label.strip() if isinstance(label, str) else "", requirement),
        None,
        set(obj) - KNOWN_KEYS,
    )


def load_jsonl(path: str | Path, *, labeled: bool = True, max_reported: int = MAX_REPORTED) -> list[Example]:
    """Load every example, or raise one DataError listing every bad line (up to `max_reported`).

    `labeled=False` accepts lines without a label (texts to classify).
    """
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Data file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a JSONL file.") from None
    problems: list[LineProblem] = []
    if raw_bytes.startswith(b"\xef\xbb\xbf"):
        problems.append(
            LineProblem(path, 1, "file starts with a UTF-8 byte-order mark (BOM); save it without one")
        )
        raw_bytes = raw_bytes[3:]
    examples: list[Example] = []
    unknown: Counter[str] = Counter()
    for number, line in enumerate(raw_bytes.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(LineProblem(path, number, f"not valid UTF-8 (byte {exc.start + 1})"))
            continue
        example, problem, extra = _check_line(text, labeled)
        if problem:
            problems.append(LineProblem(path, number, problem))
        elif example is not None:
            examples.append(Example(example.item, example.label, example.requirement, number))
            unknown.update(extra)
    if problems:
        shown = problems[:max_reported]
        raise DataError(
            f"{path}: {len(problems)} bad line(s); nothing was written.", shown, len(problems) - len(shown)
        )
    if not examples:
        raise DataError(f"{path} holds no examples.")
    if unknown:
        keys = ", ".join(f'"{k}"' for k in sorted(unknown))
        warnings.warn(f"{path}: ignoring unknown field(s) {keys}", stacklevel=2)
    return examples


def labels_of(examples: Sequence[Example]) -> list[str]:
    """Distinct labels in order of first appearance (the order adapters store)."""
    return list(dict.fromkeys(e.label for e in examples))


def stratified_split(
    examples: Sequence[Example], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Seeded split keeping each label's share; every label gets at least one validation example."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), not {val_fraction}.")
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[e.label].append(e)
    if len(by_label) < 2:
        raise DataError(
            f"The data has only one label ({next(iter(by_label))!r}); a classifier needs at least two."
        )
    small = {label: len(v) for label, v in by_label.items() if len(v) < 2}
    if small:
        raise DataError(
            "Every label needs at least 2 examples (one to train on, one to validate): "
            + ", ".join(f"{label!r} has {n}" for label, n in small.items())
        )
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val
