"""What programs need from a backend: the interface `LocalHFBackend` and any other engine satisfy, and
the one record of an adapter a backend has loaded (`LoadedAdapter`) in the one table both backends keep
(`AdapterRegistry`).

A backend generates with its plain base model and scores checks of one output, each a requirement
judged by an added adapter or (adapter None) by the base model as a yes/no judge. `Session` and
`validate_output` use nothing else. This module imports no torch: a backend that only talks HTTP
(DESIGN §11) can implement it; `CheckResult` and `LabelScores` are re-exported on first use.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from validora.core.names import same_base_model
from validora.errors import AdapterError, ConfigError

if TYPE_CHECKING:
    from validora.adapter.loading import CustomIntrinsicAdapter
    from validora.adapter.schema import AdapterInfo
    from validora.adapter.snapshot import AdapterSnapshot
    from validora.core.prompting import PromptFormat
    from validora.score.checks import CheckResult
    from validora.score.readout import LabelScores, Readout

__all__ = [
    "AdapterBackend", "AdapterRegistry", "Backend", "CheckResult", "CheckSpec", "Generation", "LabelScores",
    "LoadedAdapter",
]  # fmt: skip

# One check of one output: (adapter name, or None for the base-model yes/no judge; requirement text or None).
CheckSpec = tuple[str | None, str | None]

GENERATION_OPTIONS = frozenset({"max_new_tokens", "temperature", "top_p", "seed"})
DEFAULT_OPTIONS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": None}


def check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Unknown option names are typos: refuse them rather than silently ignore them."""
    options = dict(options or {})
    unknown = sorted(set(options) - GENERATION_OPTIONS)
    if unknown:
        raise ConfigError(f"Unknown model option(s) {unknown}; known: {sorted(GENERATION_OPTIONS)}.")
    return options


@dataclass(frozen=True)
class Generation:
    """One generated answer and what it cost."""

    text: str
    seconds: float
    new_tokens: int


@runtime_checkable
class Backend(Protocol):
    """A base model plus adapters, as programs see it (the few members a new backend implements)."""

    # True: requirements are judged by the added adapters; False: by the base model unless adapter= is named.
    default_to_constraint_checking_alora: bool

    def generate(
        self, messages: Sequence[dict[str, str]], model_options: dict[str, Any] | None = None
    ) -> Generation:
        """Answer a chat conversation with the plain base model (no adapter active)."""
        ...

    def check(self, output: str, checks: Sequence[CheckSpec]) -> list[CheckResult]:
        """Label probabilities of every check of one output, in order; an unknown adapter is an AdapterError."""
        ...

    def adapter_labels(self) -> dict[str, list[str]]:
        """Every added adapter's labels, read at one moment: what routes a set of requirements."""
        ...


class AdapterBackend(Backend, Protocol):
    """A backend that takes validora adapters (both real ones do; `AdapterRegistry` holds them)."""

    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> LoadedAdapter:
        """Load an adapter of this backend's base model under its name; a second of one name is refused."""
        ...

    def remove_adapter(self, name: str) -> None:
        """Take an adapter out; an unknown name is an AdapterError."""
        ...

    def labels(self, adapter: str) -> list[str]:
        """One added adapter's labels; an unknown name is an AdapterError."""
        ...


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter loaded for use, the same record in every backend and in `Validator`.

    `handle` is what the engine needs besides (llama-server: the id it serves the adapter under)."""

    name: str
    info: AdapterInfo
    path: Path
    fmt: PromptFormat  # its prompts, built by the same code as in training
    readout: Readout  # its temperature and lexical model: how its log-likelihoods become probabilities
    is_alora: bool
    reads_requirements: bool  # trained with requirement texts (else its prompt holds the text alone)
    handle: Any = None
    # The adapter's files as read once (adapter/snapshot.py): what a backend attaches. None: read `path`.
    snapshot: AdapterSnapshot | None = None

    @classmethod
    def load(
        cls,
        name: str,
        info: AdapterInfo,
        path: str | Path,
        tokenizer: Any,
        handle: Any = None,
        *,
        snapshot: AdapterSnapshot | None = None,
    ) -> LoadedAdapter:
        """The one place a loaded adapter is built: its prompt format for `tokenizer`, its readout.

        With a `snapshot` (whose info `info` is) everything comes from its bytes, never from `path` again."""
        from validora.adapter.loading import prompt_format
        from validora.score.readout import Readout

        try:
            fmt = prompt_format(info, tokenizer)
        except ConfigError as exc:  # the tokenizer, or damaged token ids in validora.json
            raise AdapterError(
                f"Adapter {name!r} ({Path(path) / 'validora.json'}): {exc} Or its validora.json was damaged: "
                "train, import or download it again."
            ) from None
        # Its lexical file from the snapshot's bytes (never read by path again); named as callers name it.
        who = Path(path).name if name == "validator" else name
        readout = Readout.of_adapter(info, snapshot.files if snapshot is not None else path, name=who)
        return cls(
            name, info, Path(path), fmt, readout, info.is_alora, bool(info.requirements), handle, snapshot
        )

    def requirement_for(self, requirement: str | None) -> str | None:
        """The requirement text this adapter's prompt holds: none for a classifier trained without them
        (its training prompts held the text alone); the requirement then only decides which labels pass."""
        return requirement if self.reads_requirements else None

    def ignores(self, requirements: Iterable[str | None]) -> bool:
        """Whether scoring with these requirements drops some (what callers warn about)."""
        return not self.reads_requirements and any(r is not None for r in requirements)

    def ignoring_note(self, who: str) -> str:
        """The warning when `ignores` is true, `who` naming the adapter as the caller knows it."""
        return (
            f"{who} was trained without requirement texts: each text is scored alone and its requirement "
            "ignored (as in programs)."
        )


class AdapterRegistry:
    """The adapters a backend has added, by name, and the rules for adding one (its base model, a name
    not yet taken). `lock` is the backend's: what it changes together with the table (a model's LoRA
    layers, a tokenizer) changes under the same lock."""

    def __init__(self, model_id: str, lock: threading.RLock | None = None):
        self.model_id = model_id
        self.lock = lock or threading.RLock()
        self._adapters: dict[str, LoadedAdapter] = {}

    def check_base_model(self, adapter: CustomIntrinsicAdapter) -> None:
        if not same_base_model(adapter.info.base_model, self.model_id):
            raise AdapterError(
                f"Adapter {adapter.name!r} was trained on {adapter.info.base_model!r} but this backend runs "
                f"{self.model_id!r}."
            )

    def add(
        self,
        adapter: CustomIntrinsicAdapter,
        tokenizer: Any,
        *,
        handle: Any = None,
        attach: Callable[[LoadedAdapter], None] | None = None,
    ) -> LoadedAdapter:
        """Load `adapter` and add it; `attach` is the backend's own step (an error there adds nothing)."""
        self.check_base_model(adapter)
        with self.lock:
            if adapter.name in self._adapters:
                raise AdapterError(f"An adapter named {adapter.name!r} is already added; remove it first.")
            snapshot = getattr(adapter, "snapshot", None)  # what CustomIntrinsicAdapter read, once
            extra = {}
            if snapshot is not None:
                from validora.adapter.loading import checked_config

                checked_config(snapshot)  # a damaged config fails here, on every backend
                extra["snapshot"] = snapshot
            loaded = LoadedAdapter.load(adapter.name, adapter.info, adapter.path, tokenizer, handle, **extra)
            if attach is not None:
                attach(loaded)
            self._adapters[adapter.name] = loaded
            return loaded

    def remove(self, name: str, detach: Callable[[bool], None] | None = None) -> None:
        """Take `name` out; `detach(last)` is the backend's own step, told whether it was the last one."""
        with self.lock:
            self.get(name)
            if detach is not None:
                detach(len(self._adapters) == 1)
            del self._adapters[name]

    def get(self, name: str) -> LoadedAdapter:
        with self.lock:
            if name not in self._adapters:
                raise AdapterError(
                    f"No adapter named {name!r} (it was removed, or never added); added: {sorted(self._adapters)}."
                )
            return self._adapters[name]

    def resolve(self, checks: Sequence[CheckSpec]) -> list[tuple[CheckSpec, LoadedAdapter | None]]:
        """Each check as its adapter sees it (the requirement its prompt holds) with that adapter's record
        (None: the base-model judge); an unknown adapter is an AdapterError."""
        with self.lock:
            resolved: list[tuple[CheckSpec, LoadedAdapter | None]] = []
            for adapter, requirement in checks:
                loaded = self.get(adapter) if adapter is not None else None
                seen = loaded.requirement_for(requirement) if loaded is not None else requirement
                resolved.append(((adapter, seen), loaded))
            return resolved

    def snapshot(self) -> dict[str, LoadedAdapter]:
        """The added adapters, read at one moment."""
        with self.lock:
            return dict(self._adapters)

    def labels(self, name: str) -> list[str]:
        return list(self.get(name).fmt.labels)

    def adapter_labels(self) -> dict[str, list[str]]:
        """Every added adapter's labels, read at one moment: what routing a set of checks sees."""
        with self.lock:
            return {name: list(a.fmt.labels) for name, a in self._adapters.items()}


_REEXPORTS = {"CheckResult": "validora.score.checks", "LabelScores": "validora.score.readout"}


def __getattr__(name: str) -> Any:
    if name in _REEXPORTS:  # these modules import torch: loaded only when a backend builds results
        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
