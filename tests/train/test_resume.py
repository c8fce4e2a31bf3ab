"""Resumable runs: a training killed after epoch 1 of 3 and resumed with --resume ends with the adapter
an uninterrupted run writes (same weights, same predictions), dropout included (its RNG is restored).

VALIDORA_TEST_STATE_PAUSE makes the run wait, with a line on stderr, once the state of an epoch is
written, so the SIGTERM lands after epoch 1's state every time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from validora.cli import app
from validora.train.resume import PAUSE_ENV, state_path

from ..conftest import EXAMPLES, LABELS, ROOT, engine_rows, read_until, write_jsonl

ARGS = ["--epochs", "3", "--rank", "2", "--max-length", "48", "--seed", "4", "--batch-size", "4", "--device", "cpu"]  # fmt: skip


def train(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["alora", "train", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(data file, folder) where folder/adapter's run was killed by SIGTERM once epoch 1's state was kept."""
    folder = tmp_path_factory.mktemp("interrupted")
    data = write_jsonl(folder / "d.jsonl", engine_rows(3))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # as many threads as the in-process runs below: CPU kernels sum in another order with another count
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        PAUSE_ENV: "60",
    }
    command = [sys.executable, "-m", "validora.cli", "alora", "train", str(data), "--outfile", str(folder / "adapter"), *ARGS]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = read_until(proc, "validora-test: state kept after epoch 1")
    assert "state kept after epoch 1" in output, output
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output + rest
    return data, folder


def test_a_killed_run_leaves_its_state_beside_the_target_as_safetensors(interrupted):
    _, folder = interrupted
    assert sorted(p.name for p in folder.iterdir()) == [".adapter.train-state.safetensors", "d.jsonl"]
    with safe_open(str(state_path(folder / "adapter")), framework="pt") as f:
        meta = json.loads(f.metadata()["validora.train_state"])
        names = set(f.keys())
    assert [r["epoch"] for r in meta["records"]] == [1] and meta["best"]["epoch"] == 1
    assert {"best_loglik", "rng.0.torch"} <= names and any(n.startswith("optim.") for n in names)


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_uninterrupted_runs_adapter(interrupted, tmp_path, fresh_model):
    from validora.backends.validator import load_validator

    data, folder = interrupted
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    shutil.copy(state_path(folder / "adapter"), state_path(resumed))
    started = time.perf_counter()
    code, output = train(str(data), "--outfile", str(resumed), "--resume", *ARGS)
    assert code == 0, output
    assert "Resuming after epoch 1 of 3" in output
    assert not state_path(resumed).exists()  # a finished run removes its state
    state_path(whole).mkdir()  # where its state goes, a directory: it cannot be kept, the run goes on
    code, output = train(str(data), "--outfile", str(whole), "--resume", *ARGS)  # nothing to resume
    assert code == 0, output
    said = " ".join(output.split())  # the console wraps long lines
    assert "No saved training state" in said and said.count("Could not keep the training state") == 1
    print(f"resumed (2 epochs) and whole (3 epochs): {time.perf_counter() - started:.1f} s")

    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, resumed)]
    assert len(metrics[1]["epochs"]) == 3
    for a, b in zip(metrics[0]["epochs"], metrics[1]["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)
    assert metrics[1]["best_epoch"] == metrics[0]["best_epoch"]
    assert metrics[1]["temperature"] == pytest.approx(metrics[0]["temperature"], rel=1e-6)
    weights = [load_file(d / "adapter_model.safetensors") for d in (whole, resumed)]
    for name, w in weights[0].items():
        assert float((weights[1][name] - w).abs().max()) <= 1e-6, name
    rows = [json.loads(line) for line in (EXAMPLES / "engine_failures.jsonl").read_text().splitlines()]
    texts = [r["item"] for label in LABELS for r in [r for r in rows if r["label"] == label][3:5]]
    got = [load_validator(d, loaded=fresh_model()).predict(texts) for d in (whole, resumed)]
    assert [s.label for s in got[1]] == [s.label for s in got[0]]
    for a, b in zip(got[0], got[1], strict=True):
        assert b.probs == pytest.approx(a.probs, abs=1e-6)


def test_another_runs_state_is_refused(interrupted, tmp_path):
    data, folder = interrupted
    out = tmp_path / "adapter"
    shutil.copy(state_path(folder / "adapter"), state_path(out))
    code, output = train(str(data), "--outfile", str(out), "--resume", *ARGS, "--learning-rate", "0.01")
    assert code == 2, output
    assert "belongs to a different run" in output and "learning_rate was 0.002, not 0.01" in output
    other = write_jsonl(tmp_path / "other.jsonl", engine_rows(4))
    code, output = train(str(other), "--outfile", str(out), "--resume", *ARGS)
    assert code == 2 and "data file's contents differ" in output, output
    assert state_path(out).exists() and not out.exists()  # refused before anything was touched


def test_a_different_cache_budget_resumes(interrupted, tmp_path):
    """The cache budget decides only whether prefix caches are kept or recomputed: not part of the run."""
    data, folder = interrupted
    out = tmp_path / "adapter"
    shutil.copy(state_path(folder / "adapter"), state_path(out))
    code, output = train(str(data), "--outfile", str(out), "--resume", *ARGS, "--cache-memory-gb", "0")
    said = " ".join(output.split())  # the console wraps long lines
    assert code == 0, output
    assert (
        "Resuming after epoch 1 of 3" in said and "over --cache-memory-gb 0.0, recomputed per batch" in said
    )
    assert "cache_memory_gb=0.0" in said  # set on the command line
    assert not state_path(out).exists() and (out / "validora.json").is_file()


def _small_state(path: Path) -> dict:
    """A state as save_state writes it, for a two-tensor model (no training needed)."""
    from validora.train.resume import RunState, rng_state, save_state

    fp = {"options": {}, "files": {}, "processes": 1}
    model = {"lora_A.weight": torch.ones(2, 2), "lora_B.weight": torch.zeros(2, 2)}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1}]}
    save_state(
        path, RunState(), fingerprint=fp, model=model, optimizer=optimizer, scheduler={}, rngs=[rng_state()]
    )
    return fp


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_a_truncated_state_is_a_resume_error_not_a_traceback(tmp_path, cut):
    from validora.errors import ResumeError
    from validora.train.resume import load_state

    path = tmp_path / ".a.train-state.safetensors"
    fp = _small_state(path)
    assert load_state(path, fp).model["lora_A.weight"].sum() == 4
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ResumeError, match=r"unreadable.*delete it"):
        load_state(path, fp)


def test_a_state_with_deeply_nested_or_broken_metadata_is_a_resume_error(tmp_path):
    from safetensors.torch import save_file

    from validora.errors import ResumeError
    from validora.train.resume import load_state

    path = tmp_path / "s.safetensors"
    for meta in ["[" * 5000 + "]" * 5000, '{"format": 1, "fingerprint": {}}', '"\\ud800"']:
        save_file({"x": torch.zeros(1)}, path, metadata={"validora.train_state": meta})
        with pytest.raises(ResumeError) as exc:
            load_state(path, {})
        assert str(path) in str(exc.value)
