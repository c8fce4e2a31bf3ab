"""The training prefixes' key/value caches, in one place: budget check, fill once, get per batch.

aLoRA training never puts gradients through the item + requirement (the adapter starts at the
invocation), so their cache can be computed once without gradients and reused every epoch. When all
of them fit the memory budget they are kept; otherwise `get` computes a batch's prefixes on demand.
Under several processes each store holds only its process's items (distributed.Shard), by item index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from validora.score import scoring


class PrefixStore:
    """Item prefixes by split ("train", "val") and item index; their caches kept after `fill()`."""

    def __init__(
        self,
        model: Any,
        prefixes: Mapping[str, Mapping[int, Sequence[int]]],
        pad_id: int,
        device: torch.device,
    ):
        self.model = model
        self.prefixes = prefixes
        self.pad_id = pad_id
        self.device = device
        self._kept: dict[tuple[str, int], scoring.StoredKV] = {}
        self.kept = False  # True once `fill()` ran: batches are joined from the kept caches

    @property
    def tokens(self) -> int:
        return sum(len(p) for split in self.prefixes.values() for p in split.values())

    def need_gb(self) -> float:
        """Memory the kept caches take: keys and values of every layer for every prefix token."""
        config = self.model.get_base_model().config
        per_token = (
            config.num_hidden_layers
            * 2
            * getattr(config, "num_key_value_heads", config.num_attention_heads)
            * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
            * next(self.model.parameters()).element_size()
        )
        return per_token * self.tokens / 2**30

    def fits(self, budget_gb: float) -> bool:
        return self.need_gb() <= budget_gb

    def __len__(self) -> int:
        return sum(len(split) for split in self.prefixes.values())

    def fill(self, batch_size: int, advance: Callable[[int], None] = lambda n: None) -> None:
        """Compute every prefix's cache once, in batches of similar lengths (little padding)."""
        pending = sorted(
            ((split, i, p) for split, items in self.prefixes.items() for i, p in items.items()),
            key=lambda item: len(item[2]),
        )
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            prefix = scoring.prefill(self.model, [p for _, _, p in chunk], self.pad_id)
            for (split, i, _), kv in zip(chunk, scoring.split_prefix(prefix), strict=True):
                self._kept[split, i] = kv
            advance(len(chunk))
        self.kept = True

    def get(self, split: str, indices: Iterable[int]) -> scoring.Prefix:
        """The left-padded batch cache of these items: joined from the kept caches, or computed now."""
        indices = list(indices)
        if self.kept:
            return scoring.join_prefix([self._kept[split, i] for i in indices], self.device)
        items = self.prefixes[split]
        return scoring.prefill(self.model, [items[i] for i in indices], self.pad_id)
