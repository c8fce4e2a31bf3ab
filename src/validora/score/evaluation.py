"""An adapter judged on labeled data: metrics, calibration error and, for one label, the threshold that
meets a target precision or recall — what `m alora eval` shows, computed here as one report object.

The scores come from whatever ran the adapter (the CLI's in-process validator); this module only reads
them, so the numbers are the same wherever they are displayed (table, JSON, plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validora.core.calibration import PRPoint, Threshold, pr_curve, scores_ece, threshold_for
from validora.core.metrics import Metrics
from validora.errors import ConfigError
from validora.score.readout import LabelScores


@dataclass(frozen=True)
class Evaluation:
    """The report: `metrics` on the adapter's labels, ECE (10 bins) of its calibrated probabilities, the
    adapter's temperature and lexical model, and with `label` the threshold found on P(label)."""

    metrics: Metrics
    scores: list[LabelScores]
    gold: list[str]
    labels: list[str]
    ece: float
    temperature: float
    lexical: dict[str, Any] | None
    label: str | None = None
    threshold: Threshold | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: every metric, ece, temperature, lexical and, when found, the threshold."""
        data: dict[str, Any] = {**self.metrics.to_dict(), "ece": self.ece, "temperature": self.temperature,
                                "lexical": self.lexical}  # fmt: skip
        if self.threshold is not None:
            data["threshold"] = self.threshold.to_dict(self.label or "")
        return data

    def curve(self) -> list[PRPoint]:
        """Precision and recall of P(label) at every threshold (empty without a label)."""
        if self.label is None:
            return []
        return pr_curve([s.probs[self.label] for s in self.scores], [g == self.label for g in self.gold])

    def write_plots(self, paths: Sequence[Path], title: str) -> None:
        """The confusion matrix, the reliability diagram and, with a threshold, the precision-recall curve,
        to `paths` in that order (`title`: what was evaluated, e.g. the data file's name)."""
        from validora.core import plots

        plots.confusion_matrix(self.metrics, paths[0], title=title)
        index = {name: i for i, name in enumerate(self.labels)}
        probs = [[s.probs[name] for name in self.labels] for s in self.scores]
        plots.reliability_diagram(probs, [index[g] for g in self.gold], paths[1], title=title)
        if self.threshold is not None:
            curve_title = f"P({self.label}) on {title}"
            plots.precision_recall_curve(self.curve(), paths[2], curve_title, self.threshold)


def check_label(label: str | None, labels: Sequence[str]) -> None:
    """Refuse a threshold label the adapter does not have (before any scoring)."""
    if label is not None and label not in labels:
        raise ConfigError(f"label {label!r} is not one of this adapter's labels: {labels}.", option="label")


def evaluation(
    metrics: Metrics,
    scores: Sequence[LabelScores],
    gold: Sequence[str],
    labels: Sequence[str],
    *,
    temperature: float,
    lexical: dict[str, Any] | None = None,
    label: str | None = None,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> Evaluation:
    """The report for `scores` of the gold-labelled items (and the `metrics` computed from them); with
    `label`, the threshold on P(label) meeting the target (see `threshold_for`)."""
    check_label(label, labels)
    found = None
    if label is not None:
        points = [s.probs[label] for s in scores]
        found = threshold_for(points, [g == label for g in gold], target_precision, target_recall)
    return Evaluation(
        metrics, list(scores), list(gold), list(labels), scores_ece(scores, gold), temperature, lexical,
        label, found,
    )  # fmt: skip
