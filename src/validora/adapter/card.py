"""The model card (README.md) of an adapter, written from validora.json and metrics.json alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from validora.adapter.schema import AdapterInfo
from validora.core.names import public_name


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def hub_base_model(name: str) -> str | None:
    """The base model's hub id for a card's front matter, or None when it has none (a local model)."""
    from validora.core.models import EMBEDDED_ALIAS, EMBEDDED_HUB_ID

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


def front_matter(text: str, where: str) -> dict[str, Any]:
    """The YAML front matter of a model card, read as gguf's converter reads it (between `---` lines,
    tabs as spaces), but through ioyaml.safe_yaml: no aliases, bounded nesting. {} when there is none;
    a ConfigError naming `where` when it is not a YAML mapping."""
    from validora.adapter.ioyaml import safe_yaml
    from validora.errors import ConfigError

    lines = text.splitlines()
    if not lines or lines[0] != "---":
        return {}
    body = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    yaml_text = ("\n".join(body) + "\n").replace("- no\n", '- "no"\n').replace("\t", "  ")
    data, _ = safe_yaml(yaml_text, where)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: the front matter is a YAML {type(data).__name__}, not a mapping.")
    return data or {}
