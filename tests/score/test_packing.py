"""The packed-row layout on literal token ids: what each column holds, where it sits, what it sees.

No model: a mask row reads `cached keys | own keys`, `x` where the query sees that key. Token ids:
5-9 context (lead or prelude), 10-11 invocations (stems), 20-51 labels (branches), 0 padding.
"""

from dataclasses import FrozenInstanceError

import pytest
import torch

from validora.score.packing import Packed, Segment, pack


def seen(packed: Packed, row: int) -> list[str]:
    """Row `row`'s mask, one string per query column."""
    c = packed.cache_width
    out = []
    for q in packed.mask[row].tolist():
        keys = "".join("x" if k else "." for k in q)
        out.append(f"{keys[:c]}|{keys[c:]}" if c else keys)
    return out


CASES = {
    "one row, one branch, over a cache": dict(
        rows=[[Segment(stem=[10, 11], branches=[[20, 21]])]],
        kwargs=dict(cache=[[1, 1]]),
        ids=[[10, 11, 20]],
        positions=[[2, 3, 4]],
        masks=[["xx|x..", "xx|xx.", "xx|xxx"]],
        starts=(0,),
        targets=[[((1, 2), (20, 21))]],
    ),
    "several branches: each sees the stem and itself only": dict(
        rows=[[Segment(stem=[10], branches=[[20, 21], [30], [40, 41, 42]])]],
        kwargs={},
        ids=[[10, 20, 40, 41]],  # a branch's last token is only a target; [30] feeds nothing
        positions=[[0, 1, 1, 2]],
        masks=[["x...", "xx..", "x.x.", "x.xx"]],
        starts=(0,),
        targets=[[((0, 1), (20, 21)), ((0,), (30,)), ((0, 2, 3), (40, 41, 42))]],
    ),
    "rows of different lengths over a left-padded cache": dict(
        rows=[
            [Segment(stem=[10], branches=[[20, 21]])],
            [Segment(stem=[10], branches=[[20, 21], [30, 31]])],
        ],
        kwargs=dict(cache=[[0, 1, 1], [1, 1, 1]]),
        ids=[[10, 20, 0], [10, 20, 30]],
        positions=[[2, 3, 0], [3, 4, 4]],
        masks=[
            [".xx|x..", ".xx|xx.", "...|..x"],
            ["xxx|x..", "xxx|xx.", "xxx|x.x"],
        ],
        starts=(0, 0),
        targets=[[((0, 1), (20, 21))], [((0, 1), (20, 21)), ((0, 2), (30, 31))]],
    ),
    "left-padded leads instead of a cache (the full forward)": dict(
        rows=[[Segment(stem=[10], branches=[[20, 21]])]] * 2,
        kwargs=dict(leads=[[5, 6, 7], [8]]),
        ids=[[5, 6, 7, 10, 20], [0, 0, 8, 10, 20]],
        positions=[[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]],
        masks=[
            ["x....", "xx...", "xxx..", "xxxx.", "xxxxx"],
            ["x....", ".x...", "..x..", "..xx.", "..xxx"],
        ],
        starts=(3, 3),  # the adapter starts at the invocation
        targets=[[((3, 4), (20, 21))]] * 2,
    ),
    "several segments with preludes after a causal lead (one output, many checks)": dict(
        rows=[
            [
                Segment(stem=[10], branches=[[20, 21], [30, 31]], prelude=[7]),
                Segment(stem=[10], branches=[[40, 41]], prelude=[8, 9]),
                Segment(stem=[11], branches=[[50, 51]], prelude=[7]),  # the same prelude: placed once
            ]
        ],
        kwargs=dict(leads=[[5, 6]], adapters=["a"], causal_lead=True),
        ids=[[5, 6, 7, 8, 9, 10, 20, 30, 10, 40, 11, 50]],
        positions=[[0, 1, 2, 2, 3, 3, 4, 4, 4, 5, 3, 4]],
        masks=[
            [
                "x...........",
                "xx..........",
                "xxx.........",
                "xx.x........",
                "xx.xx.......",
                "xxx..x......",
                "xxx..xx.....",
                "xxx..x.x....",
                "xx.xx...x...",
                "xx.xx...xx..",
                "xxx.......x.",
                "xxx.......xx",
            ]
        ],
        starts=(5,),  # preludes are the base model's; the adapter runs from the first invocation on
        targets=[[((5, 6), (20, 21)), ((5, 7), (30, 31)), ((8, 9), (40, 41)), ((10, 11), (50, 51))]],
    ),
    "one row per adapter over a shared cache (a mixed batch)": dict(
        rows=[
            [Segment(stem=[10], branches=[[20, 21]], prelude=[7])],
            [Segment(stem=[11], branches=[[30, 31]])],
        ],
        kwargs=dict(cache=[[1, 1], [1, 1]], adapters=["a", None]),
        ids=[[7, 10, 20], [11, 30, 0]],
        positions=[[2, 3, 4], [2, 3, 0]],
        masks=[
            ["xx|x..", "xx|xx.", "xx|xxx"],
            ["xx|x..", "xx|xx.", "..|..x"],
        ],
        starts=(1, 3),  # the base model's row gives an aLoRA adapter no token
        targets=[[((1, 2), (20, 21))], [((0, 1), (30, 31))]],
    ),
    "a lead over a cache": dict(
        rows=[[Segment(stem=[10], branches=[[20, 21]])]],
        kwargs=dict(cache=[[1]], leads=[[5]]),
        ids=[[5, 10, 20]],
        positions=[[1, 2, 3]],
        masks=[["x|x..", "x|xx.", "x|xxx"]],
        starts=(1,),
        targets=[[((1, 2), (20, 21))]],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_layout(case):
    packed = pack(case["rows"], 0, **case["kwargs"])
    assert packed.ids.tolist() == case["ids"]
    assert packed.positions.tolist() == case["positions"]
    assert [seen(packed, r) for r in range(len(case["rows"]))] == case["masks"]
    assert packed.adapter_starts == case["starts"]
    assert [[tuple(t) for t in row] for row in packed.targets] == case["targets"]
    assert packed.kept == sorted({c for row in case["targets"] for cols, _ in row for c in cols})


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_branch_reads_as_its_own_prompt(case):
    """Each branch token is fed one column after the one that predicts it, one position further on."""
    packed = pack(case["rows"], 0, **case["kwargs"])
    for r, row in enumerate(packed.targets):
        for columns, tokens in row:
            fed = list(columns[1:])
            assert packed.ids[r, fed].tolist() == list(tokens[:-1])
            assert packed.positions[r, list(columns)].tolist() == list(
                range(
                    int(packed.positions[r, columns[0]]), int(packed.positions[r, columns[0]]) + len(columns)
                )
            )
    assert packed.mask.any(-1).all()  # no query sees nothing (SDPA would return NaN)


def test_mixed_batch_and_causal_lead_are_recorded():
    rows = [[Segment([10], [[20, 21]])], [Segment([11], [[30, 31]])]]
    mixed = pack(rows, 0, cache=[[1, 1], [1, 1]], adapters=["a", None])
    assert mixed.mixed and mixed.adapters == ("a", None) and mixed.causal_lead == 0
    assert mixed.cache_width == 2
    one = pack([[Segment([10], [[20, 21]])]], 0, leads=[[5, 6]], adapters=["a"], causal_lead=True)
    assert not one.mixed and one.causal_lead == 2 and one.cache_width == 0
    assert pack([[Segment([10], [[20, 21]])]], 0).adapters is None


def test_packed_rows_cannot_be_changed_after_packing():
    packed = pack([[Segment([10], [[20, 21]])]], 0, adapters=["a"])
    with pytest.raises(FrozenInstanceError):
        packed.adapters = None  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        packed.adapter_starts = (3,)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(leads=[[5, 6], [7]], causal_lead=True), "one length"),
        (dict(cache=[[1], [1]], leads=[[5], [6]], causal_lead=True), "nothing cached"),
        (dict(cache=[[1]]), "as many"),
        (dict(adapters=["a"]), "as many"),
    ],
)
def test_inconsistent_layouts_are_refused(kwargs, message):
    rows = [[Segment([10], [[20, 21]])]] * 2
    with pytest.raises(ValueError, match=message):
        pack(rows, 0, **kwargs)


def test_padding_takes_the_pad_id():
    packed = pack([[Segment([10], [[20, 21]])], [Segment([10], [[20, 21, 22]])]], 99)
    assert packed.ids.tolist() == [[10, 20, 99], [10, 20, 21]]
    assert packed.ids.dtype == torch.long
