"""`m alora serve`: the adapters on a real llama-server (built from the official sources by `make test`)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.adapter.schema import AdapterInfo
from validora.cli import app
from validora.errors import ConfigError, ModelError
from validora.llamacpp import serving

QUICK = ["--threads", "1", "--ctx-size", "512"]


@pytest.fixture
def keep_sigterm():
    """`m alora serve` run in-process turns SIGTERM into KeyboardInterrupt; give pytest its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def on_base(adapter: Path, dst: Path, base_model: str) -> Path:
    """A copy of `adapter` that says it was trained on `base_model`."""
    shutil.copytree(adapter, dst)
    info = json.loads((dst / "validora.json").read_text())
    (dst / "validora.json").write_text(json.dumps({**info, "base_model": base_model}))
    return dst


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_serves_the_adapter_at_scale_zero_and_a_request_runs_it(trained_adapter, llama_server):
    ids = AdapterInfo.read(trained_adapter).prompt["invocation_ids"]
    with serving.serve([trained_adapter], threads=1, ctx_size=512) as served:
        [listed] = served.server.get("/lora-adapters")
        assert listed["id"] == 0 and listed["scale"] == 0
        assert listed["alora_invocation_tokens"] == ids[1:] == served.adapters[0].invocation_tokens
        assert served.workdir in Path(listed["path"]).parents  # exported privately, not beside the adapter
        text = served.server.post("/tokenize", {"content": "Heavy knocking under load, metal in the oil."})
        prompt = text["tokens"] + ids

        def top(lora: list[dict] | None) -> list:
            body = {"prompt": prompt, "n_predict": 1, "n_probs": 5, "temperature": 0, "cache_prompt": False}
            answer = served.server.post("/completion", body | ({"lora": lora} if lora is not None else {}))
            return [
                (p["id"], round(p["logprob"], 3))
                for p in answer["completion_probabilities"][0]["top_logprobs"]
            ]

        with_adapter = top(served.request_example(served.adapters[0])["lora"])
        base = top([{"id": 0, "scale": 0}])
        assert top(None) == base  # no "lora" field: the base model alone, not every adapter at scale 1
        assert with_adapter != base
    assert served.server.process.poll() is not None and not served.workdir.exists()


def test_adapters_of_different_base_models_are_refused_before_anything_starts(
    trained_adapter, tmp_path, monkeypatch, keep_sigterm
):
    def never(*args, **kwargs):
        raise AssertionError("nothing may be built, exported or started")

    for name in ("ensure_server", "export_gguf", "start_server"):
        monkeypatch.setattr(serving, name, never)
    other = on_base(trained_adapter, tmp_path / "other", "HuggingFaceTB/SmolLM2-360M-Instruct")
    result = CliRunner().invoke(app, ["alora", "serve", str(trained_adapter), str(other), *QUICK])
    assert result.exit_code == 2, result.output
    assert "different" in result.output and "SmolLM2-360M-Instruct" in result.output

    model_dir = tmp_path / "hf-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    not_gguf = on_base(trained_adapter, tmp_path / "not-gguf", str(model_dir))
    with pytest.raises(ModelError, match=r"convert_hf_to_gguf\.py"):
        serving.serve([not_gguf])
    with pytest.raises(ConfigError, match="at least one"):
        serving.serve([])


def test_a_port_in_use_is_refused_with_its_number(trained_adapter, monkeypatch, keep_sigterm):
    monkeypatch.setattr(serving, "start_server", lambda *a, **k: pytest.fail("started on a busy port"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            app, ["alora", "serve", str(trained_adapter), "--port", str(port), *QUICK]
        )
    assert result.exit_code == 2, result.output
    assert f"--port {port}" in result.output and "in use" in result.output
    for flag, value in (("--port", "70000"), ("--parallel", "0")):
        result = CliRunner().invoke(app, ["alora", "serve", str(trained_adapter), flag, value, *QUICK])
        assert result.exit_code == 2 and flag in result.output and value in result.output, result.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_llama_server_and_exits_130(trained_adapter, llama_server, sig):
    cmd = [sys.executable, "-m", "validora.cli", "alora", "serve", str(trained_adapter), *QUICK]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("Serving at http://127.0.0.1:"), "".join(errors)
        deadline = time.monotonic() + 30  # stderr is read by another thread: it may lag stdout's line
        while not any("(pid " in line for line in errors) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(next(line for line in errors if "(pid " in line).split("(pid ")[1].split(")")[0])
        assert alive(pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"llama-server {pid} outlived `m alora serve`"
    assert "llama-server stopped" in "".join(errors)


def test_a_host_beyond_loopback_is_warned_about_before_anything_starts(
    trained_adapter, monkeypatch, keep_sigterm
):
    assert serving.exposure_warning("127.0.0.1", 8080, None) is None
    assert serving.exposure_warning("::1", None, None) is None and serving.is_loopback("localhost")
    assert "without authentication" in serving.exposure_warning("0.0.0.0", 8080, None)
    assert "unencrypted" in serving.exposure_warning("192.168.1.5", 8080, "k")

    def stop_here(**kwargs):
        raise ConfigError("stopped before the build, as the test wants")

    monkeypatch.setattr(serving, "ensure_server", stop_here)
    result = CliRunner().invoke(app, ["alora", "serve", str(trained_adapter), "--host", "0.0.0.0", *QUICK])
    said = " ".join(result.stderr.split())  # the console wraps lines
    assert "listens on 0.0.0.0" in said and "without authentication" in said, result.output
    assert "stopped before the build" in said
    key = "s3cret-key-never-shown"
    result = CliRunner().invoke(
        app,
        ["alora", "serve", str(trained_adapter), "--host", "0.0.0.0", *QUICK],
        env={"VALIDORA_API_KEY": key},
    )
    assert "unencrypted" in " ".join(result.stderr.split()) and key not in result.output


def test_an_api_key_is_required_by_the_server_and_sent_by_validoras_clients(
    llama_server, monkeypatch, tmp_path
):
    from validora.backends.llamacpp import LlamaCppBackend
    from validora.core.models import embedded_gguf_path
    from validora.errors import LlamaCppError
    from validora.llamacpp.client import request_json
    from validora.llamacpp.server import start_server

    key = "s3cret-key-never-shown"
    monkeypatch.delenv("VALIDORA_API_KEY", raising=False)
    with start_server(llama_server, embedded_gguf_path(), ctx_size=256, threads=1, api_key=key) as server:
        assert key not in " ".join(server.args) and key not in repr(server)  # not in `ps`, not in a repr
        with pytest.raises(LlamaCppError, match=r"HTTP 401.*api_key="):
            request_json(server.url, "/props", timeout=10)
        assert isinstance(server.get("/props"), dict)  # the Server sends its key
        with pytest.raises(LlamaCppError, match="HTTP 401"):
            LlamaCppBackend(server.url)
        assert LlamaCppBackend(server.url, api_key=key).model_id
        monkeypatch.setenv("VALIDORA_API_KEY", key)
        assert LlamaCppBackend(server.url).model_id  # read from the environment
        log = server.log
        assert log.exists()
    assert not log.exists()  # removed with the server


def test_a_server_that_fails_to_start_keeps_its_log_and_names_it(tmp_path):
    from validora.errors import LlamaCppError
    from validora.llamacpp.server import start_server

    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'error: this build cannot load the model' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LlamaCppError, match="whole log is kept in") as exc:
        start_server(fake, tmp_path / "model.gguf", wait=30)
    log = Path(str(exc.value).split("kept in ")[1].split(":\n")[0])
    assert log.exists() and "cannot load the model" in log.read_text()
    log.unlink()
