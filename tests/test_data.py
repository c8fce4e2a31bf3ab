import json
from pathlib import Path

import pytest

from validora.data import labels_of, load_jsonl, stratified_split
from validora.errors import DataError

from .conftest import EXAMPLES, LABELS, write_jsonl


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
