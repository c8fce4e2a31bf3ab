"""Kill test: real tiny trainings stopped by SIGTERM or SIGKILL at chosen moments, saving included.

Each run replaces an earlier adapter (with user files in it) at --outfile. VALIDORA_TEST_SWAP_DELAY
makes the save pause, with a line on stderr, once the new adapter is staged and again between the
two renames of the swap, so a signal lands inside that window every time. Afterwards --outfile must
hold the complete earlier adapter or the complete new one, and the next run must say what it cleaned
and leave nothing behind. The runs are independent processes and go two at a time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from validora.adapter.schema import WRITTEN_FILES, AdapterInfo
from validora.cli import app

from .conftest import ROOT, engine_rows, read_until, write_jsonl

PAUSE = 8  # seconds the save waits at each test point (a signal there ends the wait, unless deferred)
USER_FILES = {"io.yaml": "model: null\n", "notes.txt": "mine, not validora's"}


@dataclass(frozen=True)
class Case:
    id: str
    trigger: str  # a line of the run's output after which the signal is sent
    sig: signal.Signals
    expect: str  # "earlier" | "new": what --outfile holds once the next run has cleaned up
    leftovers: tuple[str, ...] = ()  # hidden siblings the killed run leaves (".adapter.<kind>-")
    note: str = ""  # what the next run says about them


CASES = [
    Case("sigkill-loading-model", "Loading base model", signal.SIGKILL, "earlier"),
    Case("sigterm-training", "Prefix caches", signal.SIGTERM, "earlier"),
    Case("sigterm-staged", "validora-test: staged", signal.SIGTERM, "earlier"),
    Case("sigkill-staged", "validora-test: staged", signal.SIGKILL, "earlier", ("partial",), "removed"),
    Case("sigterm-between-renames", "validora-test: between renames", signal.SIGTERM, "new"),
    Case(
        "sigkill-between-renames",
        "validora-test: between renames",
        signal.SIGKILL,
        "earlier",
        ("old", "partial"),
        "restored the earlier adapter",
    ),
]


def digest(directory: Path) -> str:
    return hashlib.sha256((directory / "adapter_model.safetensors").read_bytes()).hexdigest()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> tuple[Path, str]:
    """One tiny real adapter with user files in it; each case gets a copy."""
    folder = tmp_path_factory.mktemp("earlier")
    data = write_jsonl(folder / "d.jsonl", engine_rows(2))
    out = folder / "adapter"
    args = [
        str(data),
        "--outfile",
        str(out),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--rank",
        "2",
        "--seed",
        "1",
    ]
    result = CliRunner().invoke(app, ["alora", "train", *args])
    assert result.exit_code == 0, result.output
    for name, text in USER_FILES.items():
        (out / name).write_text(text)
    return out, digest(out)


def run_and_signal(case: Case, folder: Path, data: Path) -> tuple[int, str]:
    """Start a training that replaces folder/adapter, signal it after `case.trigger`; (status, output)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["VALIDORA_TEST_SWAP_DELAY"] = str(PAUSE)
    args = [str(data), "--outfile", str(folder / "adapter"), "--overwrite", "--device", "cpu",
            "--epochs", "1", "--rank", "2", "--seed", "7"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "validora.cli", "alora", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
        text=True,
        # Only SIGTERM and SIGKILL are sent, so SIGINT's inherited disposition does not matter here
        # (test_training's SIGINT test resets it with preexec_fn, which is unsafe from these threads).
    )
    output = read_until(proc, case.trigger)
    if case.trigger in output:
        proc.send_signal(case.sig)
    else:
        proc.kill()
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, output + rest


@pytest.fixture(scope="module")
def runs(earlier, tmp_path_factory) -> dict[str, tuple[Path, int, str]]:
    """Every case's killed run, two at a time: (its folder, exit status, output)."""
    source, _ = earlier
    data = write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", engine_rows(2))

    def one(case: Case) -> tuple[Path, int, str]:
        folder = tmp_path_factory.mktemp(case.id)
        shutil.copytree(source, folder / "adapter")
        return (folder, *run_and_signal(case, folder, data))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip([c.id for c in CASES], pool.map(one, CASES), strict=True))


def assert_complete(adapter: Path) -> None:
    assert WRITTEN_FILES | set(USER_FILES) <= {p.name for p in adapter.iterdir()}
    info = AdapterInfo.read(adapter)
    assert info.adapter_type == "alora" and len(info.labels) == 4
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
    assert any("lora_A" in name for name in names)
    for name, text in USER_FILES.items():
        assert (adapter / name).read_text() == text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_killed_run_leaves_the_earlier_or_the_new_adapter(case: Case, runs, earlier):
    folder, status, output = runs[case.id]
    target = folder / "adapter"
    assert case.trigger in output, output
    assert "Traceback" not in output, output
    if case.sig == signal.SIGTERM:
        assert status == 130, output
        said = "already been written" if case.expect == "new" else "Nothing was written"
        assert said in output, output
    else:
        assert status == -signal.SIGKILL, output
    assert [name.split("-")[0] for name in hidden(folder)] == [f".adapter.{k}" for k in case.leftovers]
    if "old" not in case.leftovers:  # killed between the renames, --outfile is briefly missing
        assert_complete(target)

    # The next run restores or removes what the killed one left, says so in one line, and goes on:
    # here its data file is missing, so it stops right after the check, before any model is loaded.
    result = CliRunner().invoke(
        app, ["alora", "train", str(folder / "missing.jsonl"), "--outfile", str(target), "--overwrite"]
    )
    assert result.exit_code == 2 and "missing.jsonl" in result.output, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert said.count("was interrupted") == (1 if case.leftovers else 0), result.output
    assert case.note in said
    assert hidden(folder) == []
    assert_complete(target)
    assert (digest(target) == earlier[1]) is (case.expect == "earlier")
