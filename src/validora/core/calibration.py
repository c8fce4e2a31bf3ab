"""Calibrated label probabilities: temperature scaling, calibration error, thresholds for a target.

Label probabilities gate generations (`req(..., threshold=)`), so they must mean what they say. A
fine-tuned adapter is usually over-confident; one temperature T, fitted on the held-out split at the
end of training, turns its label log-likelihoods into probabilities softmax(loglik / T) whose
confidence matches accuracy. T never changes which label is most probable. Only the fit needs torch
(adapter/schema.py imports this module to check a stored temperature, and stays torch-free).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

from validora.errors import ConfigError

T_MIN, T_MAX = 0.05, 20.0  # a temperature outside these is a symptom (a degenerate split), not a fit
# A temperature read from a file (validora.json's, the lexical model's, the mixture's) outside these is
# corruption, refused: fits lie in T_MIN..T_MAX and files written before calibration hold 1.0; the 5x
# margin admits hand-tuned or imported values. Beyond them a temperature is no calibration: above 100 a
# margin of several nats between labels reads as a coin toss (uniform-looking, meaningless
# probabilities), below 0.01 a hundredth of a nat reads as certainty (and 1e-300 overflows to inf/NaN).
STORED_T_RANGE = (0.01, 100.0)
ECE_BINS = 10

if TYPE_CHECKING:
    import torch


def _nll(z: torch.Tensor, target: torch.Tensor, log_t: float) -> float:
    scaled = z / math.exp(log_t)
    return float((scaled.logsumexp(dim=-1) - (target * scaled).sum(dim=-1)).mean())


def fit_temperature(loglik: torch.Tensor, gold: Sequence[int]) -> float:
    """The T in [0.05, 20] minimising the NLL of softmax(loglik / T) over held-out items.

    `loglik` is [N, K] (label sequence log-likelihoods), `gold` the N gold label indices. The NLL is
    convex in 1/T, so a golden-section search on log T finds the minimum without tuning. The gold
    label gets weight 1 - 1/(N+2) and the others share 1/(N+2) (Laplace's rule of succession): N
    items all right are no proof of certainty, and without it a split the adapter gets entirely
    right has no minimum (T would sink to the bound and every probability to 0 or 1); with errors in
    the split the change is negligible. Rows that are not finite are left out; with nothing left to
    fit (no rows, or every row's labels tied) T is 1.
    """
    import torch

    z = torch.as_tensor(loglik, dtype=torch.float64).detach().cpu()
    if z.ndim != 2:
        raise ConfigError(
            f"fit_temperature needs an [N, K] tensor of log-likelihoods, not shape {tuple(z.shape)}."
        )
    g = torch.as_tensor(list(gold), dtype=torch.long)
    if g.shape[0] != z.shape[0]:
        raise ConfigError(f"{z.shape[0]} rows of log-likelihoods but {g.shape[0]} gold labels.")
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= z.shape[1]):
        raise ConfigError(f"Gold label indices must lie in [0, {z.shape[1]}).")
    keep = torch.isfinite(z).all(dim=1)
    z, g = z[keep], g[keep]
    z = z - z.max(dim=1, keepdim=True).values
    if z.shape[0] == 0 or not bool((z != 0).any()):
        return 1.0
    n, k = z.shape  # k > 1 here: one label alone is always tied
    target = torch.full((n, k), 1 / (n + 2) / (k - 1), dtype=torch.float64)
    target[torch.arange(n), g] = 1 - 1 / (n + 2)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, target, a), _nll(z, target, b)
    for _ in range(80):  # the bracket shrinks by 0.618 a step: far below float precision after 80
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, target, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, target, b)
    return float(math.exp((lo + hi) / 2))


def positive_number(value: Any) -> bool:
    """A finite number above zero, not a bool: what a temperature or a target must be."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


# ----- calibration error ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bin:
    """One confidence bin of a reliability diagram: (lower, upper], its items, mean confidence, accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


def top_label(probs: Any, gold: Sequence[int]) -> tuple[list[float], list[bool]]:
    """The most probable label's probability per item, and whether that label is the gold one."""
    import torch

    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] != len(gold):
        raise ConfigError(f"Expected [N, K] probabilities for {len(gold)} items, not shape {tuple(p.shape)}.")
    if p.shape[0] == 0:
        return [], []
    top, arg = p.max(dim=1)
    return top.tolist(), [int(a) == int(g) for a, g in zip(arg.tolist(), gold, strict=True)]


def reliability_bins(top_probs: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> list[Bin]:
    """Equal-width bins on the top-label probability: bin i holds ((i)/bins, (i+1)/bins], 0 in the first."""
    if len(top_probs) != len(correct):
        raise ConfigError(f"{len(top_probs)} probabilities but {len(correct)} correctness flags.")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, p in enumerate(top_probs):
        upper = math.ceil(round(float(p) * bins, 9))  # 0.7 * 10 is 7.000000000000001: still bin 7
        members[min(max(upper - 1, 0), bins - 1)].append(i)
    out = []
    for b, idx in enumerate(members):
        n = len(idx)
        conf = math.fsum(float(top_probs[i]) for i in idx) / n if n else 0.0
        acc = sum(bool(correct[i]) for i in idx) / n if n else 0.0
        out.append(Bin(b / bins, (b + 1) / bins, n, conf, acc))
    return out


def expected_calibration_error(
    top_probs: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float:
    """ECE: the item-weighted mean gap between confidence and accuracy over equal-width bins (0 if empty)."""
    table = reliability_bins(top_probs, correct, bins)
    n = sum(b.count for b in table)
    return math.fsum(b.count * abs(b.accuracy - b.confidence) for b in table) / n if n else 0.0


def scores_ece(scores: Sequence[Any], gold: Sequence[str], bins: int = ECE_BINS) -> float:
    """ECE of label scores (anything with `.label` and `.probs`) against gold labels."""
    return expected_calibration_error(
        [s.probs[s.label] for s in scores], [s.label == g for s, g in zip(scores, gold, strict=True)], bins
    )


# ----- thresholds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PRPoint:
    threshold: float  # items scoring at least this are predicted positive
    precision: float
    recall: float


def pr_curve(scores: Sequence[float], is_positive: Sequence[bool]) -> list[PRPoint]:
    """Precision and recall at every distinct score as threshold, highest threshold first."""
    if len(scores) != len(is_positive):
        raise ConfigError(f"{len(scores)} scores but {len(is_positive)} positive flags.")
    positives = sum(map(bool, is_positive))
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    points: list[PRPoint] = []
    tp = taken = 0
    for k, i in enumerate(order):
        tp += bool(is_positive[i])
        taken += 1
        if k + 1 < len(order) and float(scores[order[k + 1]]) == float(scores[i]):
            continue  # ties pass or fail together
        points.append(PRPoint(float(scores[i]), tp / taken, tp / positives if positives else 0.0))
    return points


@dataclass(frozen=True)
class Threshold:
    threshold: float
    precision: float
    recall: float
    target: str  # "precision" | "recall"
    value: float  # the target asked for

    def to_dict(self, label: str) -> dict[str, Any]:
        return {
            "label": label,
            "threshold": self.threshold,
            "precision": self.precision,
            "recall": self.recall,
            "target": {self.target: self.value},
        }


def _round_down(value: float, above: float) -> float:
    """The shortest decimal ≤ value still above `above`: the same items pass, and it reads well."""
    for digits in range(1, 7):
        short = float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR))
        if above < short <= value:
            return short
    return value


def threshold_for(
    scores: Sequence[float],
    is_positive: Sequence[bool],
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> Threshold:
    """The probability threshold that meets a target precision or recall on these items.

    Items with score ≥ threshold count as positive. For a precision target the lowest threshold
    whose precision reaches it (keeping most recall); for a recall target the highest threshold
    whose recall reaches it (keeping most precision). The threshold is the shortest decimal that
    selects exactly the same items. Unreachable targets raise a ConfigError naming the best value.
    """
    if (target_precision is None) == (target_recall is None):
        raise ConfigError("Give exactly one of a target precision or a target recall.")
    target = "precision" if target_precision is not None else "recall"
    value: Any = target_precision if target_precision is not None else target_recall
    if not (positive_number(value) and float(value) <= 1):
        raise ConfigError(f"The target {target} must be above 0 and at most 1, not {value}.")
    curve = pr_curve(scores, is_positive)
    if not any(map(bool, is_positive)):
        raise ConfigError(f"No positive items among the {len(scores)} given: no {target} can be measured.")
    meets = [i for i, p in enumerate(curve) if getattr(p, target) >= value]
    if not meets:
        best = max(curve, key=lambda p: (getattr(p, target), p.recall))
        raise ConfigError(
            f"No threshold reaches {target} {value:g} on these {len(scores)} items: the best is "
            f"{getattr(best, target):.3f} (threshold {best.threshold:.4g}, precision {best.precision:.3f}, "
            f"recall {best.recall:.3f})."
        )
    # Precision: the lowest threshold (the last point meeting it). Recall: the highest (the first).
    k = meets[-1] if target == "precision" else meets[0]
    point = curve[k]
    below = curve[k + 1].threshold if k + 1 < len(curve) else -math.inf
    return Threshold(
        _round_down(point.threshold, max(below, 0.0)), point.precision, point.recall, target, value
    )
