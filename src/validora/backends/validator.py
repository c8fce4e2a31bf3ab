"""A trained adapter loaded on its base model, ready to score texts (what `m alora predict/eval` use)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validora.adapter.integrity import check_base_weights
from validora.adapter.loading import attach, checked_config, resolve_adapter_dir
from validora.adapter.schema import AdapterInfo
from validora.adapter.snapshot import read_snapshot
from validora.backends.base import LoadedAdapter
from validora.core.metrics import Metrics, classification_metrics
from validora.core.models import LoadedModel, load_base_model
from validora.core.prompting import PromptFormat
from validora.errors import ConfigError, DataError
from validora.score.readout import LabelScores, Readout
from validora.score.scoring import score_items


@dataclass
class Validator:
    model: Any  # PeftModel with the adapter active
    adapter: LoadedAdapter

    @property
    def fmt(self) -> PromptFormat:
        return self.adapter.fmt

    @property
    def info(self) -> AdapterInfo:
        return self.adapter.info

    @property
    def path(self) -> Path:
        return self.adapter.path

    @property
    def readout(self) -> Readout:
        """Its temperature and lexical model (lexical.py)."""
        return self.adapter.readout

    def predict(
        self,
        texts: Sequence[str],
        requirement: str | None = None,
        *,
        requirements: Sequence[str | None] | None = None,
        batch_size: int = 8,
    ) -> list[LabelScores]:
        """Label probabilities for each text, at the adapter's fitted temperature; each text's prefix
        is computed once for all labels.

        `requirements` gives each text its own requirement (None: `requirement`); an adapter trained
        without requirement texts ignores them, with a warning.
        """
        check_batch_size(batch_size)
        if requirements is not None and len(requirements) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(requirements)} requirements; give one per text.")
        reqs = [r if r is not None else requirement for r in requirements or [None] * len(texts)]
        if self.adapter.ignores(reqs):
            # A classifier's training prompts held the text alone: scored as programs and llama-server
            # score it, not with a requirement line it never saw.
            warnings.warn(self.adapter.ignoring_note(self.path.name), stacklevel=2)
        reqs = [self.adapter.requirement_for(r) for r in reqs]
        by_position: dict[int, LabelScores] = {}
        for req in dict.fromkeys(reqs):  # one scoring pass per distinct requirement
            idx = [i for i, r in enumerate(reqs) if r == req]
            scored = score_items(
                self.model,
                self.fmt,
                [texts[i] for i in idx],
                req,
                batch_size=batch_size,
                readout=self.readout,
            )
            by_position.update(zip(idx, scored, strict=True))
        return [by_position[i] for i in range(len(texts))]

    def evaluate(
        self,
        texts: Sequence[str],
        gold: Sequence[str],
        requirements: Sequence[str | None] | None = None,
        *,
        batch_size: int = 8,
    ) -> tuple[Metrics, list[LabelScores]]:
        check_batch_size(batch_size)
        if len(gold) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(gold)} gold labels; give one per text.")
        unknown = sorted(set(gold) - set(self.fmt.labels))
        if unknown:
            raise DataError(
                f"Labels not known to this adapter: {', '.join(unknown)} (it knows {self.fmt.labels})."
            )
        results = self.predict(texts, requirements=requirements, batch_size=batch_size)
        return classification_metrics(gold, [s.label for s in results], self.fmt.labels), results


def check_batch_size(batch_size: int) -> None:
    """A batch size below 1 would score nothing (or fail deep inside scoring): refuse it by name."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch_size must be a whole number of at least 1, not {batch_size!r}.", option="batch_size"
        )


def load_validator(
    path: str | Path,
    *,
    basemodel: str | None = None,
    device: str = "auto",
    loaded: LoadedModel | None = None,
    revision: str | None = None,
    allow_base_mismatch: bool = False,
) -> Validator:
    """Load an adapter (directory or hub id) onto its base model (or `basemodel`, which must tokenize identically).

    `revision` (branch, tag or commit) applies to a hub id. The adapter's files are read once, before the
    base model loads (a directory replaced meanwhile cannot mix two adapters). A base model whose weights
    differ from those it was trained on is refused; `allow_base_mismatch=True` loads it with a warning.
    """
    path, _ = resolve_adapter_dir(path, revision=revision)
    snapshot = read_snapshot(path)
    info = snapshot.info
    checked_config(snapshot)  # a damaged config fails before the seconds a base model takes
    loaded = loaded or load_base_model(basemodel or info.base_model, device=device)
    check_base_weights(info, loaded.model, path.name, allow_base_mismatch=allow_base_mismatch)
    # attached under this name
    adapter = LoadedAdapter.load("validator", info, path, loaded.tokenizer, snapshot=snapshot)
    model = attach(loaded.model, snapshot, adapter.name)
    model.eval()
    return Validator(model=model, adapter=adapter)
