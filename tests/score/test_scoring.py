"""Shared-prefix label scores equal the naive full-sequence scores (the central numerical claim)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from validora.core.prompting import PromptFormat
from validora.score import scoring

from ..conftest import LABELS
from ..core.test_prompting import full_ids

ITEMS = [
    "knock at 3k rpm, rod",
    "Blue smoke on startup and burns oil; compression 60 psi. Customer says it got worse over the summer.",
    "ok",
    "Idle hunts up and down; fuel weeps from the bowl gasket after sitting overnight in the shop.",
]


def random_adapter(model, fmt: PromptFormat, alora: bool):
    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=64,
        target_modules=["q_proj", "k_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random B: the adapter really changes the output
        alora_invocation_tokens=fmt.invocation_ids if alora else None,
    )
    return get_peft_model(model, config).eval()


def naive_loglik(model, fmt: PromptFormat, item: str, requirement: str | None, alora: bool) -> torch.Tensor:
    """One full forward per label, PEFT's own way: the textbook computation."""
    out = []
    for label in fmt.labels:
        ids = full_ids(fmt, item, label, requirement)
        n_label = len(fmt.label_ids[label])
        kwargs = {"alora_offsets": [len(fmt.invocation_ids) + n_label]} if alora else {}
        with torch.no_grad():
            logp = (
                model(input_ids=torch.tensor([ids], device=model.device), **kwargs).logits[0].log_softmax(-1)
            )
        t = len(ids)
        out.append(sum(logp[t - n_label - 1 + j, ids[t - n_label + j]] for j in range(n_label)))
    return torch.stack(out)


@pytest.mark.parametrize("alora", [True, False], ids=["alora", "lora"])
def test_shared_prefix_scores_equal_naive_scores(fresh_model, alora):
    loaded = fresh_model()
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    model = random_adapter(loaded.model, fmt, alora)
    got = scoring.score_items(model, fmt, ITEMS, "Must name a failure mode.", batch_size=3)
    for item, scores in zip(ITEMS, got, strict=True):
        naive = torch.softmax(naive_loglik(model, fmt, item, "Must name a failure mode.", alora), -1)
        assert torch.allclose(torch.tensor([scores.probs[label] for label in LABELS]), naive, atol=1e-4)
        assert scores.label == LABELS[int(naive.argmax())]
    # The check is not vacuous: the adapter moves the log-likelihoods away from the base model's.
    with model.disable_adapter():
        base = naive_loglik(model, fmt, ITEMS[1], "Must name a failure mode.", alora=False)
    assert (naive_loglik(model, fmt, ITEMS[1], "Must name a failure mode.", alora) - base).abs().max() > 0.05


def test_prefix_cache_is_reusable_after_scoring(fresh_model):
    loaded = fresh_model()
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    model = random_adapter(loaded.model, fmt, alora=True)
    prefixes = [fmt.encode(item).prefix for item in ITEMS]
    prefix = scoring.prefill(model, prefixes, fmt.pad_id)
    first = scoring.label_loglik(model, fmt, prefix)
    assert prefix.cache.get_seq_length() == prefix.width  # cropped back to the prefix
    second = scoring.label_loglik(model, fmt, prefix)
    assert torch.allclose(first, second, atol=1e-5)
    # Stored per-item caches rebuild the same batch.
    rebuilt = scoring.join_prefix(scoring.split_prefix(prefix), prefix.mask.device)
    assert torch.allclose(scoring.label_loglik(model, fmt, rebuilt), first, atol=1e-4)


def test_prefix_is_computed_by_the_base_model(fresh_model):
    """aLoRA leaves everything before the invocation to the base model."""
    loaded = fresh_model()
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    ids = [fmt.encode(ITEMS[1]).prefix]
    with torch.no_grad():
        base_keys = scoring.prefill(loaded.model, ids, fmt.pad_id).cache.layers[-1].keys.clone()
    model = random_adapter(loaded.model, fmt, alora=True)
    adapted_keys = scoring.prefill(model, ids, fmt.pad_id).cache.layers[-1].keys
    assert torch.equal(base_keys, adapted_keys)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; the CPU twin is test_shared_prefix_scores_equal_naive_scores",
)
def test_shared_prefix_scores_on_gpu():
    from validora.core.models import load_base_model

    loaded = load_base_model(None, device="cuda", dtype="float32")
    fmt = PromptFormat(loaded.tokenizer, LABELS)
    model = random_adapter(loaded.model, fmt, alora=True)
    got = scoring.score_items(model, fmt, ITEMS)
    for item, scores in zip(ITEMS, got, strict=True):
        naive = torch.softmax(naive_loglik(model, fmt, item, None, True).cpu(), -1)
        assert torch.allclose(torch.tensor([scores.probs[label] for label in LABELS]), naive, atol=1e-3)


def test_causal_lead_attention_equals_the_dense_mask(fresh_model):
    """The split attention (causal kernel for the leading text) computes what the full 4-D mask says."""
    from validora.core.attention import CAUSAL_LEAD

    model = fresh_model().model
    assert model.config._attn_implementation == "validora_sdpa"
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 40))
    allowed = torch.ones(40, 40).tril().bool()
    allowed[35:, 30:35] = False  # the tail does not see part of itself, as branches do not see each other
    mask = torch.zeros(1, 1, 40, 40).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        split = model(input_ids=ids, attention_mask=mask, use_cache=False, **{CAUSAL_LEAD: 30}).logits
    assert (dense - split).abs().max() < 1e-3
    assert (dense[0, 36] - dense[0, 36].flip(0)).abs().max() > 1  # a real output, not a constant
