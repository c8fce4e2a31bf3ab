"""Two training processes (accelerate launch, gloo on CPU) equal one process with the same global batch,
across a stop and --resume.

The 2-process run has --batch-size 2, the 1-process run --batch-size 4: the same global batches (one
seeded order per epoch), each item's loss computed by the process that owns it, gradients summed. With
--dropout 0 the runs differ only in float summation order: per-epoch losses, adapter weights and test
predictions agree. Also: SIGTERM to one worker leaves the earlier adapter and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from validora.cli import app
from validora.train.resume import PAUSE_ENV, state_path

from ..conftest import EXAMPLES, LABELS, ROOT, engine_rows, read_until, write_jsonl

ARGS = ["--epochs", "2", "--rank", "2", "--max-length", "48", "--dropout", "0", "--seed", "5",
        "--learning-rate", "5e-3", "--device", "cpu"]  # fmt: skip
ACCELERATE = Path(sys.executable).parent / "accelerate"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    processes: int, args: list[str], pause: bool = False, torchrun: bool = False, **popen: object
) -> subprocess.Popen:
    """`accelerate launch --multi_gpu` starts torchrun's workers; on a CPU-only machine they use gloo.
    `torchrun`: the README's other command, torchrun itself. `pause`: rank 0 waits a minute, with a line
    on stderr, each time it has kept an epoch's state."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env |= {PAUSE_ENV: "60"} if pause else {}
    if torchrun:
        command = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(processes)]
    else:
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port())]  # fmt: skip
    command += ["-m", "validora.cli", "alora", "train", *args]
    return subprocess.Popen(command, env=env, cwd=ROOT, text=True, **popen)  # type: ignore[call-overload]


def test_held_out_rows() -> None:
    """The test split below: engine notes the training file does not hold."""
    rows = [json.loads(line) for line in (EXAMPLES / "engine_failures.jsonl").read_text().splitlines()]
    assert not {r["item"] for r in held_out(rows)} & {r["item"] for r in engine_rows(3)}


def held_out(rows: list[dict]) -> list[dict]:
    return [r for label in LABELS for r in [r for r in rows if r["label"] == label][3:5]]


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, fresh_model):
    """The 2-process run is also stopped (SIGTERM to the launcher) once epoch 1's state is kept, and
    resumed with --resume: rank 0 wrote the state, both processes load it."""
    from validora.backends.validator import load_validator

    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(3))
    one, two = tmp_path / "one", tmp_path / "two"
    started = time.perf_counter()
    args = [str(data), "--outfile", str(two), "--batch-size", "2", *ARGS]
    proc = launch(2, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pause=True)
    output = read_until(proc, "validora-test: state kept after epoch 1", seconds=600)
    proc.send_signal(signal.SIGTERM)
    output += proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and state_path(two).is_file() and not two.exists(), output
    proc = launch(2, [*args, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert output.count("Resuming after epoch 1 of 2") == 1 and output.count("epoch 2:") == 1  # rank 0 speaks
    assert output.count("Adapter written to") == 1 and not state_path(two).exists()
    result = CliRunner().invoke(app, ["alora", "train", str(data), "--outfile", str(one), "--batch-size", "4", *ARGS])  # fmt: skip
    assert result.exit_code == 0, result.output
    print(f"2 processes and 1 process: {time.perf_counter() - started:.1f} s")

    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    for a, b in zip(metrics[0]["epochs"], metrics[1]["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["val_accuracy"] == a["val_accuracy"]
    assert metrics[0]["epochs"][0]["train_loss"] != metrics[0]["epochs"][1]["train_loss"]  # it learned
    assert metrics[1]["best_epoch"] == metrics[0]["best_epoch"]
    assert metrics[1]["temperature"] == pytest.approx(metrics[0]["temperature"], rel=1e-3)
    weights = [load_file(d / "adapter_model.safetensors") for d in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    # Adam divides each gradient by its own running scale, so an element whose gradient is nearly zero
    # (float noise only: the processes pad their batches differently and sum in another order) moves by
    # a noisy fraction of a step. Such elements are rare: each tensor agrees to 2e-3 in norm, fewer than
    # 1 in 1000 elements differ by over 1e-5, and none by a whole step (the learning rate, 5e-3).
    moved = total = 0
    for name, w in weights[0].items():
        gap = (weights[1][name] - w).abs()
        assert float(gap.norm()) <= 2e-3 * float(w.norm()) and float(gap.max()) < 5e-3, name
        moved, total = moved + int((gap > 1e-5).sum()), total + gap.numel()
    assert moved <= total / 1000, (moved, total)
    assert any(w.abs().max() > 0 for name, w in weights[0].items() if "lora_B" in name)  # trained

    rows = [json.loads(line) for line in (EXAMPLES / "engine_failures.jsonl").read_text().splitlines()]
    texts = [r["item"] for r in held_out(rows)]
    got = [load_validator(d, loaded=fresh_model()).predict(texts) for d in (one, two)]
    assert [s.label for s in got[1]] == [s.label for s in got[0]]
    for a, b in zip(got[0], got[1], strict=True):
        assert b.probs == pytest.approx(a.probs, abs=1e-4)


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the training processes under the launcher."""
    import psutil

    found = {}
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
            if rank is not None and "validora.cli" in " ".join(child.cmdline()):
                found[int(rank)] = child.pid
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_sigterm_to_one_worker_keeps_the_earlier_adapter(tmp_path, trained_adapter):
    """Launched with torchrun (the README's second command): one worker killed ends the whole run."""
    import shutil

    folder = tmp_path / "run"
    folder.mkdir()
    out = folder / "adapter"
    shutil.copytree(trained_adapter, out)
    before = (out / "adapter_model.safetensors").read_bytes()
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(3))
    args = [str(data), "--outfile", str(out), "--overwrite", "--batch-size", "2", *ARGS[2:], "--epochs", "40"]
    proc = launch(2, args, torchrun=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = read_until(proc, "epoch 1:")
    assert "epoch 1:" in output, output
    pids = worker_pids(proc.pid)
    assert sorted(pids) == [0, 1], output
    os.kill(pids[1], signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output + rest
    assert "Adapter written" not in rest
    assert (out / "adapter_model.safetensors").read_bytes() == before
    left = {p.name for p in folder.iterdir()} - {state_path(out).name}  # epoch 1's, if kept: resumable
    assert left == {"adapter"}  # no staging or probe left behind


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="needs two CUDA GPUs (NCCL, bfloat16); the CPU twin is test_two_processes_equal_one_with_the_same_global_batch",
)
def test_two_gpus_equal_one_in_bfloat16(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", engine_rows(8))
    args = [*ARGS[:-2], "--device", "cuda"]
    runs = {}
    for processes, batch in ((2, "4"), (1, "8")):
        out = tmp_path / f"p{processes}"
        started = time.perf_counter()
        proc = launch(processes, [str(data), "--outfile", str(out), "--batch-size", batch, *args],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
        print(f"{processes} process(es): {time.perf_counter() - started:.1f} s")
        runs[processes] = json.loads((out / "metrics.json").read_text())
    for a, b in zip(runs[1]["epochs"], runs[2]["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-2)  # bfloat16 forward passes
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=2e-2)
