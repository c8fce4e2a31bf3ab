"""Label scoring with a shared prefix cache.

An item's prefix (item + requirement line) is run once through the base model. Its suffixes are
then scored in one forward per batch: each row holds the invocation once ("stem") followed by every
label + end-of-turn ("branches") packed after it (the layout is `packing.pack`), with a 4-D attention
mask in which each branch sees the prefix, the stem and only its own earlier tokens, and position ids
that restart after the stem for every branch. Copying the cache once per label would cost as much as
the prefill itself. Training uses the same pass with one branch (the gold label) per row.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from validora.core.attention import CAUSAL_LEAD
from validora.core.prompting import PromptFormat
from validora.score.lexical import lexical_text
from validora.score.packing import Packed, Segment, pack
from validora.score.readout import LabelScores, Readout

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
    """Logits at `packed.kept` columns of the packed rows on top of the prefix cache.

    An aLoRA adapter is active on exactly the columns from each row's `packed.adapter_starts` on;
    rows of several adapters each run their own in the same forward (PEFT's mixed batches).
    """
    device = prefix.mask.device
    width = packed.ids.shape[1]
    if packed.cache_width != prefix.width:
        raise ValueError(f"Rows packed over {packed.cache_width} cached columns, not {prefix.width}.")
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = torch.zeros(packed.mask.shape, dtype=dtype, device=device)
    mask.masked_fill_(~packed.mask.to(device), torch.finfo(dtype).min)
    kwargs: dict[str, Any] = {}
    offsets = [width - start for start in packed.adapter_starts]
    if packed.mixed:
        if not is_peft(model):
            raise ValueError(f"Rows ask for adapters {packed.adapters} but the model has none.")
        kwargs["adapter_names"] = [name or "__base__" for name in packed.adapters or ()]
        kwargs["alora_offsets"] = offsets
    elif is_alora(model):
        kwargs["alora_offsets"] = offsets
    if packed.causal_lead:
        kwargs[CAUSAL_LEAD] = packed.causal_lead
    out = model(
        input_ids=packed.ids.to(device),
        attention_mask=mask[:, None],
        position_ids=packed.positions.to(device),
        logits_to_keep=torch.tensor(packed.kept, device=device) if packed.kept else 1,
        **cache_kwargs(model, prefix.cache),
        **kwargs,
    )
    return out.logits


def _targets(packed: Packed) -> tuple[list[int], list[int], list[int]]:
    """Every target token of every row and branch, flat and in order: its row, logit column, token id."""
    column = {p: i for i, p in enumerate(packed.kept)}
    rows, cols, tokens = [], [], []
    for r, row in enumerate(packed.targets):
        for pos, tok in row:
            rows += [r] * len(pos)
            cols += [column[p] for p in pos]
            tokens += tok
    return rows, cols, tokens


def _target_logp(logits: torch.Tensor, packed: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax rows [T, V] at every target token's column, and the target tokens' ids [T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows, cols, tokens = _targets(packed)
    device = logp.device
    picked = logp[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return picked, torch.tensor(tokens, device=device)


def branch_logprobs(logits: torch.Tensor, packed: Packed) -> list[list[torch.Tensor]]:
    """Per row, per branch: the log-probability of each branch token (kept differentiable)."""
    picked, tokens = _target_logp(logits, packed)
    flat = picked.gather(1, tokens[:, None]).squeeze(1)
    pieces = iter(flat.split([len(tok) for row in packed.targets for _, tok in row]))
    return [[next(pieces) for _ in row] for row in packed.targets]


def target_losses(logits: torch.Tensor, packed: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target token of every branch, in `branch_logprobs` order: -log p(target), and the mean of
    -log p over the vocabulary (label smoothing's uniform term). Differentiable; for training."""
    picked, tokens = _target_logp(logits, packed)
    return -picked.gather(1, tokens[:, None]).squeeze(1), -picked.mean(dim=-1)


def _sums(logits: torch.Tensor, packed: Packed) -> torch.Tensor:
    return torch.stack([torch.stack([lp.sum() for lp in row]) for row in branch_logprobs(logits, packed)])


def _label_rows(fmt: PromptFormat, rows: int) -> list[list[Segment]]:
    """Every row: the invocation, then every label + end-of-turn as a branch."""
    return [[Segment(fmt.invocation_ids, [fmt.label_ids[label] for label in fmt.labels])]] * rows


@torch.no_grad()
def label_loglik(model: Any, fmt: PromptFormat, prefix: Prefix) -> torch.Tensor:
    """Sequence log-likelihood of every label for each cached prefix in the batch: [B, K]."""
    packed = pack(_label_rows(fmt, prefix.mask.shape[0]), fmt.pad_id, cache=prefix.mask)
    try:
        logits = suffix_forward(model, prefix, packed)
    finally:
        prefix.crop()
    return _sums(logits, packed)


@torch.no_grad()
def full_loglik(model: Any, fmt: PromptFormat, prefixes: Sequence[Sequence[int]]) -> torch.Tensor:
    """The same log-likelihoods without a shared cache: LoRA adapters change the prefix, so it is recomputed."""
    device = next(model.parameters()).device
    packed = pack(_label_rows(fmt, len(prefixes)), fmt.pad_id, leads=prefixes)
    return _sums(suffix_forward(model, empty_prefix(len(prefixes), device), packed), packed)


def score_items(
    model: Any,
    fmt: PromptFormat,
    items: Sequence[str],
    requirement: str | None = None,
    *,
    batch_size: int = 8,
    readout: Readout | None = None,
) -> list[LabelScores]:
    """Probability of every label for each item (through the adapter's `readout`: its temperature and
    lexical model; None: plain softmax), prefixes computed once per item."""
    readout = readout or Readout()
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
        texts = [lexical_text(items[i], requirement) for i in idx]
        for i, scores in zip(idx, readout.scores(fmt.labels, ll, texts, items=idx), strict=True):
            results[i] = scores
    return [r for r in results if r is not None]
