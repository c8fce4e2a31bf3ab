"""SDPA that keeps the causal kernel for a packed row's leading text.

A packed check row starts with the output being judged (plain causal attention) and continues with
requirement lines and label branches under a 4-D mask. SDPA cannot skip masked blocks, so one
masked call would compute the whole square: for a 1,000-token output that doubles the attention
work of a plain prefill. Given `validora_causal_lead=n`, the first n queries take the causal
kernel over the first n keys and only the rest use the mask. Without that argument this is plain
SDPA, so generation and every other forward are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "validora_sdpa"
CAUSAL_LEAD = "validora_causal_lead"


def lead_causal_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lead = int(kwargs.pop(CAUSAL_LEAD, 0) or 0)
    # Only for a row with nothing cached before it, whose first `lead` tokens are plain causal text.
    if lead < 2 or query.shape[2] <= lead or key.shape[2] != query.shape[2] or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    head, _ = sdpa_attention_forward(
        module, query[:, :, :lead], key[:, :, :lead], value[:, :, :lead], None, is_causal=True, **kwargs
    )
    tail, _ = sdpa_attention_forward(
        module, query[:, :, lead:], key, value, attention_mask[:, :, lead:], **kwargs
    )
    return torch.cat([head, tail], dim=1), None  # outputs are [batch, queries, heads, dim]


def install(model: Any) -> None:
    """Use `lead_causal_sdpa` for a model that runs SDPA (eager or flash choices are left alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, lead_causal_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
