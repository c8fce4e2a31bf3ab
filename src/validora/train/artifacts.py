"""What a finished run writes into its adapter directory: the weights, the lexical model, validora.json,
metrics.json, the three report images and the model card. The directory is staged by the caller
(adapter.saving.staged_directory): the target changes only when everything here is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from validora.adapter.saving import write_json
from validora.adapter.schema import LEXICAL_FILE, RELIABILITY_FILE, AdapterInfo, file_hashes
from validora.core.prompting import PromptFormat
from validora.score.readout import Readout
from validora.train.recipe import TrainConfig
from validora.train.report import TrainReport


def adapter_info(
    config: TrainConfig,
    *,
    epochs: int,
    base_model: str,
    fmt: PromptFormat,
    requirements: bool,
    report: TrainReport,
    readout: Readout,
) -> AdapterInfo:
    """validora.json of the run: its "training" block is the recipe (what shaped the weights), the
    epochs resolved and the split sizes; no path and no execution knob."""
    from validora import __version__

    return AdapterInfo(
        adapter_type=config.recipe.adapter,
        base_model=base_model,
        labels=list(fmt.labels),
        prompt=fmt.describe(),
        requirements=requirements,
        training={
            **config.recorded(),
            "epochs": epochs,  # resolved, when the recipe left it to the data size
            "n_train": report.n_train,
            "n_val": report.n_val,
        },
        metrics={
            "best_epoch": report.best_epoch,
            "val_accuracy": report.metrics.accuracy,
            "val_macro_f1": report.metrics.macro_f1,
            "chance_accuracy": report.metrics.chance_accuracy,
            "val_ece": report.val_ece,
        },
        temperature=report.temperature,
        lexical=readout.describe(),
        validora_version=__version__,
    )


def write_adapter(
    staging: Path,
    peft: Any,
    info: AdapterInfo,
    report: TrainReport,
    readout: Readout,
    val_probs: torch.Tensor,
    val_gold: Sequence[int],
) -> None:
    """Every file of the adapter directory, into `staging`; validora.json records the fingerprint of the
    base model's weights (core/models.weights_fingerprint), which every load compares."""
    from validora.adapter import card
    from validora.core import plots
    from validora.core.models import weights_fingerprint

    if info.base_fingerprint is None:
        info = replace(info, base_fingerprint=weights_fingerprint(peft))

    peft.save_pretrained(str(staging), safe_serialization=True)
    if info.lexical is not None and readout.lexical is not None:
        readout.lexical.save(staging / LEXICAL_FILE)
    info = replace(info, file_sha256=file_hashes(staging))  # what every load checks the files against
    (staging / "validora.json").write_text(info.to_json(), encoding="utf-8")
    write_json(staging / "metrics.json", report.to_dict())
    plots.training_curves(report, staging / "training_curves.png")
    plots.confusion_matrix(report.metrics, staging / "confusion_matrix.png")
    plots.reliability_diagram(
        val_probs, list(val_gold), staging / RELIABILITY_FILE,
        title=f"Validation reliability (temperature {report.temperature:.3g})",
    )  # fmt: skip
    (staging / "README.md").write_text(card.model_card(info, report.to_dict()), encoding="utf-8")
