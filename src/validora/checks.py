"""Many checks of one output: its prefix once, each requirement line once, each adapter's suffixes in one row.

Every check's prompt is `output + requirement line + invocation + label`. The tokens all checks share
(the output) are run once through the base model; the requirement lines that follow are appended to
that cache in one more base-model pass, each seeing only the output and itself; then each aLoRA
adapter scores all of its checks in a single packed row over that cache, each check seeing the
output, its own requirement line and its own tokens. LoRA adapters change the prefix itself, so
their checks take the full path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from validora.scoring import (
    LabelScores,
    Packed,
    Prefix,
    base_model_only,
    branch_logprobs,
    full_loglik,
    prefill,
    suffix_forward,
)


@dataclass(frozen=True)
class Check:
    """One requirement judged by one adapter (None: the base model, e.g. a yes/no judge format)."""

    adapter: str | None
    fmt: Any  # PromptFormat or anything with labels, label_ids, invocation_ids, pad_id, encode()
    requirement: str | None


@dataclass(frozen=True)
class CheckResult:
    scores: LabelScores
    seconds: float  # this check's share of the adapter pass, plus its own full path for LoRA


@dataclass(frozen=True)
class Segment:
    visible: Sequence[int]  # cache columns this segment sees
    start: int  # position id of its first token
    stem: Sequence[int]
    branches: Sequence[Sequence[int]]  # each fed without its last token, which is only a target


def pack_segments(segments: Sequence[Segment], cache_width: int, pad_id: int) -> Packed:
    """One row of independent segments over a shared cache, as a `Packed` with absolute positions."""
    width = sum(len(s.stem) + sum(len(b) - 1 for b in s.branches) for s in segments)
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    positions = torch.zeros((1, width), dtype=torch.long)
    own = torch.zeros((1, width, width), dtype=torch.bool)
    seen = torch.zeros((1, width, cache_width), dtype=torch.bool)
    targets: list[tuple[list[int], list[int]]] = []
    col = 0
    for seg in segments:
        n_stem = len(seg.stem)
        stem_cols = slice(col, col + n_stem)
        ids[0, stem_cols] = torch.tensor(list(seg.stem), dtype=torch.long)
        positions[0, stem_cols] = torch.arange(seg.start, seg.start + n_stem)
        own[0, stem_cols, stem_cols] = torch.ones((n_stem, n_stem), dtype=torch.bool).tril()
        seg_start = col
        col += n_stem
        for branch in seg.branches:
            n = len(branch) - 1
            cols = slice(col, col + n)
            ids[0, cols] = torch.tensor(list(branch[:-1]), dtype=torch.long)
            positions[0, cols] = torch.arange(seg.start + n_stem, seg.start + n_stem + n)
            own[0, cols, stem_cols] = True
            own[0, cols, cols] = torch.ones((n, n), dtype=torch.bool).tril()
            targets.append(([seg_start + n_stem - 1, *range(col, col + n)], list(branch)))
            col += n
        seen[0, seg_start:col, list(seg.visible)] = True
    return Packed(ids=ids, positions=positions, suffix_mask=own, targets=[targets], cache_mask=seen)


def _common_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def _extend(model: Any, prefix: Prefix, middles: Sequence[Sequence[int]], pad_id: int) -> list[list[int]]:
    """Append each distinct requirement line to the cache (base model); return each one's columns."""
    common = list(range(prefix.width))
    segments, columns, col = [], [], prefix.width
    for m in middles:
        segments.append(Segment(visible=common, start=prefix.width, stem=m, branches=()))
        columns.append(list(range(col, col + len(m))))
        col += len(m)
    if col > prefix.width:
        with base_model_only(model):
            suffix_forward(model, prefix, pack_segments(segments, prefix.width, pad_id))
    return columns


def _activate(model: Any, adapter: str | None) -> AbstractContextManager[None]:
    if adapter is None:
        return base_model_only(model)
    model.set_adapter(adapter)
    return nullcontext()


@torch.no_grad()
def score_checks(
    model: Any, item: str, checks: Sequence[Check], *, alora: dict[str | None, bool]
) -> list[CheckResult]:
    """Label probabilities for every check of one output, sharing everything that can be shared.

    `alora[name]` says whether adapter `name` is an aLoRA adapter (True for the base model).
    """
    results: list[CheckResult | None] = [None] * len(checks)
    prefixes = [c.fmt.encode(item, c.requirement).prefix for c in checks]  # each prompt encoded once
    shared = [i for i, c in enumerate(checks) if alora.get(c.adapter, False)]
    for i, check in enumerate(checks):
        if i not in shared:
            started = time.perf_counter()
            with _activate(model, check.adapter):
                ll = full_loglik(model, check.fmt, [prefixes[i]])
            results[i] = CheckResult(_scores(check.fmt, ll[0]), time.perf_counter() - started)
    # Checks whose prompts start alike share one cache (adapter prompts start with the output,
    # judge prompts with the chat template); the common part is computed once per group.
    groups: dict[int, list[int]] = {}
    for i in shared:
        groups.setdefault(prefixes[i][0], []).append(i)
    for members in groups.values():
        passed = _shared_pass(model, [checks[i] for i in members], [prefixes[i] for i in members])
        for k, r in passed.items():
            results[members[k]] = r
    return [r for r in results if r is not None]


def _shared_pass(
    model: Any, checks: Sequence[Check], prefixes: Sequence[list[int]]
) -> dict[int, CheckResult]:
    started = time.perf_counter()
    n_common = _common_length(prefixes)  # at least 1: the caller groups by first token
    pad_id = checks[0].fmt.pad_id
    prefix = prefill(model, [prefixes[0][:n_common]], pad_id)
    middles = list(dict.fromkeys(tuple(p[n_common:]) for p in prefixes))
    middle_cols = dict(zip(middles, _extend(model, prefix, middles, pad_id), strict=True))
    base_length = prefix.cache.get_seq_length()
    shared_seconds = time.perf_counter() - started
    common_cols = list(range(n_common))
    out: dict[int, CheckResult] = {}
    by_adapter: dict[str | None, list[int]] = {}
    for i, c in enumerate(checks):
        by_adapter.setdefault(c.adapter, []).append(i)
    for adapter, idx in by_adapter.items():
        adapter_started = time.perf_counter()
        segments = []
        for i in idx:
            fmt, middle = checks[i].fmt, tuple(prefixes[i][n_common:])
            segments.append(
                Segment(
                    visible=common_cols + middle_cols[middle],
                    start=len(prefixes[i]),
                    stem=fmt.invocation_ids,
                    branches=[fmt.label_ids[label] for label in fmt.labels],
                )
            )
        packed = pack_segments(segments, base_length, pad_id)
        try:
            with _activate(model, adapter):
                logits = suffix_forward(model, prefix, packed)
        finally:
            extra = prefix.cache.get_seq_length() - base_length
            if extra > 0:
                prefix.cache.crop(-extra)
        logps = branch_logprobs(logits, packed)[0]
        pass_seconds = time.perf_counter() - adapter_started
        k = 0
        for i in idx:
            fmt = checks[i].fmt
            sums = torch.stack([lp.sum() for lp in logps[k : k + len(fmt.labels)]])
            k += len(fmt.labels)
            share = shared_seconds / len(checks) + pass_seconds / len(idx)
            out[i] = CheckResult(_scores(fmt, sums), share)
    return out


def _scores(fmt: Any, loglik: torch.Tensor) -> LabelScores:
    probs = dict(zip(fmt.labels, torch.softmax(loglik.float(), -1).tolist(), strict=True))
    return LabelScores(label=max(probs, key=probs.__getitem__), probs=probs)
