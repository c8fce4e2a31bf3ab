"""The one layout of packed rows: stems and label branches over a shared context, for a single forward.

Scoring a label, training on a gold label and judging one output with many checks all feed a model
rows of the same shape. A row's context (the item, or the output being judged) is either already in a
key/value cache (`cache`) or placed at the row's start (`leads`, left-padded to one width). After it
come segments: each segment's prelude (base-model tokens, such as the rest of a requirement line),
then its stem (the invocation, where an aLoRA adapter starts) and its branches (the labels, each fed
without its last token, which is only ever a target). Each token sees the real context, its own
segment's earlier parts and its own earlier tokens, never another branch or another segment; position
ids count the context, so every branch sits where it would in a prompt of its own. Padding sees only
itself, so no row of the mask is empty. Only torch is needed: the tables in tests/score/test_packing.py pin
the layout on literal token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class Segment:
    """One stem and its branches, after an optional prelude of base-model tokens."""

    stem: Sequence[int]  # where an aLoRA adapter starts (the invocation)
    branches: Sequence[Sequence[int]]  # each fed without its last token, which is only a target
    prelude: Sequence[int] = ()  # before the stem; identical preludes in one row are placed once


class Target(NamedTuple):
    """A branch's tokens and the columns whose logits predict them."""

    columns: tuple[int, ...]
    tokens: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Packed:
    """Rows ready for one forward; built by `pack` and never changed afterwards."""

    ids: torch.Tensor  # [B, S]
    positions: torch.Tensor  # [B, S] absolute position ids (the cached context counted)
    mask: torch.Tensor  # [B, S, C + S] bool: the keys (C cached, then the row's own) each token sees
    targets: tuple[tuple[Target, ...], ...]  # per row, per branch
    adapter_starts: tuple[int, ...]  # per row, the column from which an aLoRA adapter is active (S: none)
    # per row, the adapter it runs (None: the base model). Rows of several adapters run in one forward
    # (PEFT's mixed batches); a single adapter is the caller's to activate. None: the active adapter.
    adapters: tuple[str | None, ...] | None = None
    causal_lead: int = 0  # leading columns of plain causal text (nothing cached, no padding)

    @property
    def cache_width(self) -> int:
        return int(self.mask.shape[2] - self.ids.shape[1])

    @property
    def mixed(self) -> bool:
        """Whether the rows run different adapters in one forward."""
        return self.adapters is not None and len(set(self.adapters)) > 1

    @functools.cached_property
    def kept(self) -> list[int]:
        """The only columns whose logits are needed (the LM head is a fifth of the model's compute)."""
        return sorted({c for row in self.targets for target in row for c in target.columns})


def pack(
    rows: Sequence[Sequence[Segment]],
    pad_id: int,
    *,
    cache: Sequence[Sequence[int]] | torch.Tensor | None = None,
    leads: Sequence[Sequence[int]] | None = None,
    adapters: Sequence[str | None] | None = None,
    causal_lead: bool = False,
) -> Packed:
    """Lay out `lead + preludes + (stem + branches) per segment` for every row.

    `cache[b]` marks with 1 the real tokens among the C cached columns of row b (a left-padded batch
    cache); `leads[b]` are context tokens placed at row b's start, after the cache. `adapters[b]` is
    the adapter row b runs (a base-model row, None, gives an aLoRA adapter no token). `causal_lead`
    says that the leads may take the causal attention kernel: it needs leads of one length and no cache.
    """
    n = len(rows)
    seen = torch.zeros((n, 0), dtype=torch.bool) if cache is None else torch.as_tensor(cache).bool().cpu()
    leads = [list(lead) for lead in leads] if leads is not None else [[] for _ in rows]
    if seen.shape[0] != n or len(leads) != n or (adapters is not None and len(adapters) != n):
        raise ValueError(f"{n} rows need as many cache rows, leads and adapters.")
    n_lead = max(map(len, leads), default=0)
    if causal_lead and (seen.shape[1] or any(len(lead) != n_lead for lead in leads)):
        raise ValueError("A causal lead needs leads of one length and nothing cached.")
    preludes = [list(dict.fromkeys(tuple(s.prelude) for s in row if s.prelude)) for row in rows]
    width = max(
        n_lead + sum(map(len, pre)) + sum(len(s.stem) + sum(len(b) - 1 for b in s.branches) for s in row)
        for pre, row in zip(preludes, rows, strict=True)
    )
    n_cache = seen.shape[1]
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width, n_cache + width), dtype=torch.bool)
    own = mask[:, :, n_cache:]  # a view: the row's own columns

    def place(r: int, col: int, tokens: Sequence[int], first: int, *sees: slice) -> slice:
        """Tokens at `col` on, position ids from `first`, seeing the cache, `sees` and their own past."""
        cols = slice(col, col + len(tokens))
        ids[r, cols] = torch.tensor(list(tokens), dtype=torch.long)
        positions[r, cols] = torch.arange(first, first + len(tokens))
        own[r, cols, cols] = torch.ones((len(tokens), len(tokens)), dtype=torch.bool).tril()
        mask[r, cols, :n_cache] = seen[r]
        for part in sees:
            own[r, cols, part] = True
        return cols

    targets: list[tuple[Target, ...]] = []
    starts: list[int] = []
    for r, (pre, row) in enumerate(zip(preludes, rows, strict=True)):
        context = int(seen[r].sum())  # the cached tokens come first in every position count
        lead = place(r, n_lead - len(leads[r]), leads[r], context)
        context += len(leads[r])
        col = n_lead
        prelude_cols: dict[tuple[int, ...], slice] = {}
        for tokens in pre:
            prelude_cols[tokens] = place(r, col, tokens, context, lead)
            col += len(tokens)
        starts.append(width if adapters is not None and adapters[r] is None else col)
        row_targets = []
        for seg in row:
            front = prelude_cols.get(tuple(seg.prelude), slice(0, 0))
            first = context + len(seg.prelude)
            stem = place(r, col, seg.stem, first, lead, front)
            col = stem.stop
            for branch in seg.branches:
                cols = place(r, col, branch[:-1], first + len(seg.stem), lead, front, stem)
                row_targets.append(Target((stem.stop - 1, *range(cols.start, cols.stop)), tuple(branch)))
                col = cols.stop
        pads = [*range(lead.start), *range(col, width)]
        own[r, pads, pads] = True  # padding attends to itself only, so no row of the mask is empty
        targets.append(tuple(row_targets))
    return Packed(
        ids=ids,
        positions=positions,
        mask=mask,
        targets=tuple(targets),
        adapter_starts=tuple(starts),
        adapters=None if adapters is None else tuple(adapters),
        causal_lead=n_lead if causal_lead else 0,
    )
