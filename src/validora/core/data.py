"""Every input file: labeled JSONL (line-numbered errors, a seeded stratified split) and texts to classify
(JSONL or one text per line, read at once or streamed for batch prediction, with one format rule)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from validora.core.jsonio import MAX_DEPTH, check_value, parse_json
from validora.errors import DataError, LineProblem

KNOWN_KEYS = frozenset({"item", "label", "requirement"})
MAX_REPORTED = 20
MANY_LABELS = 1000  # above this many distinct labels, training data is warned about (a column of ids?)
TEXT_FORMATS = ("auto", "jsonl", "text")
BOM = b"\xef\xbb\xbf"
_BOM_PROBLEM = "file starts with a UTF-8 byte-order mark (BOM); save it without one"
_INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn"})  # controls, format, spaces, combining marks
_BLANK_LOOKING = frozenset("\u2800\u3164\u115f\u1160\uffa0")  # braille blank, Hangul fillers


@dataclass(frozen=True)
class Example:
    item: str
    label: str
    requirement: str | None = None
    line: int = 0


def is_blank(text: str) -> bool:
    """Whether `text` shows nothing: every character whitespace, invisible (zero-width, controls, combining
    marks alone) or a blank-looking letter (U+2800, the Hangul fillers). Such a text is refused as empty:
    a verdict on it would be a verdict on nothing."""
    return all(c.isspace() or c in _BLANK_LOOKING or unicodedata.category(c) in _INVISIBLE for c in text)


def check_line(raw: str, labeled: bool = True) -> tuple[Example | None, str | None, set[str]]:
    """Parse one line; return (example, problem, unknown keys)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})", set()
    except RecursionError:
        return None, f"invalid JSON (it is nested deeper than {MAX_DEPTH} levels)", set()
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON ({exc})", set()
    try:
        check_value(obj)  # nesting deeper than MAX_DEPTH, lone surrogates ("\ud800"): refused by line
    except ValueError as exc:
        return None, f"invalid JSON ({exc})", set()
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", set()
    for key in ("item", "label") if labeled else ("item",):
        if key not in obj:
            return None, f'missing field "{key}"', set()
        if not isinstance(obj[key], str):
            return None, f'field "{key}" must be a string, got {type(obj[key]).__name__}', set()
        if is_blank(obj[key]):
            shown = "empty" if not obj[key].strip() else "blank (only invisible characters)"
            return None, f'field "{key}" is {shown}', set()
    requirement = obj.get("requirement")
    if requirement is not None and not isinstance(requirement, str):
        return None, f'field "requirement" must be a string, got {type(requirement).__name__}', set()
    label = obj.get("label")
    return (
        Example(obj["item"], label.strip() if isinstance(label, str) else "", requirement),
        None,
        set(obj) - KNOWN_KEYS,
    )


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte {exc.start + 1}); save it as UTF-8"


def _read(path: Path) -> bytes:
    """The file's bytes, or a DataError naming it (missing, a directory, unreadable)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Data file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a JSONL file.") from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror or exc}") from None


def _decode_lines(raw: bytes, source: str | Path, problems: list[LineProblem]) -> list[tuple[int, str]]:
    """Non-blank lines as (line number, text); undecodable lines go to `problems` with their number."""
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            lines.append((number, line.decode("utf-8").removesuffix("\r")))
        except UnicodeDecodeError as exc:
            problems.append(LineProblem(Path(source), number, _not_utf8(exc)))
    return lines


def _raise_problems(source: str | Path, problems: list[LineProblem], max_reported: int) -> None:
    if problems:
        shown = problems[:max_reported]
        raise DataError(
            f"{source}: {len(problems)} bad line(s); nothing was written.", shown, len(problems) - len(shown)
        )


def _finish(
    source: str | Path,
    problems: list[LineProblem],
    max_reported: int,
    *,
    found: bool,
    what: str,
    unknown: set[str],
) -> None:
    """The end of every read: all bad lines at once, then an empty file, then one warning for unknown keys
    (stacklevel: the caller of the public reader)."""
    _raise_problems(source, problems, max_reported)
    if not found:
        raise DataError(f"{source} holds no {what}.")
    if unknown:
        keys = ", ".join(f'"{k}"' for k in sorted(unknown))
        warnings.warn(f"{source}: ignoring unknown field(s) {keys}", stacklevel=4)


def parse_jsonl(
    raw: bytes, source: str | Path, *, labeled: bool = True, max_reported: int = MAX_REPORTED
) -> list[Example]:
    """Examples from JSONL bytes (`source` names them in messages); see `load_jsonl`."""
    problems: list[LineProblem] = []
    if raw.startswith(BOM):
        problems.append(LineProblem(Path(source), 1, _BOM_PROBLEM))
        raw = raw[len(BOM) :]
    examples: list[Example] = []
    unknown: Counter[str] = Counter()
    for number, text in _decode_lines(raw, source, problems):
        example, problem, extra = check_line(text, labeled)
        if problem:
            problems.append(LineProblem(Path(source), number, problem))
        elif example is not None:
            examples.append(Example(example.item, example.label, example.requirement, number))
            unknown.update(extra)
    _finish(source, problems, max_reported, found=bool(examples), what="examples", unknown=unknown)
    return examples


def load_jsonl(path: str | Path, *, labeled: bool = True, max_reported: int = MAX_REPORTED) -> list[Example]:
    """Load every example, or raise one DataError listing every bad line (up to `max_reported`).

    `labeled=False` accepts lines without a label (texts to classify).
    """
    path = Path(path)
    return parse_jsonl(_read(path), path, labeled=labeled, max_reported=max_reported)


def _is_item_object(line: bytes) -> bool:
    try:
        obj = parse_json(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and "item" in obj


def check_format(fmt: str) -> None:
    """Refuse a format name other than auto, jsonl or text."""
    if fmt not in TEXT_FORMATS:
        raise DataError(f"fmt must be one of {', '.join(TEXT_FORMATS)}, not {fmt!r}.", option="fmt")


def resolve_format(fmt: str, source: str | Path, raw: bytes = b"") -> str:
    """How to read texts to classify from `source` ("-": stdin, whose bytes are `raw`): "jsonl" or "text".

    fmt "auto": a `.jsonl` suffix (any case) means JSONL, another file means plain text, and stdin is
    JSONL when every non-blank line is a JSON object with "item" (plain text when none is; a mix is
    refused). One rule for `load_texts` and for batch prediction to a file.
    """
    check_format(fmt)
    if fmt != "auto":
        return fmt
    if str(source) != "-":
        return "jsonl" if Path(source).suffix.lower() == ".jsonl" else "text"
    lines = [(n, line) for n, line in enumerate(raw.removeprefix(BOM).split(b"\n"), 1) if line.strip()]
    jsonish = [n for n, line in lines if _is_item_object(line)]
    if jsonish and len(jsonish) != len(lines):
        raise DataError(
            f"<stdin> mixes JSONL lines (for example line {jsonish[0]}) with plain text; "
            'pass fmt="jsonl" or fmt="text".'
        )
    return "jsonl" if jsonish else "text"


def load_texts(source: str | Path, raw: bytes | None = None, *, fmt: str = "auto") -> list[Example]:
    """Texts to classify (label ""), from JSONL ("item", optional "requirement") or one text per line.

    `raw` holds the bytes when they do not come from the file `source` (stdin: source "-"); the format
    is `resolve_format`'s.
    """
    check_format(fmt)
    stdin = str(source) == "-"
    name = "<stdin>" if stdin else source
    if raw is None:
        raw = _read(Path(source))
    sniffed = stdin and fmt == "auto"
    if not sniffed and resolve_format(fmt, source) == "jsonl":
        return parse_jsonl(raw, name, labeled=False)
    problems: list[LineProblem] = []
    lines = _decode_lines(raw.removeprefix(BOM), name, problems)
    _raise_problems(name, problems, MAX_REPORTED)  # stdin: a line that is not UTF-8 is reported first
    if sniffed and resolve_format(fmt, source, raw) == "jsonl":
        return parse_jsonl(raw, name, labeled=False)
    return [Example(text, "", None, number) for number, text in lines]


def _open_bytes(source: Path | bytes) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")


def _parse_text_line(number: int, raw: bytes, jsonl: bool) -> tuple[Example | None, str | None, set[str]]:
    """One streamed line (its bytes, newline included): (example, problem, unknown keys)."""
    if number == 1 and raw.startswith(BOM):
        if jsonl:
            return None, _BOM_PROBLEM, set()
        raw = raw[len(BOM) :]
    try:
        text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as exc:
        return None, _not_utf8(exc), set()
    if not jsonl:
        return Example(text, "", None, number), None, set()
    example, problem, extra = check_line(text, labeled=False)
    if example is None:
        return None, problem, extra
    return Example(example.item, "", example.requirement, number), None, extra


def stream_texts(source: Path | bytes, name: str, jsonl: bool) -> Iterator[Example]:
    """The input's texts, read line by line (a bad line here means the file changed since the scan)."""
    with _open_bytes(source) as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                example, problem, _ = _parse_text_line(number, raw, jsonl)
                if example is None:
                    raise DataError(f"{name}:{number}: {problem} (did the file change during the run?)")
                yield example


def scan_input(source: Path | bytes, name: str, jsonl: bool) -> tuple[str, int]:
    """(sha256 of the bytes, number of texts), reading once; every bad line is reported before any scoring."""
    digest, count, problems, unknown = hashlib.sha256(), 0, [], set()
    with _open_bytes(source) as f:
        for number, raw in enumerate(f, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            example, problem, extra = _parse_text_line(number, raw, jsonl)
            if example is None:
                problems.append(LineProblem(Path(name), number, problem or "unreadable"))
            count += 1
            unknown |= extra
    _finish(name, problems, MAX_REPORTED, found=bool(count), what="texts to classify", unknown=unknown)
    return digest.hexdigest(), count


def labels_of(examples: Sequence[Example]) -> list[str]:
    """Distinct labels in order of first appearance (the order adapters store)."""
    return list(dict.fromkeys(e.label for e in examples))


def _groups(examples: Sequence[Example]) -> list[list[Example]]:
    """Examples with the same item and requirement, in order of first appearance: one unit of the split."""
    by_key: dict[tuple[str, str], list[Example]] = {}
    for e in examples:
        by_key.setdefault((e.item, e.requirement or ""), []).append(e)
    return list(by_key.values())


def _warn_conflicts(groups: Sequence[Sequence[Example]]) -> None:
    conflicts = [g for g in groups if len({e.label for e in g}) > 1]
    if not conflicts:
        return
    shown = [
        f"lines {', '.join(str(e.line) for e in g)} ({', '.join(repr(label) for label in labels_of(g))})"
        for g in conflicts[:MAX_REPORTED]
    ]
    more = f"; and {len(conflicts) - len(shown)} more" if len(conflicts) > len(shown) else ""
    warnings.warn(
        f"{len(conflicts)} item(s) appear with conflicting labels: {'; '.join(shown)}{more}. "
        "Each is kept in one split under its most frequent label; fix or drop them.",
        stacklevel=3,
    )


def _majority(group: Sequence[Example]) -> str:
    """The group's most frequent label (the first seen on a tie): the stratum it is split in."""
    counts = Counter(e.label for e in group)
    return max(labels_of(group), key=lambda label: counts[label])


def stratified_split(
    examples: Sequence[Example], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Seeded split keeping each label's share; every label gets at least one validation example.

    Identical items (same text and requirement) stay together on one side, so repeated examples cannot
    inflate validation metrics; items seen with different labels are warned about with their line numbers.
    Without duplicates the split is the one earlier versions gave for the same seed.
    """
    if not 0 < val_fraction < 1:
        raise DataError(
            f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}.", option="val_fraction"
        )
    labels = labels_of(examples)
    if len(labels) > MANY_LABELS:
        warnings.warn(
            f"The data has {len(labels)} distinct labels (more than {MANY_LABELS}); each becomes one class of "
            "the adapter, its prompts scored once per label. Is the label field holding ids or free text?",
            stacklevel=2,
        )
    if len(labels) < 2:
        raise DataError(f"The data has only one label ({labels[0]!r}); a classifier needs at least two.")
    groups = _groups(examples)
    _warn_conflicts(groups)
    by_label: dict[str, list[list[Example]]] = defaultdict(list)
    for g in groups:
        by_label[_majority(g)].append(g)
    small = {label: len(by_label[label]) for label in labels if len(by_label[label]) < 2}
    if small:
        raise DataError(
            "Every label needs at least 2 examples (one to train on, one to validate; a repeated item counts once): "
            + ", ".join(f"{label!r} has {n}" for label, n in small.items())
        )
    rng = random.Random(seed)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        stratum = list(by_label[label])
        rng.shuffle(stratum)
        n = sum(map(len, stratum))
        target = min(n - 1, max(1, round(n * val_fraction)))
        chosen: set[int] = set()
        held = 0
        for i, g in enumerate(stratum):  # without duplicates: the first `target` examples
            if held + len(g) <= target:
                chosen.add(i)
                held += len(g)
        if not chosen:  # every group is larger than the share: hold out the smallest
            chosen.add(min(range(len(stratum)), key=lambda i: len(stratum[i])))
        for i, g in enumerate(stratum):
            (val if i in chosen else train).extend(g)
    missing = [label for label in labels if not any(e.label == label for e in val)]
    if missing:
        raise DataError(
            f"No validation example is left for {', '.join(map(repr, missing))}: its items also carry "
            "another label (see the warning). Fix the conflicting labels."
        )
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val
