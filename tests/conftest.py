"""Shared fixtures: the real embedded model (loaded once), small datasets, one trained adapter."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LABELS = ["piston_rings", "connecting_rod", "mini_carburetor", "no_failure"]


def read_until(proc: Any, text: str, seconds: float = 240) -> str:
    """A child's output up to the first line holding `text` (all of it if it ends or `seconds` pass
    first): tests signal the child at that moment."""
    assert proc.stdout is not None
    output, deadline = "", time.time() + seconds
    while time.time() < deadline:
        line = proc.stdout.readline()
        output += line
        if text in line or not line:
            break
    return output


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError instead of hanging (main thread only: SIGALRM)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def engine_rows(n_per_label: int) -> list[dict]:
    rows = [json.loads(line) for line in (EXAMPLES / "engine_failures.jsonl").read_text().splitlines()]
    out: list[dict] = []
    for label in LABELS:
        out += [r for r in rows if r["label"] == label][:n_per_label]
    return out


@pytest.fixture(scope="session")
def loaded():
    """The embedded SmolLM2 model, loaded once per test session (tests must not leave adapters on it)."""
    from validora.core.models import load_base_model

    return load_base_model(None, device="cpu")


@pytest.fixture(scope="session")
def fresh_model():
    """A factory of independent copies of the embedded model, for tests that attach adapters."""
    from validora.core.models import load_base_model

    def make():
        return load_base_model(None, device="cpu")

    return make


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "small.jsonl", engine_rows(8))


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, small_data) -> Path:
    """A real aLoRA adapter trained through the CLI for 2 epochs on 32 examples."""
    from typer.testing import CliRunner

    from validora.cli import app

    out = tmp_path_factory.mktemp("adapters") / "engine"
    result = CliRunner().invoke(
        app,
        [
            "alora",
            "train",
            str(small_data),
            "--outfile",
            str(out),
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running fake Hub; huggingface_hub points at it with HF_TOKEN set and HF_HOME in tmp_path."""
    from .fake_hub import fake_hub_env

    with fake_hub_env(monkeypatch, tmp_path / "hf_home") as fake:
        yield fake


@pytest.fixture(scope="session")
def llama_server():
    """The real llama-server: found, or built once (`make test` builds it first, so this is quick)."""
    from validora.llamacpp import build

    return build.ensure_server(jobs=int(os.environ.get("VALIDORA_BUILD_JOBS", "1")))
