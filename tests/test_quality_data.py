"""The quality suite's split and passage builders (benchmarks/quality_data.py), on small synthetic inputs.

These are pure functions: no network, no model. They decide what the benchmark measures, so a leak
(a document on both sides of a split) or an unbalanced requirement set would make every figure wrong.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from baselines import ece, text_of, validation_split
from quality_data import (
    balanced_quota,
    cut,
    group_split,
    passages,
    per_label_sample,
    read_tab,
    requirement_pairs,
    split_hash,
)


def test_cut_keeps_the_first_words_and_normalises_whitespace():
    assert cut("a  b\tc\nd e", 3) == "a b c"
    assert cut("short", 60) == "short"


def test_passages_are_consecutive_and_capped():
    text = " ".join(f"w{i}" for i in range(200))
    got = passages(text, words=60, keep=3)
    assert [p.split()[0] for p in got] == ["w0", "w60", "w120"]
    assert all(len(p.split()) == 60 for p in got)
    # a tail of 20 words (200 = 3 x 60 + 20) counts only when more passages are wanted
    assert len(passages(text, words=60, keep=10)) == 4
    assert passages(" ".join(["x"] * 10), words=60, keep=3) == []  # under min_words: nothing


def test_group_split_is_stratified_disjoint_and_seeded():
    labels = ["a"] * 10 + ["b"] * 20
    train, test = group_split(labels, 0.3, seed=1)
    assert not set(train) & set(test) and sorted(train + test) == list(range(30))
    assert Counter(labels[i] for i in test) == {"a": 3, "b": 6}
    assert group_split(labels, 0.3, seed=1) == (train, test)
    assert group_split(labels, 0.3, seed=2) != (train, test)


def test_group_split_keeps_a_training_group_for_tiny_labels():
    train, _ = group_split(["a", "a", "b", "b", "b"], 0.9, seed=0)
    assert {"a", "b"} <= {["a", "a", "b", "b", "b"][i] for i in train}


def test_per_label_sample_respects_quota_and_drops_duplicates():
    pairs = [(f"t{i % 7}", "x") for i in range(30)] + [(f"u{i}", "y") for i in range(5)] + [("z", "q")]
    got = per_label_sample(pairs, {"x": 10, "y": 3}, seed=0)
    counts = Counter(lab for _, lab in got)
    assert counts == {"x": 7, "y": 3}  # x has only 7 distinct texts; q is not asked for
    assert len(set(got)) == len(got)


def test_balanced_quota_moves_a_short_labels_share_to_the_others():
    assert balanced_quota({"a": 100, "b": 100, "c": 2}, 30) == {"a": 14, "b": 14, "c": 2}
    assert sum(balanced_quota({"a": 5, "b": 5}, 30).values()) == 10  # never more than there is


def test_requirement_pairs_give_each_item_one_yes_and_one_other_topics_no():
    reqs = {"t1": "R1", "t2": "R2", "t3": "R3"}
    items = [(f"i{k}", f"t{k % 3 + 1}") for k in range(9)]
    rows = requirement_pairs(items, reqs, seed=0)
    assert len(rows) == 18 and Counter(r["label"] for r in rows) == {"yes": 9, "no": 9}
    for text, topic in items:
        mine = {r["label"]: r["requirement"] for r in rows if r["item"] == text}
        assert mine["yes"] == reqs[topic]
        assert mine["no"] in set(reqs.values()) - {reqs[topic]}


def test_read_tab_picks_columns_by_name_and_skips_missing_labels(tmp_path):
    path = tmp_path / "x.tab"
    path.write_text(
        "Cls\tTitle\tBody\nd\tstring\tstring\nclass\t\tinclude=True\n"
        "a\tT1\tfirst text\n?\tT2\tno label\n\tT3\tempty label\nb\tT4\tsecond text\n",
        encoding="utf-8",
    )
    assert read_tab(path, "Body", "Cls") == [("first text", "a"), ("second text", "b")]


def test_split_hash_changes_with_the_rows():
    a = [{"item": "x", "label": "l"}]
    assert split_hash(a, a) == split_hash(list(a), list(a))
    assert split_hash(a, a) != split_hash(a, [{"item": "y", "label": "l"}])


def test_validation_split_is_validoras_own_20_percent():
    rows = [{"item": f"i{k}", "label": "ab"[k % 2]} for k in range(20)]
    fit, val = validation_split(rows)
    assert sorted(fit + val) == list(range(20)) and len(val) == 4
    assert Counter(rows[i]["label"] for i in val) == {"a": 2, "b": 2}


def test_text_of_puts_the_requirement_first():
    assert text_of({"item": "I", "label": "yes", "requirement": "R"}) == "R\nI"
    assert text_of({"item": "I", "label": "yes"}) == "I"


def test_ece_of_a_known_case():
    # two items at 0.9 (one right) and two at 0.6 (both right): |0.5-0.9| * 2/4 + |1.0-0.6| * 2/4 = 0.4
    probs = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]]
    assert ece(probs, ["a", "b", "b", "b"], ["a", "b"]) == pytest.approx(0.4)
