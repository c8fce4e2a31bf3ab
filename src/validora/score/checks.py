"""Many checks of one output in as few forwards as possible, sharing everything that can be shared.

Every check's prompt is `output + requirement line + invocation + label`. The tokens all checks share
(the output and the start of the requirement line) are computed once by the base model. A packed row
then holds the rest of each requirement line (base model) followed by each check's invocation and
labels (where the row's aLoRA adapter is active); each token sees the shared part, its own
requirement line and its own earlier tokens only. With one adapter the shared part leads that same
row, so everything is one forward; with several, the shared part is prefilled once and a second
forward holds one row per adapter over views of its cache (PEFT's mixed-adapter batches). On a CPU a
forward over a few dozen tokens costs mostly reading the weights, so the number of forwards matters
as much as the number of tokens. LoRA adapters change the shared part itself: they take the full path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from validora.core.prompting import Format
from validora.score.lexical import lexical_text
from validora.score.packing import Segment, pack
from validora.score.readout import Readout
from validora.score.scoring import (
    LabelScores,
    base_model_only,
    branch_logprobs,
    empty_prefix,
    expand_prefix,
    full_loglik,
    is_alora,
    prefill,
    suffix_forward,
)


@dataclass(frozen=True)
class Check:
    """One requirement judged by one adapter (None: the base model, e.g. a yes/no judge format)."""

    adapter: str | None
    fmt: Format  # PromptFormat, JudgeFormat: labels, label_ids, invocation_ids, pad_id, room(), encode()
    requirement: str | None
    readout: Readout = field(
        default_factory=Readout
    )  # the adapter's temperature and lexical model; plain for the judge


@dataclass(frozen=True)
class CheckResult:
    scores: LabelScores
    seconds: float  # this check's share of its shared pass, or its own full path for LoRA


def _common_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def _activate(model: Any, adapter: str | None) -> AbstractContextManager[None]:
    if adapter is None:
        return base_model_only(model)
    if model.active_adapter != adapter:
        model.set_adapter(adapter)  # walks every module (~10 ms): only when it changes
    return nullcontext()


@torch.no_grad()
def score_checks(
    model: Any, item: str, checks: Sequence[Check], *, alora: dict[str | None, bool]
) -> list[CheckResult]:
    """Label probabilities for every check of one output, sharing everything that can be shared.

    `alora[name]` says whether adapter `name` is an aLoRA adapter (True for the base model).
    """
    results: list[CheckResult | None] = [None] * len(checks)
    # Every check of one prompt kind (adapter prompts, judge prompts: they never share a cache) sees
    # the output cut at the same place (that kind's tightest room), so that a long output is shared
    # rather than truncated differently per requirement line; each prompt is encoded once.
    rooms: dict[type, int] = {}
    for c in checks:
        rooms[type(c.fmt)] = min(rooms.get(type(c.fmt), c.fmt.room(c.requirement)), c.fmt.room(c.requirement))
    prefixes = [c.fmt.encode(item, c.requirement, room=rooms[type(c.fmt)]).prefix for c in checks]
    shared = [i for i, c in enumerate(checks) if alora.get(c.adapter, False)]
    for i, check in enumerate(checks):
        if i not in shared:
            started = time.perf_counter()
            with _activate(model, check.adapter):
                ll = full_loglik(model, check.fmt, [prefixes[i]])
            results[i] = CheckResult(
                check.readout.scores(check.fmt.labels, ll, [lexical_text(item, check.requirement)])[0],
                time.perf_counter() - started,
            )
    # Checks whose prompts start alike share one cache (adapter prompts start with the output,
    # judge prompts with the chat template); the common part is computed once per group.
    groups: dict[int, list[int]] = {}
    for i in shared:
        groups.setdefault(prefixes[i][0], []).append(i)
    for members in groups.values():
        passed = _shared_pass(model, item, [checks[i] for i in members], [prefixes[i] for i in members])
        for k, r in passed.items():
            results[members[k]] = r
    return [r for r in results if r is not None]


def _shared_pass(
    model: Any, item: str, checks: Sequence[Check], prefixes: Sequence[list[int]]
) -> dict[int, CheckResult]:
    """The common prefix once and every check, in as few forwards as possible.

    One adapter (or only the judge): a single forward whose row starts with the common prefix.
    Several: the prefix is prefilled once, then one forward holds a row per adapter over its cache.
    """
    started = time.perf_counter()
    n_common = _common_length(prefixes)  # at least 1: the caller groups by first token
    pad_id = checks[0].fmt.pad_id
    by_adapter: dict[str | None, list[int]] = {}
    for i, c in enumerate(checks):
        by_adapter.setdefault(c.adapter, []).append(i)
    rows = [
        [
            Segment(
                prelude=prefixes[i][n_common:],
                stem=checks[i].fmt.invocation_ids,
                branches=[checks[i].fmt.label_ids[label] for label in checks[i].fmt.labels],
            )
            for i in idx
        ]
        for idx in by_adapter.values()
    ]
    common = prefixes[0][:n_common]
    if len(rows) == 1:
        (adapter,) = by_adapter
        packed = pack(rows, pad_id, leads=[common], adapters=[adapter], causal_lead=True)
        # One adapter is activated as usual, cheaper than a mixed batch; on an aLoRA model the base
        # model's row already gives the active adapter no token.
        if adapter is None and is_alora(model):
            context: AbstractContextManager[None] = nullcontext()
        else:
            context = _activate(model, adapter)
        with context:
            logits = suffix_forward(model, empty_prefix(1, next(model.parameters()).device), packed)
    else:
        prefix = expand_prefix(prefill(model, [common], pad_id), len(rows))
        packed = pack(rows, pad_id, cache=prefix.mask, adapters=list(by_adapter))
        logits = suffix_forward(model, prefix, packed)
    logps = branch_logprobs(logits, packed)
    share = (time.perf_counter() - started) / len(checks)
    out: dict[int, CheckResult] = {}
    for idx, row in zip(by_adapter.values(), logps, strict=True):
        k = 0
        for i in idx:
            fmt = checks[i].fmt
            sums = torch.stack([lp.sum() for lp in row[k : k + len(fmt.labels)]])
            k += len(fmt.labels)
            scores = checks[i].readout.scores(fmt.labels, sums, [lexical_text(item, checks[i].requirement)])[
                0
            ]
            out[i] = CheckResult(scores, share)
    return out
