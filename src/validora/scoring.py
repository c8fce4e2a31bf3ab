"""Label scoring with a shared prefix cache.

An item's prefix (item + requirement line) is run once through the base model. Its suffixes are
then scored in one forward per batch: each row holds the invocation once ("stem") followed by every
label + end-of-turn ("branches") packed after it, with a 4-D attention mask in which each branch
sees the prefix, the stem and only its own earlier tokens, and position ids that restart after the
stem for every branch. Copying the cache once per label would cost as much as the prefill itself.
Training uses the same pass with one branch (the gold label) per row.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from validora.attention import CAUSAL_LEAD
from validora.prompting import PromptFormat

StoredKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), shape [heads, len, dim]


@dataclass
class Prefix:
    """A batch of left-padded prefixes and their key/value cache."""

    cache: Any  # transformers DynamicCache
    mask: torch.Tensor  # [B, P] 1 for real tokens
    lengths: torch.Tensor  # [B] real prefix lengths

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def crop(self) -> None:
        """Drop whatever a suffix pass appended, so the next adapter or requirement reuses the prefix."""
        extra = self.cache.get_seq_length() - self.width
        if extra > 0:
            self.cache.crop(-extra)


def unwrap(model: Any) -> Any:
    """The model inside a DistributedDataParallel wrapper (accelerate), else the model itself."""
    return getattr(model, "module", model)


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def is_alora(model: Any) -> bool:
    model = unwrap(model)
    if not is_peft(model):
        return False
    config = model.peft_config.get(model.active_adapter)
    return getattr(config, "alora_invocation_tokens", None) is not None


@functools.cache
def _cache_kwarg(model_type: type) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; use whichever this model takes."""
    return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    model = unwrap(model)
    base = model.get_base_model() if is_peft(model) else model
    return {_cache_kwarg(type(base)): cache, "use_cache": True}


@contextmanager
def base_model_only(model: Any) -> Iterator[None]:
    """Run the plain base model, whatever adapter is active (PEFT walks every module: ~40 ms a call)."""
    model = unwrap(model)
    with model.disable_adapter() if is_peft(model) else nullcontext():
        yield


def base_pass(model: Any, rows: int) -> tuple[AbstractContextManager[None], dict[str, Any]]:
    """A context and forward kwargs that make one forward the plain base model's.

    An active aLoRA adapter is simply activated on no token, which costs nothing; anything else is
    switched off with `base_model_only`.
    """
    if is_alora(model):
        return nullcontext(), {"alora_offsets": [0] * rows}
    return base_model_only(model), {}


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def prefill(model: Any, prefixes: Sequence[Sequence[int]], pad_id: int) -> Prefix:
    """Run the base model over left-padded prefixes once and keep their cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = _left_pad(prefixes, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    context, kwargs = base_pass(model, len(prefixes))
    with context:
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=1,  # the prefix's logits are never used; skip most of the LM head
            **cache_kwargs(model, cache),
            **kwargs,
        )
    return Prefix(cache=cache, mask=mask, lengths=mask.sum(-1))


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def split_prefix(prefix: Prefix) -> list[StoredKV]:
    """Per-item copies of a batch's cache, for reuse across epochs."""
    out: list[StoredKV] = []
    layers = _cache_layers(prefix.cache)
    for i, n in enumerate(prefix.lengths.tolist()):
        out.append(
            [(k[i, :, k.shape[2] - n :].clone(), v[i, :, v.shape[2] - n :].clone()) for k, v in layers]
        )
    return out


def stored_bytes(stored: StoredKV) -> int:
    return sum(k.numel() * k.element_size() * 2 for k, _ in stored)


def join_prefix(items: Sequence[StoredKV], device: torch.device) -> Prefix:
    """Rebuild a left-padded batch cache from per-item stored caches."""
    from transformers import DynamicCache

    lengths = [kv[0][0].shape[1] for kv in items]
    width = max(lengths)
    mask = torch.zeros((len(items), width), dtype=torch.long, device=device)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    layers = []
    for layer in range(len(items[0])):
        k0, v0 = items[0][layer]
        keys = k0.new_zeros((len(items), k0.shape[0], width, k0.shape[2]), device=device)
        values = v0.new_zeros((len(items), v0.shape[0], width, v0.shape[2]), device=device)
        for i, kv in enumerate(items):
            keys[i, :, width - lengths[i] :] = kv[layer][0]
            values[i, :, width - lengths[i] :] = kv[layer][1]
        layers.append((keys, values))
    return Prefix(
        cache=DynamicCache(ddp_cache_data=layers),
        mask=mask,
        lengths=torch.tensor(lengths, device=device),
    )


@dataclass
class Packed:
    """Rows of stem then branches, with their mask and where each branch's tokens are predicted."""

    ids: torch.Tensor  # [B, S]
    positions: torch.Tensor  # [B, S] relative to the cached prefix's end
    suffix_mask: torch.Tensor  # [B, S, S] bool, True where attention is allowed
    # per row, per branch: (positions whose logits predict the branch tokens, the branch token ids)
    targets: list[list[tuple[list[int], list[int]]]]
    adapter_start: int = 0  # aLoRA weights apply from this column on
    adapter_starts: list[int] | None = None  # per row, instead of adapter_start
    # per row, the adapter it runs (None: the base model), all in one forward (PEFT's mixed batches)
    adapters: list[str | None] | None = None
    causal_lead: int = 0  # leading columns that are plain causal text (single row, nothing cached)
    # [B, S, C] which cached columns each token sees; None: the prefix's real tokens, and positions
    # are relative to each row's prefix end. When given, positions are absolute.
    cache_mask: torch.Tensor | None = None

    @functools.cached_property
    def kept(self) -> list[int]:
        """The only columns whose logits are needed (the LM head is a fifth of the model's compute)."""
        return sorted({p for row in self.targets for positions, _ in row for p in positions})


def pack(
    stems: Sequence[Sequence[int]],
    branches: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    *,
    lead: Sequence[int] | None = None,
    adapter_start: int = 0,
) -> Packed:
    """Lay out `stem + branch_1 + branch_2 + ...` per row (each branch minus its last token); stems share one length.

    `lead[r]` left-padding tokens at the start of row r's stem are hidden and not counted in positions.
    """
    n_stem = len(stems[0])
    lead = lead or [0] * len(stems)
    # A branch's last token is only ever a target (nothing after it is scored), so it is not fed in.
    widths = [n_stem + sum(len(b) - 1 for b in row) for row in branches]
    width = max(widths)
    rows = len(branches)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    allowed = torch.zeros((rows, width, width), dtype=torch.bool)
    stem_causal = torch.ones((n_stem, n_stem), dtype=torch.bool).tril()
    targets: list[list[tuple[list[int], list[int]]]] = []
    for r, (stem, row) in enumerate(zip(stems, branches, strict=True)):
        skip = lead[r]
        ids[r, :n_stem] = torch.tensor(list(stem), dtype=torch.long)
        positions[r, :n_stem] = (torch.arange(n_stem) - skip).clamp(min=0)
        allowed[r, :n_stem, :n_stem] = stem_causal
        allowed[r, :, :skip] = False
        start = n_stem
        row_targets = []
        for branch in row:
            n = len(branch) - 1
            end = start + n
            ids[r, start:end] = torch.tensor(list(branch[:-1]), dtype=torch.long)
            positions[r, start:end] = torch.arange(n_stem, n_stem + n) - skip
            allowed[r, start:end, skip:n_stem] = True
            allowed[r, start:end, start:end] = torch.ones((n, n), dtype=torch.bool).tril()
            # token j of the branch is predicted by the stem's last token (j=0) or the branch's token j-1
            row_targets.append(([n_stem - 1, *range(start, end)], list(branch)))
            start = end
        pads = [*range(skip), *range(start, width)]
        allowed[r, pads, pads] = True  # padding attends to itself only, so no row of the mask is empty
        targets.append(row_targets)
    return Packed(ids, positions, allowed, targets, adapter_start)


def pack_full(
    prefixes: Sequence[Sequence[int]],
    stem: Sequence[int],
    branches: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
) -> Packed:
    """The no-cache layout: left-padded prefix + stem + branches in one row, for a plain full forward."""
    width = max(len(p) for p in prefixes)
    lead = [width - len(p) for p in prefixes]
    stems = [[pad_id] * n + list(p) + list(stem) for n, p in zip(lead, prefixes, strict=True)]
    return pack(stems, branches, pad_id, lead=lead, adapter_start=width)


def expand_prefix(prefix: Prefix, rows: int) -> Prefix:
    """A one-item prefix seen by `rows` rows: views, so the cache is copied only when a pass appends to it."""
    from transformers import DynamicCache

    if rows == 1:
        return prefix
    layers = [
        (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in _cache_layers(prefix.cache)
    ]
    return Prefix(
        cache=DynamicCache(ddp_cache_data=layers),
        mask=prefix.mask.expand(rows, -1),
        lengths=prefix.lengths.expand(rows),
    )


def empty_prefix(rows: int, device: torch.device) -> Prefix:
    from transformers import DynamicCache

    return Prefix(
        cache=DynamicCache(),
        mask=torch.zeros((rows, 0), dtype=torch.long, device=device),
        lengths=torch.zeros(rows, dtype=torch.long, device=device),
    )


def suffix_forward(model: Any, prefix: Prefix, packed: Packed) -> torch.Tensor:
    """Logits at `packed.kept` columns of the suffix rows on top of the prefix cache.

    An aLoRA adapter is active on exactly the columns from `packed.adapter_start` (or the row's
    `adapter_starts`) on; with `packed.adapters`, each row runs its own adapter in the same forward.
    """
    device = prefix.mask.device
    rows, width = packed.ids.shape
    if packed.cache_mask is None:
        seen = prefix.mask.bool()[:, None, :].expand(rows, width, prefix.width)
        positions = packed.positions.to(device) + prefix.lengths[:, None]
    else:
        seen = packed.cache_mask.to(device)
        positions = packed.positions.to(device)
    allowed = torch.cat([seen, packed.suffix_mask.to(device)], dim=-1)
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    kwargs: dict[str, Any] = {}
    starts = packed.adapter_starts or [packed.adapter_start] * rows
    if packed.adapters is not None and is_peft(model):
        kwargs["adapter_names"] = [name or "__base__" for name in packed.adapters]
        kwargs["alora_offsets"] = [width - start for start in starts]
    elif packed.adapters is not None and any(packed.adapters):
        raise ValueError(f"Rows ask for adapters {packed.adapters} but the model has none.")
    elif is_alora(model):
        kwargs["alora_offsets"] = [width - start for start in starts]
    if packed.causal_lead:
        kwargs[CAUSAL_LEAD] = packed.causal_lead
    out = model(
        input_ids=packed.ids.to(device),
        attention_mask=mask[:, None],
        position_ids=positions,
        logits_to_keep=torch.tensor(packed.kept, device=device) if packed.kept else 1,
        **cache_kwargs(model, prefix.cache),
        **kwargs,
    )
    return out.logits


def branch_logprobs(logits: torch.Tensor, packed: Packed) -> list[list[torch.Tensor]]:
    """Per row, per branch: the log-probability of each branch token (kept differentiable)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    column = {p: i for i, p in enumerate(packed.kept)}
    result = []
    for r, row in enumerate(packed.targets):
        result.append(
            [
                logp[
                    r,
                    torch.tensor([column[p] for p in pos], device=logp.device),
                    torch.tensor(tok, device=logp.device),
                ]
                for pos, tok in row
            ]
        )
    return result


def _sums(logits: torch.Tensor, packed: Packed) -> torch.Tensor:
    return torch.stack([torch.stack([lp.sum() for lp in row]) for row in branch_logprobs(logits, packed)])


@torch.no_grad()
def label_loglik(model: Any, fmt: PromptFormat, prefix: Prefix) -> torch.Tensor:
    """Sequence log-likelihood of every label for each cached prefix in the batch: [B, K]."""
    rows = prefix.mask.shape[0]
    branches = [[fmt.label_ids[label] for label in fmt.labels]] * rows
    packed = pack([fmt.invocation_ids] * rows, branches, fmt.pad_id)
    try:
        logits = suffix_forward(model, prefix, packed)
    finally:
        prefix.crop()
    return _sums(logits, packed)


@torch.no_grad()
def full_loglik(model: Any, fmt: PromptFormat, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
    """The same log-likelihoods without a shared cache: LoRA adapters change the prefix, so it is recomputed."""
    device = next(model.parameters()).device
    branches = [[fmt.label_ids[label] for label in fmt.labels]] * len(prefixes)
    packed = pack_full(prefixes, fmt.invocation_ids, branches, fmt.pad_id)
    return _sums(suffix_forward(model, empty_prefix(len(prefixes), device), packed), packed)


def probabilities(loglik: torch.Tensor) -> torch.Tensor:
    """Softmax over the K label sequence log-likelihoods."""
    return torch.softmax(loglik.float(), dim=-1)


@dataclass(frozen=True)
class LabelScores:
    label: str  # most probable label
    probs: dict[str, float]

    def prob(self, labels: Sequence[str]) -> float:
        return math.fsum(self.probs[label] for label in labels)

    @classmethod
    def from_loglik(cls, labels: Sequence[str], loglik: torch.Tensor) -> LabelScores:
        """Scores from the K label sequence log-likelihoods of one item."""
        probs = dict(zip(labels, probabilities(loglik).tolist(), strict=True))
        return cls(label=max(probs, key=probs.__getitem__), probs=probs)


def score_items(
    model: Any,
    fmt: PromptFormat,
    items: Sequence[str],
    requirement: str | None = None,
    *,
    batch_size: int = 8,
) -> list[LabelScores]:
    """Probability of every label for each item, prefixes computed once per item."""
    encoded = [fmt.encode(item, requirement).prefix for item in items]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding per batch
    results: list[LabelScores | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [encoded[i] for i in idx]
        if is_alora(model):
            ll = label_loglik(model, fmt, prefill(model, batch, fmt.pad_id))
        else:
            ll = full_loglik(model, fmt, batch)
        for i, row in zip(idx, ll, strict=True):
            results[i] = LabelScores.from_loglik(fmt.labels, row)
    return [r for r in results if r is not None]
