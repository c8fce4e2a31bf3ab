"""What a training run or an evaluation leaves for people to look at: curves, confusion matrix,
reliability diagram, precision-recall curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from validora.core.metrics import Metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def training_curves(report: Any, path: Path) -> None:
    plt = _pyplot()
    epochs = [r.epoch for r in report.epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r.train_loss for r in report.epochs], "o-", label="train loss")
    left.plot(epochs, [r.val_loss for r in report.epochs], "o-", label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss per label token")
    left.legend()
    right.plot(epochs, [r.val_accuracy for r in report.epochs], "o-", label="validation accuracy")
    right.plot(epochs, [r.val_macro_f1 for r in report.epochs], "o-", label="validation macro-F1")
    right.axhline(
        report.metrics.chance_accuracy, color="grey", linestyle=":", label="majority-label accuracy"
    )
    right.axvline(report.best_epoch, color="green", linestyle="--", alpha=0.5, label="kept epoch")
    right.set_ylim(0, 1.02)
    right.set_xlabel("epoch")
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(metrics: Metrics, path: Path, title: str = "Validation confusion matrix") -> None:
    plt = _pyplot()
    k = len(metrics.labels)
    size = max(4.0, 0.7 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(metrics.confusion, cmap="Blues")
    ax.set_xticks(range(k), metrics.labels, rotation=45, ha="right")
    ax.set_yticks(range(k), metrics.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max((max(row) for row in metrics.confusion), default=0)
    for i, row in enumerate(metrics.confusion):
        for j, value in enumerate(row):
            ax.text(
                j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black"
            )
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_diagram(
    probs: Any, gold: Sequence[int], path: Path, title: str = "Validation reliability"
) -> float:
    """Accuracy against confidence in 10 bins of the top-label probability, and return the ECE.

    `probs` is [N, K] (calibrated label probabilities), `gold` the N gold label indices. A calibrated
    adapter's bars follow the diagonal; bars below it mean over-confidence.
    """
    from validora.core.calibration import expected_calibration_error, reliability_bins, top_label

    top, correct = top_label(probs, gold)
    bins = reliability_bins(top, correct)
    ece = expected_calibration_error(top, correct)
    plt = _pyplot()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0].upper - bins[0].lower
    lefts = [b.lower for b in bins]
    ax.bar(lefts, [b.accuracy for b in bins], width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(
        lefts,
        [b.confidence - b.accuracy if b.count else 0 for b in bins],
        bottom=[b.accuracy for b in bins],
        width=width,
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f} ({len(top)} items)")
    ax.legend(loc="upper left")
    counts.bar(lefts, [b.count for b in bins], width=width, align="edge", edgecolor="black", color="grey")
    counts.set_xlim(0, 1)
    counts.set_xlabel("confidence (probability of the predicted label)")
    counts.set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ece


def precision_recall_curve(curve: Sequence[Any], path: Path, title: str, chosen: Any = None) -> None:
    """Precision and recall against the probability threshold (points of calibration.pr_curve),
    with the chosen threshold marked."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.step([p.recall for p in curve], [p.precision for p in curve], where="post", marker=".")
    left.set_xlabel("recall")
    left.set_ylabel("precision")
    left.set_xlim(0, 1.02)
    left.set_ylim(0, 1.02)
    right.plot([p.threshold for p in curve], [p.precision for p in curve], ".-", label="precision")
    right.plot([p.threshold for p in curve], [p.recall for p in curve], ".-", label="recall")
    right.set_xlabel("threshold on the probability")
    right.set_xlim(0, 1.02)
    right.set_ylim(0, 1.02)
    if chosen is not None:
        left.plot([chosen.recall], [chosen.precision], "o", color="red", markersize=9)
        right.axvline(chosen.threshold, color="red", linestyle="--", label=f"threshold {chosen.threshold:g}")
    right.legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
