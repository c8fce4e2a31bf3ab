"""What a training run or an evaluation leaves for people: curves, confusion matrix, reliability
diagram, precision-recall curve, model card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from validora.adapters import AdapterInfo
from validora.metrics import Metrics
from validora.names import public_name


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
    from validora.calibration import expected_calibration_error, reliability_bins, top_label

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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def hub_base_model(name: str) -> str | None:
    """The base model's hub id for a card's front matter, or None when it has none (a local model)."""
    from validora.models import EMBEDDED_ALIAS, EMBEDDED_HUB_ID

    if name == EMBEDDED_ALIAS:
        return EMBEDDED_HUB_ID
    return name if "/" in name and public_name(name) == name else None


def public_base(name: str) -> str:
    """How published files name the base model: its hub id, else its public name."""
    return hub_base_model(name) or public_name(name)


def _usage(info: AdapterInfo, repo_id: str | None, intrinsic_name: str | None) -> str:
    """How to load the adapter: by hub id once published, from its directory before."""
    where = repo_id or "./this-adapter"
    base = public_base(info.base_model)
    extra = f", intrinsic_name={intrinsic_name!r}" if intrinsic_name else ""
    label = info.labels[-1]
    return f"""```bash
m alora predict {where} "text to classify"
```

```python
from validora import CustomIntrinsicAdapter, LocalHFBackend, Session, req

backend = LocalHFBackend(model_id="{base}")
backend.add_adapter(CustomIntrinsicAdapter(model_id="{where}", base_model_name="{base}"{extra}))
m = Session(backend)
result = m.instruct(
    "Write a short summary of: {{{{text}}}}",
    user_variables={{"text": "..."}},
    requirements=[req("The label must not be '{label}'.")],
)
print(result)
```"""


def _calibration(metrics: dict[str, Any], images_at: str) -> str:
    """The calibration section of a card, for runs that fitted a temperature (and drew the diagram)."""
    if "val_ece" not in metrics:
        return ""
    return f"""
### Calibration

Label probabilities are softmax(log-likelihood / {metrics.get("temperature", 1.0):.3g}), the temperature
fitted on the held-out split: expected calibration error **{metrics["val_ece"]:.3f}** (10 bins).

![reliability diagram]({images_at}reliability_diagram.png)
"""


def _lexical_line(lexical: dict[str, Any] | None) -> str:
    if not lexical:
        return "none (the adapter's label probabilities alone)"
    return (
        f"TF-IDF ({lexical.get('kind')} n-grams) + logistic regression in `{lexical.get('file')}`, mixed in at "
        f"weight {lexical['weight']:g} (mixture temperature {lexical['mixture_temperature']:.3g}); validora applies it "
        "wherever it scores labels, other engines that load only the adapter do not"
    )


def model_card(
    info: AdapterInfo,
    metrics: dict[str, Any],
    *,
    repo_id: str | None = None,
    intrinsic_name: str | None = None,
    images_at: str = "",
) -> str:
    """A README.md built from validora.json and metrics.json alone (no LLM involved).

    It never shows a local path: the base model appears by hub id or by public_name().

    With `repo_id` the usage code loads the adapter by hub id; `images_at` is the folder of the
    report images relative to the card.
    """
    kind = "activated LoRA (aLoRA)" if info.is_alora else "LoRA"
    best = metrics.get("metrics", {})
    per_label = best.get("per_label", {})
    rows = [(label, s["precision"], s["recall"], s["f1"], s["support"]) for label, s in per_label.items()]
    epochs = [
        (e["epoch"], e["train_loss"], e["val_loss"], e["val_accuracy"], e["val_macro_f1"])
        for e in metrics.get("epochs", [])
    ]
    train_args = {
        k: info.training.get(k)
        for k in (
            "epochs",
            "learning_rate",
            "batch_size",
            "grad_accum",
            "max_length",
            "rank",
            "seed",
            "val_fraction",
        )
    }
    hub_id = hub_base_model(info.base_model)
    front = [
        "---",
        "library_name: peft",
        *([f"base_model: {hub_id}"] if hub_id else []),  # the Hub refuses ids it does not host
        "tags:",
        "- validora",
        f"- {info.adapter_type}",
        "- requirement-validator",
        "---",
    ]
    imported = info.training.get("imported_from")
    if imported:  # `m alora import`: trained by another tool, nothing measured here
        origin = f"A {kind} adapter trained with another tool and imported into [validora](https://pypi.org/project/validora/)"
        examples = ""
        measured = """## Held-out metrics

None: it was trained elsewhere. Measure it on labeled data with `m alora eval ADAPTER DATA.jsonl`.

"""
    else:
        origin = f"A {kind} adapter trained with [validora](https://pypi.org/project/validora/)"
        examples = f"- **Training examples:** {info.training.get('n_train')} (held out for validation: {info.training.get('n_val')})\n"
        measured = f"""## Held-out metrics (epoch {metrics.get("best_epoch")})

Accuracy **{best.get("accuracy", 0):.3f}**, macro-F1 **{best.get("macro_f1", 0):.3f}**
(always answering the most frequent label would score {metrics.get("chance_accuracy", 0):.3f}).

{_table(("label", "precision", "recall", "F1", "support"), rows)}

![confusion matrix]({images_at}confusion_matrix.png)
{_calibration(metrics, images_at)}
### Per epoch

{_table(("epoch", "train loss", "val loss", "val accuracy", "val macro-F1"), epochs)}

![training curves]({images_at}training_curves.png)

## Training arguments

```json
{json.dumps(train_args, indent=2)}
```

"""
    body = f"""
# Validator adapter ({kind})

{origin} to classify text into
{len(info.labels)} labels: {", ".join(f"`{label}`" for label in info.labels)}.

- **Base model:** `{public_name(info.base_model)}`
- **Adapter type:** {info.adapter_type}
- **Invocation prompt:** `{json.dumps(info.invocation_prompt)[1:-1]}`
{examples}- **Probability temperature:** {info.temperature:.3g} ({"fitted on the held-out split: label probabilities are calibrated" if info.temperature != 1 else "none fitted"})
- **Lexical model:** {_lexical_line(info.lexical)}

{measured}## Usage

{_usage(info, repo_id, intrinsic_name)}

## Data warning

This adapter was trained on a small domain dataset. Small models fine-tuned on small datasets can
memorise their training examples, and a lexical model (`lexical.safetensors`) lists the words and
n-grams of the training texts; do not publish an adapter trained on private data.
"""
    return "\n".join(front) + "\n" + body
