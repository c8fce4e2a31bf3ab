"""LlamaCppBackend: a program's generation and checks through llama.cpp's llama-server (`m alora serve`).

llama-server returns no log-probabilities for prompt tokens, only for tokens it generates. So a label's
probability comes from one /completion per label that *generates* that label: a grammar of token-id
literals forces its tokens, and `n_probs` with `post_sampling_probs: false` reports each forced token's
probability under the model's own distribution (the softmax of the raw logits, before the grammar and
the bias): the same sequence log-likelihood the in-process backend sums. The end-of-turn token that
closes a label may not appear in a grammar (an end-of-generation token there aborts the server); once
the grammar is complete only end tokens can follow, and a logit bias makes that one the one generated.
Every token the server generated is compared with the label's: anything else is an error, never a
verdict.

The prompt is the very token sequence the in-process backend scores (the adapter's `PromptFormat`), so
the server's slot cache holds the output's prefix across labels, requirements and adapters (it keeps the
cache when moving between the base model and aLoRA adapters): after the first label of an output only
the invocation and the label are computed. The adapters a request leaves out run at scale 0; base-model
requests (generation, the yes/no judge) name every adapter at scale 0, since an empty list would run
the server's defaults.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from validora.backends.base import (
    DEFAULT_OPTIONS,
    AdapterRegistry,
    CheckSpec,
    Generation,
    LoadedAdapter,
    check_options,
)
from validora.core.prompting import JUDGE_MAX_LENGTH, Format, JudgeFormat
from validora.errors import AdapterError, LlamaCppError
from validora.llamacpp.client import API_KEY_ENV, request_json
from validora.llamacpp.server import PARALLEL_ALORA_BUG, served_invocation, served_name
from validora.score.lexical import lexical_text
from validora.score.readout import Readout

if TYPE_CHECKING:
    from validora.adapter.loading import CustomIntrinsicAdapter

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class _ServerId:
    """Where the server lists an added adapter (a `LoadedAdapter`'s handle here)."""

    id: int
    task_name: str


class LlamaCppBackend:
    """A running llama-server as a `Backend`: what `LocalHFBackend` does, computed by the server.

    `model_id` names the base model the server runs (default: the embedded one); its tokenizer is loaded
    here, so that prompts are built by the same code as in training. Safe to use from several threads
    (each request is its own HTTP call; a server started with N parallel slots runs N at once).
    """

    def __init__(
        self,
        base_url: str,
        model_id: str | None = None,
        model_options: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        trust_remote_code: bool = False,
        unsafe_parallel_alora: bool = False,
        api_key: str | None = None,
    ):
        """`api_key`: what the server was started with (`m alora serve --api-key`), sent as a bearer
        token; default: the VALIDORA_API_KEY environment variable, if set."""
        from validora.core.models import load_tokenizer, resolve_base_model  # torch: only when one is made

        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        spec = resolve_base_model(model_id)
        self.model_id = spec.name
        self.model_options = {**DEFAULT_OPTIONS, **check_options(model_options)}
        self.default_to_constraint_checking_alora = True
        props = self._request("/props", None)
        self._slots = int(props.get("total_slots", 1)) if isinstance(props, dict) else 1
        self._unsafe_parallel = unsafe_parallel_alora
        served = Path(str(props.get("model_path", ""))).name if isinstance(props, dict) else ""
        if spec.location.endswith(".gguf") and served and served != Path(spec.location).name:
            raise LlamaCppError(
                f"llama-server at {self.base_url} runs {served}, not this backend's base model "
                f"{spec.name} ({Path(spec.location).name}); pass model_id= for the model it runs."
            )
        self.tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
        slot_ctx = (
            props.get("default_generation_settings", {}).get("n_ctx") if isinstance(props, dict) else None
        )
        self._judge = JudgeFormat(
            self.tokenizer, max_length=min(JUDGE_MAX_LENGTH, int(slot_ctx or JUDGE_MAX_LENGTH))
        )
        self._end_ids = (
            {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        )
        self._lock = threading.RLock()  # the adapter table and the (not thread-safe) tokenizer
        self._registry = AdapterRegistry(self.model_id, self._lock)

    # ----- HTTP ----------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None) -> Any:
        """One JSON request; every way it can fail is a LlamaCppError that says which and where."""
        return request_json(self.base_url, path, body, timeout=self.timeout, api_key=self._api_key)

    def _listing(self) -> list[dict[str, Any]]:
        listed = self._request("/lora-adapters", None)
        if not isinstance(listed, list):
            raise LlamaCppError(f"llama-server at {self.base_url} answered /lora-adapters with {listed!r}.")
        return [e for e in listed if isinstance(e, dict)]

    # ----- adapters ------------------------------------------------------------------------------------
    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> LoadedAdapter:
        """Find `adapter` among those the server serves (by the digest its export carries) and check that
        the server starts it where training did."""
        self._registry.check_base_model(adapter)
        want = served_name(adapter.path)
        listed = self._listing()
        entry = next((e for e in listed if e.get("task_name") == want), None)
        if entry is None:
            serving = (
                ", ".join(f"{e.get('id')}: {Path(str(e.get('path', '?'))).name}" for e in listed) or "none"
            )
            invocation = list(adapter.info.prompt["invocation_ids"]) if adapter.info.is_alora else None
            unshifted = [e for e in listed if invocation and e.get("alora_invocation_tokens") == invocation]
            if unshifted:  # most likely this adapter, exported by llama.cpp's converter (no digest)
                raise AdapterError(
                    f"llama-server at {self.base_url} does not serve adapter {adapter.name!r} ({want}) as "
                    f"validora exports it; its adapter {unshifted[0].get('id')} "
                    f"({Path(str(unshifted[0].get('path', '?'))).name}) has this adapter's invocation "
                    f"unshifted, {invocation}, as llama.cpp's converter (or an export with same_as_converter) "
                    "writes it, so the server would start it one token before training did. Export it with "
                    f"`m alora export {adapter.path}` (without same_as_converter) and serve that file."
                )
            raise AdapterError(
                f"llama-server at {self.base_url} does not serve adapter {adapter.name!r} ({want}); it serves "
                f"{serving}. Serve this adapter with `m alora serve {adapter.path}` (or load the file "
                "`m alora export` writes into llama-server as a LoRA adapter)."
            )
        info = adapter.info
        if info.is_alora and self._slots > 1 and not self._unsafe_parallel:
            raise LlamaCppError(
                f"llama-server at {self.base_url} runs {self._slots} parallel slots, which gives aLoRA "
                f"checks wrong labels: {PARALLEL_ALORA_BUG}. Start it with one slot (parallel 1, as "
                "`m alora serve` does); concurrent checks then queue."
            )
        shifted = served_invocation(info)
        if shifted is not None and entry.get("alora_invocation_tokens") != shifted:
            raise AdapterError(
                f"llama-server at {self.base_url} serves {adapter.name!r} with invocation tokens "
                f"{entry.get('alora_invocation_tokens')}, not {shifted}: export it with `m alora export` "
                "(without same_as_converter), so that the server starts it where it was trained."
            )
        return self._registry.add(adapter, self.tokenizer, handle=_ServerId(int(entry["id"]), want))

    def remove_adapter(self, name: str) -> None:
        self._registry.remove(name)

    @property
    def adapters(self) -> dict[str, LoadedAdapter]:
        return self._registry.snapshot()

    def adapter_labels(self) -> dict[str, list[str]]:
        return self._registry.adapter_labels()

    def labels(self, adapter: str) -> list[str]:
        return self._registry.labels(adapter)

    def _scales(self, listed: list[dict[str, Any]], active: int | None) -> list[dict[str, Any]]:
        """Every adapter the server has, at scale 0 but `active` (an empty list would mean its defaults)."""
        return [{"id": int(e["id"]), "scale": 1.0 if e.get("id") == active else 0.0} for e in listed]

    def _verify(self, listed: list[dict[str, Any]], served: Sequence[LoadedAdapter]) -> None:
        """The ids still name the adapters they named when added (a restarted server may list others)."""
        by_id = {e.get("id"): e.get("task_name") for e in listed}
        for s in served:
            where: _ServerId = s.handle
            if by_id.get(where.id) != where.task_name:
                raise LlamaCppError(
                    f"llama-server at {self.base_url} no longer serves {where.task_name} as adapter "
                    f"{where.id} (was it restarted with other adapters?); add the adapters to a new backend."
                )

    # ----- generation ----------------------------------------------------------------------------------
    def generate(
        self, messages: Sequence[dict[str, str]], model_options: dict[str, Any] | None = None
    ) -> Generation:
        """The base model answers a chat through the server (greedy unless temperature > 0)."""
        opts = {**self.model_options, **check_options(model_options)}
        with self._lock:
            ids = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        body: dict[str, Any] = {
            "prompt": ids,
            "n_predict": int(opts["max_new_tokens"]),
            "temperature": float(opts["temperature"] or 0.0),
            "top_p": float(opts["top_p"]),
            "seed": -1 if opts["seed"] is None else int(opts["seed"]),
            "cache_prompt": True,
            "lora": self._scales(self._listing(), None),
        }
        started = time.perf_counter()
        answer = self._request("/completion", body)
        seconds = time.perf_counter() - started
        return Generation(
            str(answer.get("content", "")).strip(), seconds, int(answer.get("tokens_predicted", 0))
        )

    # ----- checks --------------------------------------------------------------------------------------
    def check(self, output: str, checks: Sequence[CheckSpec]) -> list[Any]:
        """Label probabilities of every check of one output, in order (see the module docstring)."""
        from validora.score.checks import CheckResult

        with self._lock:
            plans: list[tuple[CheckSpec, Format, LoadedAdapter | None, list[int], str | None]] = []
            for key, served in self._registry.resolve(checks):
                fmt: Format = served.fmt if served is not None else self._judge
                plans.append((key, fmt, served, [], key[1]))
            # As in-process: checks of one prompt kind cut a long output at the same place (shared prefix).
            rooms: dict[type, int] = {}
            for _, fmt, _, _, requirement in plans:
                rooms[type(fmt)] = min(rooms.get(type(fmt), fmt.room(requirement)), fmt.room(requirement))
            for _, fmt, _, prompt, requirement in plans:
                prompt += [
                    *fmt.encode(output, requirement, room=rooms[type(fmt)]).prefix,
                    *fmt.invocation_ids,
                ]
        listed = self._listing()
        self._verify(listed, [p[2] for p in plans if p[2] is not None])
        done: dict[CheckSpec, Any] = {}
        results = []
        for key, fmt, served, prompt, _ in plans:
            if key not in done:
                started = time.perf_counter()
                scales = self._scales(listed, served.handle.id if served is not None else None)
                settle = served is None or not served.is_alora
                loglik = [
                    self._label_loglik(prompt, fmt.label_ids[label], scales, settle=settle and i == 0)
                    for i, label in enumerate(fmt.labels)
                ]
                readout = served.readout if served is not None else Readout()
                scores = readout.scores(fmt.labels, _tensor(loglik), [lexical_text(output, key[1])])[0]
                done[key] = CheckResult(scores, time.perf_counter() - started)
            results.append(done[key])
        return results

    def _label_loglik(
        self, prompt: list[int], label: list[int], scales: list[dict[str, Any]], *, settle: bool = False
    ) -> float:
        """log p(label tokens | prompt) as the server computes it: the label generated under a grammar.

        `settle`: llama.cpp's CPU arithmetic depends on how a prompt is split into batches (up to ~0.1
        nat on a label's log-probability). The labels after the first find the prompt cached and have its
        last token computed alone; so the first label is asked again when the server computed that token
        within a batch of several, and every label is read from the same computation. (An aLoRA's
        invocation is computed anew, as one batch, for every label: nothing to settle.)"""
        forced = label[:-1] if label[-1] in self._end_ids else label
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": len(label),
            "n_probs": 1,
            "post_sampling_probs": False,
            "temperature": 0.0,
            "cache_prompt": True,
            "return_tokens": True,
            "lora": scales,
        }
        if forced:
            body["grammar"] = "root ::= " + " ".join(f"<[{t}]>" for t in forced)
        if len(forced) < len(label):
            body["logit_bias"] = [[label[-1], 100.0]]  # among the end tokens the grammar leaves, this one
        answer = self._request("/completion", body)
        if settle and _prompt_n(answer) > 1:
            answer = self._request("/completion", body)
        probs = answer.get("completion_probabilities") if isinstance(answer, dict) else None
        got = [e.get("id") for e in probs] if isinstance(probs, list) else None
        if got != label:
            raise LlamaCppError(
                f"llama-server at {self.base_url} generated tokens {got} where the label's {label} were forced; "
                "its label probabilities cannot be read (is it the llama.cpp build `make llama-server` makes?)."
            )
        total = 0.0
        for e in probs:
            lp = e.get("logprob")
            total += -math.inf if lp is None else float(lp)
        return total


def _prompt_n(answer: Any) -> int:
    """How many prompt tokens the server computed for this request (1 when the prompt was cached)."""
    timings = answer.get("timings") if isinstance(answer, dict) else None
    n = timings.get("prompt_n") if isinstance(timings, dict) else None
    return n if isinstance(n, int) else 1


def _tensor(values: list[float]) -> Any:
    import torch

    if all(math.isinf(v) for v in values):
        raise LlamaCppError("llama-server gave every label probability 0 (below float precision).")
    return torch.tensor(values, dtype=torch.float64)
