"""LocalHFBackend: a local transformers model, its adapters, generation and shared-prefix checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from validora.adapter.integrity import check_base_weights
from validora.adapter.loading import CustomIntrinsicAdapter, attach
from validora.backends.base import (
    DEFAULT_OPTIONS,
    AdapterRegistry,
    CheckSpec,
    Generation,
    LoadedAdapter,
    check_options,
)
from validora.core.models import load_base_model
from validora.core.prompting import JUDGE_MAX_LENGTH, Format, JudgeFormat
from validora.score.checks import Check, CheckResult, score_checks
from validora.score.readout import Readout
from validora.score.scoring import base_model_only


class LocalHFBackend:
    """A local model plus validora adapters (a `Backend`). One lock serialises model use across threads."""

    def __init__(
        self,
        model_id: str | None = None,
        device: str = "auto",
        dtype: str | torch.dtype | None = None,
        model_options: dict[str, Any] | None = None,
        *,
        trust_remote_code: bool = False,
    ):
        self._loaded = load_base_model(
            model_id, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.model_id = self._loaded.spec.name
        self.tokenizer = self._loaded.tokenizer
        self.model_options = {**DEFAULT_OPTIONS, **check_options(model_options)}
        self.default_to_constraint_checking_alora = True
        self._model: Any = self._loaded.model
        context = getattr(self._model.config, "max_position_embeddings", None) or JUDGE_MAX_LENGTH
        self._judge = JudgeFormat(self.tokenizer, max_length=min(JUDGE_MAX_LENGTH, int(context)))
        self._lock = threading.RLock()
        self._registry = AdapterRegistry(self.model_id, self._lock)  # changes with the model, under one lock

    # ----- adapters ----------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, LoadedAdapter]:
        return self._registry.snapshot()

    def adapter_labels(self) -> dict[str, list[str]]:
        """Every added adapter's labels, read at one moment: what routing a set of checks sees."""
        return self._registry.adapter_labels()

    def labels(self, adapter: str) -> list[str]:
        return self._registry.labels(adapter)

    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> LoadedAdapter:
        def attach_weights(loaded: LoadedAdapter) -> None:
            allow = getattr(adapter, "allow_base_mismatch", False)
            check_base_weights(loaded.info, self._model, loaded.name, allow_base_mismatch=allow)
            self._model = attach(self._model, loaded.snapshot or loaded.path, loaded.name)
            self._model.eval()

        return self._registry.add(adapter, self.tokenizer, attach=attach_weights)

    def remove_adapter(self, name: str) -> None:
        """Remove an adapter; without adapters left the backend runs the plain base model again."""

        def detach(last: bool) -> None:
            if last:
                # A PEFT wrapper without adapters still points at the deleted one (KeyError on every
                # forward): take its LoRA layers out and keep the plain base model.
                self._model = self._model.unload()
            else:
                self._model.delete_adapter(name)

        self._registry.remove(name, detach)

    # ----- generation --------------------------------------------------------------------------------
    def generate(
        self, messages: Sequence[dict[str, str]], model_options: dict[str, Any] | None = None
    ) -> Generation:
        """Chat-template generation by the plain base model (greedy unless temperature > 0)."""
        opts = {**self.model_options, **check_options(model_options)}
        sample = float(opts["temperature"] or 0) > 0
        kwargs: dict[str, Any] = {"max_new_tokens": int(opts["max_new_tokens"]), "do_sample": sample}
        if sample:
            kwargs.update(temperature=float(opts["temperature"]), top_p=float(opts["top_p"]))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        # The tokenizer is shared mutable state too (fast tokenizers are not thread-safe): lock it with the model.
        with self._lock, torch.no_grad(), base_model_only(self._model):
            ids = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            started = time.perf_counter()
            if opts["seed"] is not None:
                torch.manual_seed(int(opts["seed"]))
            device = self._loaded.device
            out = self._model.generate(
                **{k: v.to(device) for k, v in ids.items()},
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
            seconds = time.perf_counter() - started
            new = out[0, ids["input_ids"].shape[1] :]
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return Generation(text, seconds, int(new.numel()))

    # ----- checks ------------------------------------------------------------------------------------
    def check(self, output: str, checks: Sequence[CheckSpec]) -> list[CheckResult]:
        """Score (adapter name, requirement) checks of one output; None as adapter is the yes/no judge.

        All aLoRA checks and all judge checks share the output's prefix computation. An adapter trained
        without requirement texts sees the output alone (its training prompt); the requirement then
        only decides which labels pass, and its checks of one output are one computation.
        """
        with self._lock:  # the adapter table and the model change together under this lock
            built: dict[CheckSpec, Check] = {}
            resolved = self._registry.resolve(checks)
            for key, loaded in resolved:
                fmt: Format = loaded.fmt if loaded is not None else self._judge
                readout = loaded.readout if loaded is not None else Readout()
                built.setdefault(key, Check(key[0], fmt, key[1], readout))  # identical prompts once
            alora: dict[str | None, bool] = {None: True}
            alora.update({name: a.is_alora for name, a in self._registry.snapshot().items()})
            scored = dict(
                zip(built, score_checks(self._model, output, list(built.values()), alora=alora), strict=True)
            )
        return [scored[key] for key, _ in resolved]
