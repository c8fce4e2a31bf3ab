"""LocalHFBackend: a local transformers model, its adapters, generation and shared-prefix checks."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from validora.adapter.loading import CustomIntrinsicAdapter, attach, prompt_format
from validora.backends.base import CheckSpec, Generation
from validora.core.models import load_base_model
from validora.core.names import same_base_model
from validora.core.prompting import JUDGE_MAX_LENGTH, Format, JudgeFormat, PromptFormat
from validora.errors import AdapterError, ConfigError
from validora.score.checks import Check, CheckResult, score_checks
from validora.score.readout import Readout
from validora.score.scoring import base_model_only

GENERATION_OPTIONS = frozenset({"max_new_tokens", "temperature", "top_p", "seed"})
DEFAULT_OPTIONS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": None}


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Unknown option names are typos: refuse them rather than silently ignore them."""
    options = dict(options or {})
    unknown = sorted(set(options) - GENERATION_OPTIONS)
    if unknown:
        raise ConfigError(f"Unknown model option(s) {unknown}; known: {sorted(GENERATION_OPTIONS)}.")
    return options


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
        self._adapters: dict[str, CustomIntrinsicAdapter] = {}
        self._formats: dict[str, PromptFormat] = {}
        self._readouts: dict[str, Readout] = {}
        context = getattr(self._model.config, "max_position_embeddings", None) or JUDGE_MAX_LENGTH
        self._judge = JudgeFormat(self.tokenizer, max_length=min(JUDGE_MAX_LENGTH, int(context)))
        self._lock = threading.RLock()

    # ----- adapters ----------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, CustomIntrinsicAdapter]:
        with self._lock:
            return dict(self._adapters)

    def adapter_labels(self) -> dict[str, list[str]]:
        """Every added adapter's labels, read at one moment: what routing a set of checks sees."""
        with self._lock:
            return {name: list(fmt.labels) for name, fmt in self._formats.items()}

    def _missing(self, name: str) -> AdapterError:
        return AdapterError(
            f"No adapter named {name!r} (it was removed, or never added); added: {sorted(self._adapters)}."
        )

    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> None:
        if not same_base_model(adapter.info.base_model, self.model_id):
            raise AdapterError(
                f"Adapter {adapter.name!r} was trained on {adapter.info.base_model!r} but this backend runs "
                f"{self.model_id!r}."
            )
        with self._lock:
            if adapter.name in self._adapters:
                raise AdapterError(f"An adapter named {adapter.name!r} is already added; remove it first.")
            fmt = prompt_format(adapter.info, self.tokenizer)
            readout = Readout.of_adapter(adapter.info, adapter.path)
            self._model = attach(self._model, adapter.path, adapter.name)
            self._model.eval()
            self._adapters[adapter.name] = adapter
            self._formats[adapter.name] = fmt
            self._readouts[adapter.name] = readout

    def remove_adapter(self, name: str) -> None:
        """Remove an adapter; without adapters left the backend runs the plain base model again."""
        with self._lock:
            if name not in self._adapters:
                raise self._missing(name)
            if len(self._adapters) == 1:
                # A PEFT wrapper without adapters still points at the deleted one (KeyError on every
                # forward): take its LoRA layers out and keep the plain base model.
                self._model = self._model.unload()
            else:
                self._model.delete_adapter(name)
            del self._adapters[name], self._formats[name], self._readouts[name]

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
        with self._lock:  # the adapter tables and the model change together under this lock
            built: dict[CheckSpec, Check] = {}
            keys: list[CheckSpec] = []
            for adapter, requirement in checks:
                if adapter is not None and adapter not in self._formats:
                    raise self._missing(adapter)
                if adapter is not None and not self._adapters[adapter].info.requirements:
                    requirement = None  # a classifier: its prompt holds the text alone, as in training
                fmt: Format = self._formats[adapter] if adapter is not None else self._judge
                readout = self._readouts[adapter] if adapter is not None else Readout()
                keys.append((adapter, requirement))
                check = Check(adapter, fmt, requirement, readout)
                built.setdefault(keys[-1], check)  # identical prompts once
            alora: dict[str | None, bool] = {None: True}
            alora.update({name: a.is_alora for name, a in self._adapters.items()})
            scored = dict(
                zip(built, score_checks(self._model, output, list(built.values()), alora=alora), strict=True)
            )
        return [scored[key] for key in keys]

    def labels(self, adapter: str) -> list[str]:
        with self._lock:
            if adapter not in self._formats:
                raise self._missing(adapter)
            return list(self._formats[adapter].labels)
