"""A running llama-server process, and what validora and the server agree on: the name an exported adapter
carries, the invocation it is served with, and the parallel-slot bug that aLoRA checks must avoid.

Imports no torch (the HTTP backend uses it): the model helpers load inside the probe that needs them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from validora.adapter.layouts import adapter_digest
from validora.errors import LlamaCppError
from validora.llamacpp.client import request_json

if TYPE_CHECKING:
    from validora.adapter.schema import AdapterInfo

# Measured with benchmarks/serve_throughput.py on fresh outputs: with -np 4 and 4 concurrent clients
# 75-85% of labels agreed with in-process scoring, with one slot 100%. Reading the server code: when it
# batches several slots' requests into one decode, the part of a prompt before an aLoRA invocation (which
# must run without the adapter) runs under the first batched slot's adapter scales.
PARALLEL_ALORA_BUG = (
    "llama-server (llama.cpp@0c1e57098) computes the text before an aLoRA invocation with the wrong "
    "adapter scales when it batches several slots' requests together: with 4 slots and 4 concurrent "
    "clients only 75-85% of labels agreed with validora's own scores (100% with one slot)"
)


def served_name(directory: str | Path) -> str:
    """What a server export carries as its task name (llama-server lists it): the adapter's content
    digest, so a client finds the very adapter it holds, whatever the file was called."""
    return f"validora:{adapter_digest(directory)[:16]}"


def served_invocation(info: AdapterInfo) -> list[int] | None:
    """The invocation tokens an aLoRA adapter is served with (None for a LoRA): the trained ones without
    the first, because llama-server (at llama.cpp@0c1e57098) turns an aLoRA on one token *before* the
    tokens it matches and PEFT (training) at the first of them; so shifted, the server starts it where
    training did."""
    return list(info.prompt["invocation_ids"])[1:] if info.is_alora else None


@dataclass
class Server:
    """A running llama-server; `stop()` (or leaving the `with` block) ends it and removes its log."""

    process: subprocess.Popen
    url: str
    log: Path
    args: list[str] = field(default_factory=list)
    api_key: str | None = field(default=None, repr=False)  # never shown

    def get(self, path: str, timeout: float = 10.0) -> object:
        return request_json(self.url, path, timeout=timeout, api_key=self.api_key)

    def post(self, path: str, body: object, timeout: float = 120.0) -> object:
        return request_json(self.url, path, body, timeout=timeout, api_key=self.api_key)

    def stop(self, *, keep_log: bool = False) -> None:
        """End the process; its log file goes too unless `keep_log` (a failed start: the diagnosis)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_log:
            with contextlib.suppress(OSError):
                self.log.unlink(missing_ok=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    binary: str | Path,
    model: str | Path,
    loras: list[str | Path] | tuple[()] = (),
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    parallel: int = 1,
    ctx_size: int = 4096,
    threads: int | None = None,
    extra: list[str] | tuple[()] = (),
    wait: float = 120.0,
    api_key: str | None = None,
) -> Server:
    """Start llama-server on `model` with `loras` loaded at scale 0 (a request enables one by id) and
    wait until it answers /health. Its output goes to a temporary log file, removed when the server
    stops; a start that fails keeps it and names it in the error. `api_key`: requests must carry it
    (given to the server in its environment, so it shows in no process list)."""
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
    args = [str(binary), "-m", str(model), "--host", host, "--port", str(port),
            "-np", str(parallel), "-c", str(ctx_size), "--no-webui"]  # fmt: skip
    for lora in loras:
        args += ["--lora", str(lora)]
    if loras:
        args.append("--lora-init-without-apply")
    if threads:
        args += ["-t", str(threads)]
    args += list(extra)
    env = {**os.environ, "LLAMA_API_KEY": api_key} if api_key else None
    with log.open("wb") as sink:
        process = subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    reach = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    server = Server(process, f"http://{reach}:{port}", log, args, api_key)
    try:  # an interruption while waiting (Ctrl-C, SIGTERM as KeyboardInterrupt) must not orphan it
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LlamaCppError(
                    f"llama-server exited ({process.returncode}); its whole log is kept in {log}:\n{tail(log)}"
                )
            with contextlib.suppress(LlamaCppError):  # not listening yet, or still loading (HTTP 503)
                if server.get("/health", timeout=2.0):
                    return server
            time.sleep(0.25)
        raise LlamaCppError(
            f"llama-server did not answer within {wait:.0f} s; its whole log is kept in {log}:\n{tail(log)}"
        )
    except LlamaCppError:
        server.stop(keep_log=True)
        raise
    except BaseException:  # an interruption: nothing to diagnose
        server.stop()
        raise


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a server's log: what an error about its exit shows."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


PROBE_TOKENS = [1, 2, 3]


def write_probe_adapter(base_gguf: str | Path, out: str | Path) -> Path:
    """A do-nothing aLoRA adapter (one rank-1 zero pair on block 0's q) for `base_gguf`, with invocation
    tokens PROBE_TOKENS: a server that lists them on /lora-adapters serves aLoRA."""
    import numpy as np
    from gguf import GGUFReader, GGUFType, GGUFValueType, GGUFWriter, Keys

    reader = GGUFReader(base_gguf)
    q = next((t for t in reader.tensors if t.name == "blk.0.attn_q.weight"), None)
    if q is None:
        raise LlamaCppError(f"{base_gguf} has no blk.0.attn_q.weight; it is not a base model to probe with.")
    n_in, n_out = int(q.shape[0]), int(q.shape[1])
    writer = GGUFWriter(out, reader.fields["general.architecture"].contents())
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, 1.0)
    writer.add_key_value(
        Keys.Adapter.ALORA_INVOCATION_TOKENS, PROBE_TOKENS, GGUFValueType.ARRAY, GGUFValueType.UINT32
    )
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((1, n_in), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((n_out, 1), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def supports_alora(binary: str | Path, base_gguf: str | Path | None = None) -> bool:
    """Start `binary` with a probe aLoRA adapter on a small base GGUF (the embedded model) and read
    /lora-adapters: only a server that knows aLoRA reports the adapter's invocation tokens."""
    from validora.core.models import embedded_gguf_path

    base = Path(base_gguf) if base_gguf else embedded_gguf_path()
    with tempfile.TemporaryDirectory(prefix="validora-probe-") as tmp:
        probe = write_probe_adapter(base, Path(tmp) / "probe.gguf")
        try:
            with start_server(binary, base, [probe], ctx_size=256, threads=1, wait=60) as server:
                listed = server.get("/lora-adapters")
        except (LlamaCppError, OSError, ValueError):  # OSError: a binary that cannot even be started
            return False
    return isinstance(listed, list) and any(
        isinstance(e, dict) and e.get("alora_invocation_tokens") == PROBE_TOKENS for e in listed
    )
