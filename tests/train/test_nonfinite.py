"""Training options and numbers: bad values refused up front; NaN/inf caught in the loss and weights, never saved."""

import math
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.cli import app
from validora.errors import ConfigError, TrainingDiverged
from validora.train.trainer import Recipe, TrainConfig, Trainer

from ..conftest import engine_rows, write_jsonl

runner = CliRunner()


@pytest.mark.parametrize(
    "field", ["learning_rate", "val_fraction", "dropout", "warmup_fraction", "cache_memory_gb"]
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_config_refuses_non_finite_floats(field: str, value: float):
    with pytest.raises(ConfigError, match=f"^{field} must be a finite number, not {value}"):
        if field == "cache_memory_gb":  # the run's memory budget, not a hyperparameter
            TrainConfig("d.jsonl", cache_memory_gb=value)
        else:
            Recipe(**{field: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha": 0}, "^alpha must be positive, not 0"),
        ({"alpha": -16}, "^alpha must be positive, not -16"),
        ({"eval_batch_size": 0}, "eval_batch_size must be at least 1, not 0"),
        ({"warmup_fraction": -0.1}, "warmup_fraction must be between 0 and 1"),
        ({"warmup_fraction": 1.5}, "warmup_fraction must be between 0 and 1"),
    ],
)
def test_config_refuses_out_of_range_values(overrides: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        Recipe(**overrides)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "inf"], "--learning-rate must be a finite number, not inf"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number, not nan"),
        (["--alpha", "0"], "--alpha must be positive, not 0"),
    ],
)
def test_cli_refuses_them_with_exit_2_before_any_work(tmp_path: Path, flags: list[str], message: str):
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))
    out = tmp_path / "out"
    result = runner.invoke(app, ["alora", "train", str(data), "--outfile", str(out), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "flag", "text"),
    [
        ("learning_rate", -1.0, "--learning-rate", "-1"),
        ("batch_size", 0, "--batch-size", "0"),
        ("val_fraction", 1.0, "--val-fraction", "1"),
        ("max_length", 8, "--max-length", "8"),
        ("epochs", 0, "--epochs", "0"),
    ],
)
def test_the_library_names_the_field_and_the_cli_the_flag(tmp_path: Path, field, value, flag, text):
    """One bad value, two audiences: Python callers read `learning_rate`, the command line `--learning-rate`."""
    with pytest.raises(ConfigError) as err:
        Recipe(**{field: value})
    message = str(err.value)
    assert message.startswith(f"{field} must be ") and "--" not in message and err.value.option == field
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))
    result = runner.invoke(app, ["alora", "train", str(data), "--outfile", str(tmp_path / "out"), flag, text])
    assert result.exit_code == 2, result.output
    assert f"Error: {flag}{message.removeprefix(field)}" in " ".join(result.output.split())
    assert f"Error: {field}" not in result.output


def test_options_without_a_flag_are_named_as_fields_everywhere():
    """warmup_fraction has no flag: its error carries no option, so nothing shows it as --warmup-fraction."""
    from validora.cli.display import error_message

    with pytest.raises(ConfigError) as err:
        Recipe(warmup_fraction=2.0)
    assert err.value.option is None and error_message(err.value) == str(err.value)
    assert str(err.value) == "warmup_fraction must be between 0 and 1, not 2.0."


def test_a_nan_loss_stops_the_cli_and_keeps_the_earlier_adapter(trained_adapter: Path, tmp_path: Path):
    """A real run at learning rate 1e30: finite weights after step 1, a NaN loss at step 2."""
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))
    target = tmp_path / "adapter"
    shutil.copytree(trained_adapter, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    result = runner.invoke(
        app,
        ["alora", "train", str(data), "--outfile", str(target), "--overwrite", "--device", "cpu",
         "--epochs", "1", "--batch-size", "1", "--learning-rate", "1e30"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert re.search(
        r"Training diverged: the training loss is (nan|inf|-inf) at epoch 1, batch \d of 4\.", text
    )
    assert "Nothing was saved" in text and "Try a lower --learning-rate than 1e+30" in text
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "d.jsonl"]


def make_trainer(fresh_model, tmp_path: Path, **overrides) -> Trainer:
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(2))  # 4 training and 4 validation items
    config = TrainConfig(
        datafile=str(data), outfile=str(tmp_path / "never"), device="cpu", recipe=Recipe(**overrides)
    )
    trainer = Trainer(config, loaded=fresh_model())
    trainer.setup()
    return trainer


def test_weights_that_become_nan_stop_the_run_at_that_step(fresh_model, tmp_path: Path):
    """At 1e6 the second update itself writes NaN weights (the loss before it was finite).

    Pinned to the adapter shape this was found with (rank 32 on q, k, v), which overflows in one update.
    """
    qkv = {"rank": 32, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    trainer = make_trainer(fresh_model, tmp_path, epochs=1, batch_size=1, learning_rate=1e6, **qkv)
    with pytest.raises(
        TrainingDiverged, match=r"weights became NaN or infinite after epoch 1, batch \d of 4"
    ):
        trainer.train()
    assert not hasattr(trainer, "report") and not (tmp_path / "never").exists()


def nan_validation_loss_in(trainer: Trainer, epochs: set[int]) -> None:
    """Test hook: the real evaluation, with its loss replaced by NaN in the given epochs."""
    real = trainer.evaluate
    calls = []

    def evaluate():
        metrics, loss, loglik = real()
        calls.append(loss)
        return metrics, math.nan if len(calls) in epochs else loss, loglik

    trainer.evaluate = evaluate  # type: ignore[method-assign]


def test_an_epoch_with_nan_validation_loss_is_never_chosen(fresh_model, tmp_path: Path):
    trainer = make_trainer(fresh_model, tmp_path, epochs=2, batch_size=2)
    nan_validation_loss_in(trainer, {1})
    report = trainer.train()
    assert report.best_epoch == 2 and math.isnan(report.epochs[0].val_loss)
    trainer = make_trainer(fresh_model, tmp_path, epochs=1, batch_size=2)
    nan_validation_loss_in(trainer, {1})
    with pytest.raises(TrainingDiverged, match="no epoch had a finite validation loss"):
        trainer.train()


def test_target_modules_missing_from_the_model_are_a_config_error(fresh_model, tmp_path: Path):
    with pytest.raises(
        ConfigError, match=r"LlamaForCausalLM has no nope_proj layers \(its linear layers: down_proj"
    ):
        make_trainer(fresh_model, tmp_path, target_modules=["nope_proj"])
