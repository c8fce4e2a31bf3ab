"""Calibrated probabilities (a temperature stored with the adapter, applied wherever labels are scored),
calibration error and thresholds for a target precision or recall."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from validora.adapter.schema import LEXICAL_FILE, AdapterInfo
from validora.cli import app
from validora.core.calibration import (
    expected_calibration_error,
    fit_temperature,
    pr_curve,
    reliability_bins,
    threshold_for,
)
from validora.errors import AdapterError, ConfigError
from validora.score import scoring
from validora.score.readout import Readout

from ..conftest import EXAMPLES, write_jsonl

runner = CliRunner()


# ----- fitting ---------------------------------------------------------------------------------------
def synthetic(temperature: float, n: int = 4000, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Log-likelihoods whose gold labels are drawn from softmax(loglik / temperature)."""
    g = torch.Generator().manual_seed(seed)
    loglik = torch.randn(n, k, generator=g) * 4
    gold = torch.multinomial(torch.softmax(loglik / temperature, -1), 1, generator=g)[:, 0]
    return loglik, gold.tolist()


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_t):
    loglik, gold = synthetic(true_t)
    assert fit_temperature(loglik, gold) == pytest.approx(true_t, rel=0.1)


def test_fit_lowers_the_held_out_nll_and_has_fallbacks():
    loglik, gold = synthetic(2.5, n=500, seed=3)
    t = fit_temperature(loglik, gold)
    nll = torch.nn.functional.cross_entropy
    gold_t = torch.tensor(gold)
    assert nll(loglik / t, gold_t) < nll(loglik, gold_t)
    for other in (t * 0.9, t * 1.1):
        assert nll(loglik / t, gold_t) <= nll(loglik / other, gold_t) + 1e-9
    assert fit_temperature(torch.zeros(0, 3), []) == 1.0  # nothing to fit
    assert fit_temperature(torch.zeros(5, 3), [0, 1, 2, 0, 1]) == 1.0  # every label tied: T changes nothing
    with_nan = torch.cat([loglik, torch.full((1, 4), math.nan)])
    assert fit_temperature(with_nan, [*gold, 0]) == pytest.approx(t)  # a non-finite row is left out
    # Every item right: the plain NLL falls forever as T shrinks. With one pseudo-error in N + 2
    # (Laplace) the fit stops where the gold label's probability is (N + 1) / (N + 2).
    separable = torch.tensor([[0.0, -1.0], [-1.0, 0.0]] * 4)
    t = fit_temperature(separable, [0, 1] * 4)
    assert torch.softmax(separable[0] / t, -1)[0] == pytest.approx(9 / 10, abs=1e-6)
    with pytest.raises(ConfigError, match="gold"):
        fit_temperature(loglik, gold[:-1])


def test_temperature_keeps_the_ranking_and_sums_to_one():
    loglik, _ = synthetic(1.0, n=50)
    for t in (0.3, 1.0, 3.0):
        probs = Readout(t).probabilities(loglik, ())
        assert torch.allclose(probs.sum(-1), torch.ones(50))
        assert torch.equal(probs.argmax(-1), loglik.argmax(-1))
        [scores] = Readout(t).scores(["a", "b", "c", "d"], loglik[:1], ["x"])
        assert math.isclose(sum(scores.probs.values()), 1, abs_tol=1e-6)
        assert scores.label == "abcd"[int(loglik[0].argmax())]
    hot = Readout(3.0).probabilities(loglik, ())
    assert (hot.max(-1).values < Readout().probabilities(loglik, ()).max(-1).values).all()  # less confident


# ----- stored with the adapter -----------------------------------------------------------------------
def info_dict(**extra) -> dict:
    return {
        "adapter_type": "alora",
        "base_model": "m",
        "labels": ["a", "b"],
        "prompt": {"invocation_prompt": "x", "invocation_ids": [1], "label_ids": {"a": [2], "b": [3]}},
        **extra,
    }


def adapter_dir(tmp_path: Path, text: str) -> Path:
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "validora.json").write_text(text)
    return tmp_path


def test_temperature_is_stored_and_read_back(tmp_path):
    info = AdapterInfo(**info_dict(temperature=2.75))
    assert AdapterInfo.read(adapter_dir(tmp_path, info.to_json())).temperature == 2.75
    assert AdapterInfo.read(adapter_dir(tmp_path, json.dumps(info_dict()))).temperature == 1.0  # older files
    assert AdapterInfo.read(adapter_dir(tmp_path, json.dumps(info_dict(temperature=2)))).temperature == 2.0
    for bad in ('"hot"', "0", "-1.5", "NaN", "Infinity", "true", "null"):
        text = json.dumps(info_dict())[:-1] + f', "temperature": {bad}}}'
        with pytest.raises(AdapterError, match="'temperature' must be a finite number above 0"):
            AdapterInfo.read(adapter_dir(tmp_path, text))


# ----- applied wherever labels are scored (real model) -----------------------------------------------
def tempered(probs: dict[str, float], t: float) -> dict[str, float]:
    """softmax(loglik / t) from the T=1 probabilities: log p differs from loglik by a per-item constant."""
    logp = torch.tensor(list(probs.values()), dtype=torch.float64).log()
    return dict(zip(probs, torch.softmax(logp / t, -1).tolist(), strict=True))


def with_temperature(trained_adapter: Path, target: Path, temperature: float) -> Path:
    """A copy of the trained adapter with `temperature` written into its validora.json, without its
    lexical model (tests/score/test_lexical.py covers the mixture): the temperature alone shapes its scores."""
    path = shutil.copytree(trained_adapter, target)
    info = json.loads((path / "validora.json").read_text())
    (path / "validora.json").write_text(json.dumps({**info, "temperature": temperature, "lexical": None}))
    (path / LEXICAL_FILE).unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def hot_adapter(trained_adapter, tmp_path_factory) -> Path:
    return with_temperature(trained_adapter, tmp_path_factory.mktemp("hot") / "hot", 3.0)


@pytest.fixture(scope="module")
def cold_adapter(trained_adapter, tmp_path_factory) -> Path:
    return with_temperature(trained_adapter, tmp_path_factory.mktemp("cold") / "cold", 1.0)


TEXTS = ["rod knock at 3100 rpm under load", "blue smoke at startup, burns a quart of oil", "runs fine"]


def test_validator_applies_the_stored_temperature(hot_adapter, fresh_model):
    from validora.backends.validator import load_validator

    validator = load_validator(hot_adapter, loaded=fresh_model())
    assert validator.info.temperature == 3.0
    cold = scoring.score_items(validator.model, validator.fmt, TEXTS)  # T = 1
    hot = validator.predict(TEXTS)
    _, evaluated = validator.evaluate(TEXTS, ["connecting_rod", "piston_rings", "no_failure"])
    for c, h, e in zip(cold, hot, evaluated, strict=True):
        assert h.probs == pytest.approx(tempered(c.probs, 3.0), abs=1e-5)
        assert e.probs == pytest.approx(h.probs, abs=1e-6)
        assert h.label == c.label and math.isclose(sum(h.probs.values()), 1, abs_tol=1e-5)
    assert max(hot[0].probs.values()) < max(cold[0].probs.values())


def test_program_checks_apply_each_adapters_temperature(cold_adapter, hot_adapter):
    from validora import CustomIntrinsicAdapter, LocalHFBackend
    from validora.score.checks import Check, score_checks
    from validora.score.readout import Readout

    backend = LocalHFBackend(device="cpu")
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(cold_adapter), intrinsic_name="cold"))
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(hot_adapter), intrinsic_name="hot"))
    output = TEXTS[0]
    cold, hot = backend.check(output, [("cold", None), ("hot", None)])  # several adapters, one pass
    (alone,) = backend.check(output, [("hot", None)])  # one adapter: the single-forward path
    assert hot.scores.probs == pytest.approx(tempered(cold.scores.probs, 3.0), abs=1e-4)
    assert alone.scores.probs == pytest.approx(hot.scores.probs, abs=1e-4)
    assert hot.scores.label == cold.scores.label
    # The full path (LoRA adapters take it) applies the temperature too.
    backend._model.set_adapter("hot")
    fmt = backend._registry.get("hot").fmt
    (full,) = score_checks(
        backend._model, output, [Check("hot", fmt, None, Readout(3.0))], alora={"hot": False}
    )
    assert full.scores.probs == pytest.approx(hot.scores.probs, abs=1e-4)


# ----- calibration error ---------------------------------------------------------------------------
def test_ece_on_a_hand_made_set():
    # Bin (0.9, 1.0]: confidence 0.95, accuracy 1/2 → gap 0.45 on 2 items.
    # Bin (0.5, 0.6]: confidence 0.55, accuracy 2/2 → gap 0.45 on 2 items.
    # Bin (0.7, 0.8]: confidence 0.8 (0.8 belongs to this bin), accuracy 4/5 → gap 0 on 5 items.
    top = [0.95, 0.95, 0.55, 0.55, 0.8, 0.8, 0.8, 0.8, 0.8]
    correct = [True, False, True, True, True, True, True, True, False]
    assert expected_calibration_error(top, correct) == pytest.approx((2 * 0.45 + 2 * 0.45) / 9)
    bins = reliability_bins(top, correct)
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 2, 0, 5, 0, 2]
    assert bins[7].accuracy == pytest.approx(0.8) and bins[7].confidence == pytest.approx(0.8)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([], []) == 0.0


# ----- thresholds ------------------------------------------------------------------------------------
SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
POSITIVE = [True, True, False, True, True, False, True, False, False, False]  # 5 positives


def test_pr_curve_counts_ties_together():
    curve = pr_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    assert [(p.threshold, p.precision, p.recall) for p in curve] == [
        (0.9, 1.0, 0.5),
        (0.5, 2 / 3, 1.0),
        (0.1, 0.5, 1.0),
    ]


def test_threshold_for_a_target_precision_is_the_lowest_meeting_it():
    # threshold → precision: 0.95 1, 0.9 1, 0.8 2/3, 0.7 3/4, 0.6 4/5, 0.5 4/6, 0.4 5/7 ...
    found = threshold_for(SCORES, POSITIVE, target_precision=0.75)
    assert (found.threshold, found.precision, found.recall) == (0.6, 0.8, 0.8)
    found = threshold_for(SCORES, POSITIVE, target_precision=0.9)  # 0.8 misses; precision is not monotone
    assert (found.threshold, found.precision, found.recall) == (0.9, 1.0, 0.4)
    assert threshold_for(SCORES, POSITIVE, target_precision=0.55).threshold == 0.2  # 5/9 at 0.2, 5/10 at 0.1
    assert threshold_for(SCORES, POSITIVE, target_precision=0.5).threshold == 0.1


def test_threshold_for_a_target_recall_is_the_highest_meeting_it():
    found = threshold_for(SCORES, POSITIVE, target_recall=0.6)
    assert (found.threshold, found.precision, found.recall) == (0.7, 0.75, 0.6)
    found = threshold_for(SCORES, POSITIVE, target_recall=1.0)
    assert (found.threshold, found.precision, found.recall) == (0.4, 5 / 7, 1.0)
    assert found.to_dict("x") == {
        "label": "x",
        "threshold": 0.4,
        "precision": 5 / 7,
        "recall": 1.0,
        "target": {"recall": 1.0},
    }


def test_threshold_is_the_shortest_decimal_selecting_the_same_items():
    scores = [0.83127, 0.8, 0.2]
    found = threshold_for(scores, [True, False, False], target_precision=1.0)
    assert found.threshold == 0.83  # every threshold in (0.8, 0.83127] selects the first item alone
    assert [s >= found.threshold for s in scores] == [True, False, False]
    tight = threshold_for([0.8000004, 0.8000001], [True, False], target_precision=1.0)
    assert 0.8000001 < tight.threshold <= 0.8000004


def test_unreachable_or_meaningless_targets_are_clear_errors():
    with pytest.raises(
        ConfigError, match=r"No threshold reaches precision 0\.99 .* the best is 0\.500"
    ) as err:
        threshold_for([0.9, 0.8], [False, True], target_precision=0.99)
    assert "recall" in str(err.value)
    with pytest.raises(ConfigError, match=r"the best is 0\.667"):
        threshold_for([0.9, 0.8, 0.7, 0.6], [False, True, True, False], target_precision=0.7)
    with pytest.raises(ConfigError, match="No positive items"):
        threshold_for([0.9, 0.8], [False, False], target_recall=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        threshold_for(SCORES, POSITIVE, target_precision=0.9, target_recall=0.9)
    with pytest.raises(ConfigError, match="above 0 and at most 1"):
        threshold_for(SCORES, POSITIVE, target_recall=1.5)


# ----- m alora eval ----------------------------------------------------------------------------------
def test_eval_reports_ece_and_finds_a_threshold(trained_adapter: Path, tmp_path: Path):
    data = EXAMPLES / "engine_failures_test.jsonl"
    plot = tmp_path / "cm.png"
    args = ["alora", "eval", str(trained_adapter), str(data), "--json", "--plot", str(plot)]
    result = runner.invoke(app, [*args, "--label", "piston_rings", "--target-recall", "0.5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert 0 <= metrics["ece"] <= 1 and metrics["temperature"] > 0
    found = metrics["threshold"]
    assert found["label"] == "piston_rings" and found["target"] == {"recall": 0.5}
    assert found["recall"] >= 0.5 and 0 < found["threshold"] <= 1 and 0 < found["precision"] <= 1
    for name in ("cm.png", "cm-reliability.png", "cm-pr.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    again = runner.invoke(app, [*args, "--label", "piston_rings", "--target-recall", "0.5"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_eval_prints_the_threshold_for_req(trained_adapter: Path, tmp_path: Path):
    rows = [json.loads(line) for line in (EXAMPLES / "engine_failures_test.jsonl").read_text().splitlines()]
    data = write_jsonl(tmp_path / "d.jsonl", rows[:12])
    result = runner.invoke(
        app,
        ["alora", "eval", str(trained_adapter), str(data), "--label", "no_failure", "--target-recall", "1"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "ECE (10 bins)" in result.stdout and "recall ≥ 1" in result.stdout
    assert "req(..., accept=['no_failure'], threshold=" in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label", "piston_rings"], "needs --target-precision or --target-recall"),
        (["--target-precision", "0.9"], "need --label"),
        (["--label", "piston_rings", "--target-precision", "0.9", "--target-recall", "0.9"], "not both"),
        (["--label", "piston_rings", "--target-recall", "1.5"], "at most 1"),
        (["--label", "piston_rings", "--target-precision", "0"], "above 0"),
    ],
)
def test_eval_threshold_options_fail_before_loading(tmp_path: Path, extra, message):
    result = runner.invoke(
        app, ["alora", "eval", str(tmp_path / "none"), str(tmp_path / "none.jsonl"), *extra]
    )
    assert result.exit_code == 2 and message in result.output, result.output


def test_eval_refuses_a_label_the_adapter_does_not_have(trained_adapter: Path):
    data = EXAMPLES / "engine_failures_test.jsonl"
    result = runner.invoke(
        app,
        ["alora", "eval", str(trained_adapter), str(data), "--label", "gearbox", "--target-recall", "0.9"],
    )
    assert result.exit_code == 2 and "'gearbox' is not one of this adapter's labels" in result.output


def test_model_card_states_the_calibration():
    from validora.adapter.card import model_card

    card = model_card(AdapterInfo(**info_dict(temperature=1.7)), {"val_ece": 0.031, "temperature": 1.7})
    assert "softmax(log-likelihood / 1.7)" in card and "**0.031**" in card
    assert "![reliability diagram](reliability_diagram.png)" in card
    older = model_card(AdapterInfo(**info_dict()), {})  # trained before calibration: no diagram to show
    assert "reliability_diagram.png" not in older and "none fitted" in older


@pytest.mark.parametrize(("temperature", "flagged"), [(20.0, True), (19.0, False), (1.3, False)])
def test_a_temperature_at_its_upper_bound_marks_the_report_uninformative(temperature, flagged):
    from validora.core.metrics import classification_metrics
    from validora.train.trainer import TrainReport

    metrics = classification_metrics(["a", "b", "a"], ["a", "a", "a"], ["a", "b"])
    report = TrainReport(
        epochs=[],
        best_epoch=1,
        metrics=metrics,
        n_train=3,
        n_val=3,
        truncated_items=0,
        train_seconds=1.0,
        cache_seconds=0.0,
        examples_per_second=3.0,
        prefix_cache="off",
        temperature=temperature,
    )
    assert report.uninformative is flagged
    assert report.to_dict()["uninformative"] is flagged
