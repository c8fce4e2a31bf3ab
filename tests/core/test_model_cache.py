"""The GGUF conversion cache: leftovers of killed conversions are swept; concurrent first runs convert once."""

import fcntl
import subprocess
import sys
import textwrap
from pathlib import Path
from subprocess import PIPE

import pytest

from validora.core import models

from ..conftest import ROOT


def stale(root: Path, name: str) -> Path:
    """A half-written temporary directory, as a killed conversion leaves it."""
    tmp = root / f".{name}.k1ll3d_"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"\0" * 1024)
    return tmp


def test_leftovers_of_killed_conversions_are_swept_on_the_next_load(tmp_path: Path, monkeypatch):
    spec = models.resolve_base_model(None)
    converted = Path(models.local_files(spec))  # the real conversion, in the default cache
    monkeypatch.setenv("VALIDORA_CACHE", str(tmp_path))
    root = tmp_path / "gguf"
    root.mkdir()
    (root / converted.name).symlink_to(converted)  # already converted here too, without copying 540 MB
    mine = stale(root, converted.name)
    older = stale(root, "SmolLM2-135M-Instruct.Q4_1-0123456789abcdef")  # an earlier version of the file
    running = stale(root, "other-fedcba9876543210")
    with open(root / "other-fedcba9876543210.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # that conversion is still running: its directory stays
        assert models.local_files(spec) == str(root / converted.name)
    assert not mine.exists() and not older.exists() and running.exists()
    assert (converted / "config.json").is_file()


CONVERT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from validora.core import models

    shared = Path(sys.argv[1])
    real = models._convert_gguf

    def counted(gguf, target):
        with open(shared / "conversions", "a") as f:
            f.write(f"{os.getpid()}\\n")
        # Convert only once both processes have asked for the model: the other one is then
        # certainly asking while this conversion runs.
        deadline = time.time() + 60
        while len(list(shared.glob("asked-*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        real(gguf, target)

    models._convert_gguf = counted
    (shared / f"asked-{os.getpid()}").touch()
    print(models.local_files(models.resolve_base_model(None)))
    """
)


@pytest.mark.slow
def test_two_processes_loading_at_once_convert_once(tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VALIDORA_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = models._gguf_target(models.embedded_gguf_path())
    leftover = stale(target.parent, target.name)  # and a killed earlier attempt
    command = [sys.executable, "-c", CONVERT, str(tmp_path)]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=PIPE, stderr=PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(target)
    assert len((tmp_path / "conversions").read_text().split()) == 1  # the other waited, then reused it
    assert len(list(tmp_path.glob("asked-*"))) == 2
    assert not leftover.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, f"{target.name}.lock"]
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
