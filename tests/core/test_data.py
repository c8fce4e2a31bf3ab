import json
import random
import warnings
from pathlib import Path

import pytest

from validora.core.data import Example, is_blank, labels_of, load_jsonl, load_texts, stratified_split
from validora.errors import DataError

from ..conftest import EXAMPLES, LABELS, write_jsonl


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"item": "fine", "label": "a"}),
        "{not json",
        json.dumps({"item": "no label"}),
        json.dumps({"item": 3, "label": "a"}),
        "",
        json.dumps({"item": "   ", "label": "a"}),
        json.dumps(["a", "list"]),
        json.dumps({"item": "ok", "label": "b", "requirement": 5}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    lines_reported = [p.line for p in err.value.problems]
    assert lines_reported == [2, 3, 4, 6, 7, 8]
    text = str(err.value)
    assert f"{path}:2: invalid JSON" in text
    assert 'missing field "label"' in text
    assert 'field "item" must be a string, got int' in text
    assert 'field "item" is empty' in text
    assert "expected a JSON object, got list" in text


def test_items_of_only_invisible_characters_are_refused_as_blank(tmp_path: Path):
    invisible = ["\u200b", "\u2800\u3164", "\ufeff\u200d\u2060", "\u115f\u1160\uffa0", "\u0301", "\x00\u3000"]
    for text in invisible:
        assert is_blank(text), repr(text)
    for text in ["a\u200b", "\u2800x", "\u00e9", "0", "\u4e00"]:
        assert not is_blank(text), repr(text)
    path = write_jsonl(tmp_path / "texts.jsonl", [{"item": text} for text in ["fine", *invisible]])
    with pytest.raises(DataError) as err:
        load_texts(path)
    assert [p.line for p in err.value.problems] == list(range(2, 2 + len(invisible)))
    assert 'field "item" is blank (only invisible characters)' in str(err.value)
    path = write_jsonl(tmp_path / "labeled.jsonl", [{"item": "fine", "label": "\u200b"}])
    with pytest.raises(DataError, match='field "label" is blank'):
        load_jsonl(path)


def test_bom_and_bad_utf8_are_named(tmp_path: Path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"item": "x", "label": "a"}\n' + b'{"item": "\xff", "label": "b"}\n')
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert [p.line for p in err.value.problems] == [1, 2]
    assert "byte-order mark" in str(err.value) and "not valid UTF-8" in str(err.value)


def test_report_is_capped_but_counts_the_rest(tmp_path: Path):
    path = tmp_path / "many.jsonl"
    path.write_text("oops\n" * 30, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_jsonl(path, max_reported=5)
    assert len(err.value.problems) == 5 and err.value.more == 25
    assert "and 25 more bad line(s)" in str(err.value)


def test_unknown_keys_warn_once(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "x.jsonl", [{"item": "a", "label": "x", "id": 1}, {"item": "b", "label": "y", "id": 2}]
    )
    with pytest.warns(UserWarning, match='"id"') as record:
        examples = load_jsonl(path)
    assert len(record) == 1
    assert [e.line for e in examples] == [1, 2]


def test_split_is_stratified_seeded_and_refuses_degenerate_data(tmp_path: Path):
    examples = load_jsonl(EXAMPLES / "engine_failures.jsonl")
    train, val = stratified_split(examples, 0.2, seed=3)
    assert len(train) + len(val) == len(examples)
    for label in LABELS:
        n = sum(e.label == label for e in examples)
        assert sum(e.label == label for e in val) == round(n * 0.2)
    again = stratified_split(examples, 0.2, seed=3)
    assert [e.line for e in again[1]] == [e.line for e in val]
    assert [e.line for e in stratified_split(examples, 0.2, seed=4)[1]] != [e.line for e in val]
    with pytest.raises(DataError, match="only one label"):
        stratified_split([e for e in examples if e.label == "no_failure"])
    with pytest.raises(DataError, match="at least 2 examples"):
        stratified_split([examples[0], *[e for e in examples if e.label != examples[0].label]])


def test_example_data_is_what_the_demo_promises():
    train = load_jsonl(EXAMPLES / "engine_failures.jsonl")
    test = load_jsonl(EXAMPLES / "engine_failures_test.jsonl")
    assert len(train) >= 240 and sorted(labels_of(train)) == sorted(LABELS)
    assert sorted(labels_of(test)) == sorted(LABELS)
    assert not {e.item for e in train} & {e.item for e in test}
    lengths = [len(e.item.split()) for e in train]
    assert min(lengths) < 6 and max(lengths) > 30  # terse and detailed notes, not one template


# Validation lines of examples/engine_failures.jsonl for seed 0, fraction 0.2, as split before duplicates were
# grouped: the benchmark figures were measured on this split, so grouping must not move it.
ENGINE_VAL_SEED0 = [216, 169, 106, 77, 212, 254, 86, 31, 92, 167, 23, 163, 121, 5, 208, 39, 247, 12, 203, 61, 262,
                    81, 129, 125, 146, 109, 185, 223, 134, 173, 64, 233, 122, 65, 164, 82, 117, 100, 202, 229, 249,
                    225, 103, 206, 179, 56, 68, 183, 181, 154, 243, 252]  # fmt: skip


def test_split_without_duplicates_is_unchanged(tmp_path):
    # The first 264 lines are the file those figures were measured on (240 notes were appended later).
    first = "".join((EXAMPLES / "engine_failures.jsonl").read_text(encoding="utf-8").splitlines(True)[:264])
    (tmp_path / "engine.jsonl").write_text(first, encoding="utf-8")
    examples = load_jsonl(tmp_path / "engine.jsonl")
    train, val = stratified_split(examples, 0.2, seed=0)
    assert [e.line for e in val] == ENGINE_VAL_SEED0
    assert sorted(e.line for e in train + val) == [e.line for e in examples]


def _dupes() -> list[Example]:
    """Four labels, most items repeated 2-4 times (some under another requirement), in a shuffled order."""
    rows = []
    for label in "abcd":
        for k in range(6):
            rows += [(f"{label} item {k}", label, None)] * (1 + k % 4)
        rows.append((f"{label} item 0", label, "a requirement"))  # another unit: may land anywhere
    random.Random(5).shuffle(rows)
    return [Example(item, label, req, n) for n, (item, label, req) in enumerate(rows, start=1)]


def test_duplicates_never_cross_the_split():
    examples = _dupes()
    for seed in range(40):
        for fraction in (0.1, 0.2, 0.5):
            train, val = stratified_split(examples, fraction, seed)
            assert sorted(e.line for e in train + val) == [e.line for e in examples]
            units = lambda split: {(e.item, e.requirement) for e in split}  # noqa: E731
            assert not units(train) & units(val), (seed, fraction)
            assert {e.label for e in val} == {e.label for e in train} == set("abcd")


def test_every_label_gets_a_validation_example_when_its_items_repeat():
    rows = [Example("x", "a", None, 1), Example("y", "b", None, 2), Example("z", "b", None, 3)]
    rows += [Example("w", "a", None, n) for n in range(4, 14)]  # label a: two distinct items, "w" ten times
    for seed in range(20):
        train, val = stratified_split(rows, 0.2, seed)
        assert {e.label for e in val} == {e.label for e in train} == {"a", "b"}
        assert {e.item for e in val if e.label == "a"} in ({"x"}, {"w"})
    with pytest.raises(DataError, match=r"repeated item counts once.*'a' has 1"):
        stratified_split([Example("w", "a", None, n) for n in range(1, 5)] + rows[1:3])


def test_conflicting_labels_warn_with_line_numbers():
    rows = [Example(f"i{n}", "ab"[n % 2], None, n) for n in range(1, 11)]
    rows += [Example("i3", "b", None, 11), Example("i3", "a", None, 12)]  # line 3 says "b"
    with pytest.warns(
        UserWarning, match=r"1 item\(s\) appear with conflicting labels: lines 3, 11, 12 \('b', 'a'\)"
    ):
        _, val = stratified_split(rows, 0.3, 0)
    in_val = {e.line for e in val}
    assert {3, 11, 12} <= in_val or not {3, 11, 12} & in_val
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_split(rows[:10], 0.3, 0)  # no conflict, no warning


def test_unknown_keys_warn_once_naming_them_and_the_file(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"item": "a", "label": "x", "note": 1}, {"item": "b", "label": "y", "id": 2}]
    )
    with pytest.warns(UserWarning, match=r'd\.jsonl: ignoring unknown field\(s\) "id", "note"') as caught:
        examples = load_jsonl(path)
    assert [e.item for e in examples] == ["a", "b"] and len(caught) == 1


def test_deep_nesting_and_lone_surrogates_are_bad_lines_with_their_numbers(tmp_path: Path):
    from validora.core.data import load_texts

    path = tmp_path / "hostile.jsonl"
    deep = '{"item": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "a"}'
    rows = [json.dumps({"item": "fine", "label": "a"}), deep, '{"item": "x\\ud800y", "label": "b"}',
            '{"item": "ok", "label": "b", "requirement": "\\udfff"}']  # fmt: skip
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for read in (load_jsonl, lambda p: load_texts(p, fmt="jsonl")):
        with pytest.raises(DataError) as err:
            read(path)
        assert [p.line for p in err.value.problems] == [2, 3, 4]
        text = str(err.value)
        assert "nested deeper than 64" in text and text.count("lone surrogate") == 2


def test_more_than_a_thousand_labels_are_warned_about():
    many = [Example(f"text {i} {j}", f"label{i}") for i in range(1001) for j in range(2)]
    with pytest.warns(UserWarning, match="1001 distinct labels"):
        stratified_split(many, 0.5, seed=0)
    few = [Example(f"text {i} {j}", f"label{i}") for i in range(1000) for j in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stratified_split(few, 0.5, seed=0)
