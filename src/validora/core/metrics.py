"""Classification metrics computed from label predictions (no scikit-learn needed at run time)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class LabelStats:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Metrics:
    accuracy: float
    macro_f1: float
    per_label: dict[str, LabelStats]
    confusion: list[list[int]]  # rows: true label, columns: predicted, in `labels` order
    labels: list[str]
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of always answering the most frequent true label."""
        return max((s.support for s in self.per_label.values()), default=0) / max(self.n, 1)


def classification_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> Metrics:
    """Accuracy, macro-F1 over labels present in `gold`, per-label P/R/F1 and the confusion matrix."""
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for g, p in zip(gold, pred, strict=True):
        confusion[index[g]][index[p]] += 1
    per_label: dict[str, LabelStats] = {}
    for label, i in index.items():
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(k))
        support = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = LabelStats(precision, recall, f1, support)
    present = [s.f1 for s in per_label.values() if s.support]
    n = len(gold)
    correct = sum(confusion[i][i] for i in range(k))
    return Metrics(
        accuracy=correct / n if n else 0.0,
        macro_f1=sum(present) / len(present) if present else 0.0,
        per_label=per_label,
        confusion=confusion,
        labels=list(labels),
        n=n,
    )
