"""The readout: how an adapter's label log-likelihoods become the probabilities every path reports
(its temperature, then its lexical model's mixture), and the scores that carry them. Applied in
exactly one place per path: `Readout.scores`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from validora.adapter.schema import LEXICAL_FILE
from validora.core.calibration import STORED_T_RANGE, fit_temperature
from validora.errors import AdapterError
from validora.score.lexical import LexicalModel, fit_lexical

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LabelScores:
    label: str  # most probable label
    probs: dict[str, float]

    def prob(self, labels: Sequence[str]) -> float:
        return math.fsum(self.probs[label] for label in labels)

    @classmethod
    def from_probs(cls, labels: Sequence[str], probs: torch.Tensor) -> LabelScores:
        values = dict(zip(labels, probs.tolist(), strict=True))
        return cls(label=max(values, key=values.__getitem__), probs=values)


@dataclass(frozen=True)
class Readout:
    """How an adapter's label log-likelihoods become probabilities: divided by its fitted temperature,
    then (when it has a lexical model) mixed with that model's log-probabilities at `weight` and divided
    by the temperature fitted for the mixture."""

    temperature: float = 1.0
    lexical: LexicalModel | None = None
    weight: float = 0.0
    mixed_temperature: float = 1.0
    name: str | None = None  # the adapter's name in error messages (None: the base model or a fit)

    def __post_init__(self) -> None:
        lo, hi = STORED_T_RANGE  # why this range: core/calibration.py
        for field, value in (
            ("temperature", self.temperature),
            ("mixture_temperature", self.mixed_temperature),
        ):
            if not (isinstance(value, int | float) and lo <= value <= hi):  # NaN fails the comparison
                raise AdapterError(
                    f"{self._who} has {field} {value!r}, outside {lo:g}..{hi:g}: its calibration is corrupt "
                    "(no fit gives that); train the adapter again or download it again."
                )
        if not (isinstance(self.weight, int | float) and 0 <= self.weight < 1):
            raise AdapterError(
                f"{self._who} has lexical weight {self.weight!r}, not in [0, 1): its calibration is corrupt; "
                "train the adapter again or download it again."
            )

    @property
    def _who(self) -> str:
        return (
            f"adapter {self.name!r}"
            if self.name is not None
            else "the model (the base model, or an adapter not saved yet)"
        )

    @property
    def mixes(self) -> bool:
        return self.lexical is not None and self.weight > 0

    def mixture(self, loglik: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """[N, K] unnormalised log-scores before the mixture's temperature (what calibration fits)."""
        import torch

        adapter = torch.log_softmax(loglik.float() / self.temperature, dim=-1)
        if not self.mixes:
            return adapter
        assert self.lexical is not None
        return (1 - self.weight) * adapter + self.weight * self.lexical.logprobs(texts).to(adapter.device)

    def probabilities(self, loglik: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """[N, K] label probabilities of N items (`loglik` [N, K]; `texts` from `lexical_text`, unread
        without a lexical model: then it is softmax(loglik / temperature))."""
        import torch

        if not self.mixes:
            return torch.softmax(loglik.float() / self.temperature, dim=-1)
        return torch.softmax(self.mixture(loglik, texts) / self.mixed_temperature, dim=-1)

    def scores(
        self,
        labels: Sequence[str],
        loglik: torch.Tensor,
        texts: Sequence[str],
        items: Sequence[int] | None = None,
    ) -> list[LabelScores]:
        """Each text's LabelScores: the one place label log-likelihoods become the probabilities a result
        reports, so the one place they are checked. A NaN or +inf log-likelihood (a -inf one is a label
        below float precision, probability 0), or probabilities that are not finite or do not sum to 1
        within 1e-6, are an AdapterError naming the adapter and the item (`items`: the caller's index of
        each row; default the row's): never a first label picked from NaN, never NaN in a result."""
        import torch

        loglik = loglik.reshape(len(texts), -1)
        probs = self.probabilities(loglik, texts)
        ll = loglik.detach().double()
        bad_in = torch.isnan(ll).any(dim=-1) | torch.isposinf(ll).any(dim=-1)
        p = probs.detach().double()
        tolerance = 1e-6 + p.shape[-1] * torch.finfo(probs.dtype).eps  # float32 rounding of K terms
        bad_out = ~torch.isfinite(p).all(dim=-1) | ((p.sum(dim=-1) - 1).abs() > tolerance)
        bad = (bad_in | bad_out).nonzero().flatten().tolist()
        if bad:
            row = bad[0]
            item = items[row] if items is not None else row
            what = "log-likelihoods" if bool(bad_in[row]) else "label probabilities"
            shown = ", ".join(f"{v:g}" for v in (ll if bool(bad_in[row]) else p)[row].tolist())
            raise AdapterError(
                f"{self._who} gave non-finite {what} ({shown}) for item {item}: its weights or calibration "
                "are corrupt; train the adapter again or download it again."
            )
        return [LabelScores.from_probs(labels, row) for row in probs]

    def describe(self) -> dict[str, Any] | None:
        """validora.json's "lexical" object (None without a lexical model)."""
        if not self.mixes or self.lexical is None:
            return None
        return {"file": LEXICAL_FILE, "kind": self.lexical.kind, "C": self.lexical.c, "weight": self.weight,
                "mixture_temperature": self.mixed_temperature}  # fmt: skip

    @classmethod
    def of_adapter(
        cls, info: Any, source: str | Path | Mapping[str, bytes], name: str | None = None
    ) -> Readout:
        """The readout an adapter describes: validora.json's `info`, and its lexical file if any, read
        from `source`: the adapter's directory, or its files as {file name: bytes} (one consistent read,
        adapter/snapshot.py). `name` names the adapter in error messages."""
        lexical = getattr(info, "lexical", None)
        if not lexical:
            return cls(info.temperature, name=name)
        if isinstance(source, Mapping):
            if LEXICAL_FILE not in source:
                raise AdapterError(
                    f"adapter {name!r} names a lexical model but has no {LEXICAL_FILE}: it is incomplete; "
                    "train the adapter again or download it again."
                )
            where = f"{LEXICAL_FILE} of adapter {name!r}" if name is not None else LEXICAL_FILE
            model = LexicalModel.from_bytes(source[LEXICAL_FILE], info.labels, where)
        else:
            model = LexicalModel.load(Path(source) / LEXICAL_FILE, info.labels)
        return cls(
            info.temperature,
            model,
            float(lexical["weight"]),
            float(lexical["mixture_temperature"]),
            name=name,
        )


def fit_readouts(
    loglik: torch.Tensor,
    temperature: float,
    pairs: tuple[Sequence[tuple[str, str]], Sequence[tuple[str, str]]],
    labels: Sequence[str],
    weight: float,
) -> tuple[Readout, Readout]:
    """An adapter's readouts from its validation log-likelihoods `loglik` [N_val, K] (already fitted:
    its `temperature`) and the (text, label) `pairs` of the training and validation splits.

    The lexical model's n-grams, C and temperature and the mixture's temperature are chosen on the
    validation split. Two readouts: the held-out one (lexical model fitted on the training split: the
    validation figures are its) and the one kept, its lexical model refitted on training + validation
    with the same choices, as a TF-IDF baseline is refitted on all its data (BENCHMARKS.md, "Refitting
    the lexical model": more accurate on average and better calibrated on the quality suite).
    Without a lexical model (weight 0, or a label with no training text) both are the adapter alone.
    """
    alone = Readout(temperature)
    model = fit_lexical(*pairs, labels) if weight > 0 else None
    if model is None:
        return alone, alone
    index = {label: i for i, label in enumerate(labels)}
    mixture = Readout(temperature, model, weight).mixture(loglik, [t for t, _ in pairs[1]])
    held_out = Readout(temperature, model, weight, fit_temperature(mixture, [index[g] for _, g in pairs[1]]))
    return held_out, replace(held_out, lexical=model.refit([*pairs[0], *pairs[1]]))
