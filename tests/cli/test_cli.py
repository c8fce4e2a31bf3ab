"""The CLI around a trained adapter: predict, eval, help, errors."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.cli import app

from ..conftest import EXAMPLES, write_jsonl

runner = CliRunner()


def test_predict_prints_label_and_all_probabilities_as_jsonl(trained_adapter: Path):
    result = runner.invoke(
        app,
        [
            "alora",
            "predict",
            str(trained_adapter),
            "rod knock at 3100 rpm",
            "new air filter, runs fine",
            "--jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["item"] for r in rows] == ["rod knock at 3100 rpm", "new air filter, runs fine"]
    for r in rows:
        assert set(r["probs"]) == {"piston_rings", "connecting_rod", "mini_carburetor", "no_failure"}
        assert abs(sum(r["probs"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probs"], key=r["probs"].get)


def test_predict_reads_files_and_explains_missing_input(trained_adapter: Path, tmp_path: Path):
    texts = tmp_path / "notes.txt"
    texts.write_text("blue smoke\n\nidle surges\n")
    result = runner.invoke(app, ["alora", "predict", str(trained_adapter), "--file", str(texts)])
    assert result.exit_code == 0, result.output
    assert "blue" in result.stdout and "surges" in result.stdout and result.stdout.count(" no_failure") >= 2
    result = runner.invoke(app, ["alora", "predict", str(trained_adapter)])
    assert result.exit_code == 2 and "Nothing to classify" in result.output
    result = runner.invoke(app, ["alora", "predict", str(tmp_path), "x"])
    assert result.exit_code == 1 and "not a validora adapter" in result.output


def test_eval_reports_metrics_json_and_plot(trained_adapter: Path, tmp_path: Path):
    data = EXAMPLES / "engine_failures_test.jsonl"
    plot = tmp_path / "cm.png"
    result = runner.invoke(
        app, ["alora", "eval", str(trained_adapter), str(data), "--json", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 48 and 0 <= metrics["accuracy"] <= 1
    assert sum(map(sum, metrics["confusion"])) == 48
    assert set(metrics["per_label"]) == {"piston_rings", "connecting_rod", "mini_carburetor", "no_failure"}
    assert plot.read_bytes().startswith(b"\x89PNG")
    again = runner.invoke(app, ["alora", "eval", str(trained_adapter), str(data), "--plot", str(plot)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_eval_rejects_labels_the_adapter_does_not_know(trained_adapter: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"item": "x", "label": "gearbox"}])
    result = runner.invoke(app, ["alora", "eval", str(trained_adapter), str(data)])
    assert result.exit_code == 2 and "gearbox" in result.output


def test_help_lists_every_reference_flag():
    result = runner.invoke(app, ["alora", "train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--basemodel", "--outfile", "--adapter", "--device", "--epochs", "--learning-rate", "--batch-size",
                 "--max-length", "--grad-accum", "--promptfile", "--seed", "--val-fraction", "--rank", "--early-stop"):  # fmt: skip
        assert flag in result.stdout, flag


def test_bad_flag_values_are_clear_errors(small_data: Path, tmp_path: Path):
    result = runner.invoke(
        app, ["alora", "train", str(small_data), "--adapter", "qlora", "--outfile", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--adapter must be one of alora, lora" in result.output
    result = runner.invoke(
        app, ["alora", "train", str(small_data), "--val-fraction", "1.5", "--outfile", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--val-fraction" in result.output
    assert not (tmp_path / "o").exists()


def test_predict_file_uses_each_lines_requirement(trained_adapter: Path, tmp_path: Path):
    """An adapter trained with requirement texts gets each line's in its prompt (this copy is marked so:
    the plumbing is what is tested); the classifier itself scores the text alone, with a warning."""
    runner = CliRunner()
    classifier = trained_adapter
    trained_adapter = shutil.copytree(classifier, tmp_path / "with-requirements")
    info = json.loads((trained_adapter / "validora.json").read_text())
    (trained_adapter / "validora.json").write_text(json.dumps({**info, "requirements": True}))
    lines = tmp_path / "notes.jsonl"
    note = "Knock at 3100 RPM."
    lines.write_text(
        json.dumps({"item": note, "requirement": "Must be 'connecting_rod'."})
        + "\n"
        + json.dumps({"item": note})
        + "\n"
    )
    got = runner.invoke(app, ["alora", "predict", str(trained_adapter), "--file", str(lines), "--jsonl"])
    assert got.exit_code == 0, got.output
    with_req, plain = [json.loads(line)["probs"] for line in got.stdout.splitlines()]
    direct = runner.invoke(
        app,
        [
            "alora",
            "predict",
            str(trained_adapter),
            note,
            "--requirement",
            "Must be 'connecting_rod'.",
            "--jsonl",
        ],
    )
    assert json.loads(direct.stdout)["probs"] == pytest.approx(with_req, abs=1e-5)
    assert with_req != pytest.approx(plain, abs=1e-5)  # the requirement line really changed the prompt
    alone = runner.invoke(app, ["alora", "predict", str(classifier), "--file", str(lines), "--jsonl"])
    assert alone.exit_code == 0, alone.output
    first, second = [json.loads(line)["probs"] for line in alone.stdout.splitlines()]
    assert first == pytest.approx(second, abs=1e-6)  # the requirement did not reach the prompt
    assert "trained without requirement texts" in alone.output


def test_error_messages_show_the_option_they_are_about_as_its_flag():
    from validora.cli.display import error_message
    from validora.errors import ConfigError, ModelError

    assert error_message(ConfigError("learning_rate must be positive, not -1.", option="learning_rate")) == (
        "--learning-rate must be positive, not -1."
    )
    assert error_message(ModelError("X needs its own code (it runs only with trust_remote_code=True).",
                                    option="trust_remote_code")) == (
        "X needs its own code (it runs only with --trust-remote-code)."
    )  # fmt: skip
    assert error_message(ModelError("No base model named; pass basemodel=DIR.", option="basemodel")) == (
        "No base model named; pass --basemodel DIR."
    )
    assert (
        error_message(ConfigError('pass fmt="jsonl" or overwrite=True.'))
        == "pass --format jsonl or --overwrite."
    )
    # the option the error is about, standing alone, but never inside a longer name or a path
    assert error_message(ConfigError("its cache_memory_gb was 4; eval_cache_memory_gb and /a/cache_memory_gb stay.",
                                     option="cache_memory_gb")) == (
        "its --cache-memory-gb was 4; eval_cache_memory_gb and /a/cache_memory_gb stay."
    )  # fmt: skip
    assert (
        error_message(ConfigError("/tmp/run=3/x.jsonl and a==b stay")) == "/tmp/run=3/x.jsonl and a==b stay"
    )


def test_only_real_options_set_in_a_message_become_flags():
    from validora.cli.display import error_message
    from validora.errors import ConfigError

    assert error_message(ConfigError("my run=2/out exists; pass overwrite=True.")) == (
        "my run=2/out exists; pass --overwrite."
    )


def test_version_prints_the_version():
    from validora import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == __version__


@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_sigterm_in_the_first_seconds_of_train_is_a_clean_interruption(tmp_path: Path, delay: float):
    """`m` takes SIGTERM over before importing the app (and torch): a `kill` while it starts exits 130
    with a message and writes nothing (it was a bare 143)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "adapter"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", "from validora.cli import main; main()", "alora", "train",
               str(EXAMPLES / "engine_failures.jsonl"), "--outfile", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
