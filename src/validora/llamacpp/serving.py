"""Serve validators on llama.cpp's llama-server: export the adapters, start the server on their base GGUF
with every adapter at scale 0, and check that it lists them as exported.

Each request chooses its adapter with an explicit `"lora": [{"id": N, "scale": 1}]` list (adapters it
leaves out run at scale 0; two aLoRAs in one request are an HTTP 400). A request without "lora", or with
an empty list, runs at the server's default scales: `--lora-init-without-apply` leaves them at 1 (every
adapter at once), so `serve` sets them to 0 through POST /lora-adapters, and such a request runs the base
model alone (until a client posts other defaults: send the explicit list). The exports are written for
the server (`export_gguf`'s default: the invocation shifted by one token, so the server starts an aLoRA
where training did, and the adapter's digest as task name, by which `LlamaCppBackend` finds it); they
live in a private temporary directory, removed when the server stops.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from validora.adapter.loading import resolve_adapter_dir
from validora.adapter.schema import AdapterInfo
from validora.core.models import BaseModelSpec, resolve_base_model
from validora.errors import ConfigError, LlamaCppError, ModelError
from validora.llamacpp.build import build_jobs, ensure_server
from validora.llamacpp.gguf import conversion_hint, export_gguf
from validora.llamacpp.server import PARALLEL_ALORA_BUG, Server, served_invocation, start_server, tail


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter as the server knows it: request it with `{"id": id, "scale": 1}`."""

    id: int
    name: str
    directory: Path
    labels: list[str]
    invocation_tokens: list[int] | None  # as served: the trained invocation without its first token
    gguf: Path


@dataclass
class Serving:
    """A running llama-server with its adapters; `stop()` ends it and removes the exports."""

    server: Server
    adapters: list[ServedAdapter]
    base: BaseModelSpec
    host: str
    port: int
    workdir: Path
    _stopped: bool = field(default=False, repr=False)
    _crashed: bool = field(default=False, repr=False)  # exited on its own: its log is kept

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request_example(self, adapter: ServedAdapter) -> dict:
        """A /completion body that runs `adapter` alone (adapters a "lora" list leaves out run at scale 0)."""
        return {
            "prompt": "<output, then the invocation>",
            "n_predict": 1,
            "lora": [{"id": adapter.id, "scale": 1}],
        }

    def wait(self, poll: float = 0.5) -> None:
        """Block while the server runs; its exit on its own (a crash, a kill) is an error with its log."""
        while self.server.process.poll() is None:
            time.sleep(poll)
        if not self._stopped:
            self._crashed = True
            raise LlamaCppError(
                f"llama-server exited ({self.server.process.returncode}); its whole log is kept in "
                f"{self.server.log}:\n{tail(self.server.log)}"
            )

    def stop(self) -> None:
        """End the server; its exports and (unless it crashed) its log go."""
        if not self._stopped:
            self._stopped = True
            self.server.stop(keep_log=self._crashed)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Plan:
    """What `serve` will do, decided before anything is written or started."""

    directories: list[Path]
    infos: list[AdapterInfo]
    base: BaseModelSpec


def plan(adapters: list[str | Path], *, basemodel: str | None = None) -> Plan:
    """Read every adapter and refuse what one server cannot serve: no adapter, adapters of different
    base models, a base model that is not a GGUF file (with the command that makes one)."""
    if not adapters:
        raise ConfigError("Name at least one adapter to serve.")
    directories = [resolve_adapter_dir(a)[0] for a in adapters]
    infos = [AdapterInfo.read(d) for d in directories]
    specs = [resolve_base_model(basemodel or info.base_model) for info in infos]
    if len({s.location for s in specs}) > 1:
        listing = "\n".join(f"  {d}: {s.name}" for d, s in zip(directories, specs, strict=True))
        raise ConfigError(
            "One llama-server runs one base model, and these adapters were trained on different ones:\n"
            f"{listing}\nServe each base model's adapters with their own `m alora serve` (on another port)."
        )
    base = specs[0]
    if hint := conversion_hint(base):
        raise ModelError(
            f"The base model {base.name} is not a GGUF file, which llama-server needs; make one with "
            f"llama.cpp first:\n  {hint}\nthen pass base.gguf as basemodel."
        )
    return Plan(directories, infos, base)


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before exporting or starting anything."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama-server: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use; choose another.", option="port"
                ) from None
            raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror}.", option="port") from None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.x, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warning(host: str, port: int | None, api_key: str | None) -> str | None:
    """What to say about listening on `host` (None: loopback, this machine only)."""
    if is_loopback(host):
        return None
    where = f"{host}:{port}" if port else host
    if not api_key:
        return (
            f"llama-server listens on {where}, beyond this machine, without authentication: anyone who "
            "can reach it can run the model and read what it is sent. Pass api_key (or set "
            "VALIDORA_API_KEY) so that requests must carry it, or listen on 127.0.0.1."
        )
    return (
        f"llama-server listens on {where}, beyond this machine; requests must carry the API key, but "
        "plain HTTP sends it (and every text) unencrypted: put it behind TLS on an untrusted network."
    )


def serve(
    adapters: list[str | Path],
    *,
    basemodel: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    parallel: int = 1,
    ctx_size: int = 4096,
    threads: int | None = None,
    jobs: int | None = None,
    say: Callable[[str], None] | None = None,
    unsafe_parallel_alora: bool = False,
    api_key: str | None = None,
) -> Serving:
    """Export `adapters`, find or build llama-server, start it on their base GGUF with every adapter at
    scale 0 and wait until it answers; `ctx_size` is per parallel slot, `jobs` the cores of a first
    build (default: build_jobs()). Stop it with `Serving.stop()`. `unsafe_parallel_alora` lets aLoRA
    adapters run on several slots despite PARALLEL_ALORA_BUG (benchmarks/serve_throughput.py shows it).
    `api_key`: requests must carry it (`Authorization: Bearer`); a host other than loopback is warned
    about (without a key, the port is open to anyone who reaches it)."""
    if parallel < 1:
        raise ConfigError(f"parallel must be at least 1, not {parallel}.", option="parallel")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, not {port}.", option="port")
    chosen = plan(adapters, basemodel=basemodel)
    if parallel > 1 and any(info.is_alora for info in chosen.infos) and not unsafe_parallel_alora:
        raise ConfigError(
            f"parallel {parallel} is refused for aLoRA adapters: {PARALLEL_ALORA_BUG}. Serve them with "
            "parallel 1 (concurrent requests then queue and every label is right).",
            option="parallel",
        )
    if port is not None:
        check_port(host, port)
    if note := exposure_warning(host, port, api_key):
        warnings.warn(note, stacklevel=2)
    binary = ensure_server(jobs=jobs or build_jobs(), **({"say": say} if say else {}))
    workdir = Path(tempfile.mkdtemp(prefix="validora-serve-"))
    try:
        served = _export_all(chosen, workdir, basemodel)
        server = start_server(
            binary, chosen.base.location, [a.gguf for a in served], port=port, parallel=parallel,
            ctx_size=ctx_size * parallel, threads=threads, host=host, api_key=api_key,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    serving = Serving(server, served, chosen.base, host, int(server.url.rsplit(":", 1)[1]), workdir)
    try:
        _all_at_scale_zero(serving)
        _check_listing(serving)
    except BaseException:
        serving.stop()
        raise
    return serving


def _export_all(chosen: Plan, workdir: Path, basemodel: str | None) -> list[ServedAdapter]:
    served = []
    for i, (directory, info) in enumerate(zip(chosen.directories, chosen.infos, strict=True)):
        gguf = export_gguf(directory, workdir / f"{i}-{directory.name}.gguf", basemodel=basemodel)
        served.append(
            ServedAdapter(i, directory.name, directory, list(info.labels), served_invocation(info), gguf)
        )
    return served


def _all_at_scale_zero(serving: Serving) -> None:
    """`--lora-init-without-apply` leaves the server's default scale at 1: a request without "lora" (or
    with an empty list) would run every adapter. Set the default to 0, so that such a request runs the
    base model alone; a request names its adapter as `"lora": [{"id": N, "scale": 1}]`."""
    body = [{"id": a.id, "scale": 0.0} for a in serving.adapters]
    try:
        serving.server.post("/lora-adapters", body, timeout=30.0)
    except LlamaCppError as exc:
        raise LlamaCppError(f"llama-server at {serving.url} refused the adapters' scales: {exc}") from None


def _check_listing(serving: Serving) -> None:
    """The server's /lora-adapters must list each export under its id, at scale 0, with its invocation."""
    try:
        listed = serving.server.get("/lora-adapters")
    except LlamaCppError as exc:
        raise LlamaCppError(f"llama-server at {serving.url} did not list its adapters: {exc}") from None
    by_id = {e.get("id"): e for e in listed if isinstance(e, dict)} if isinstance(listed, list) else {}
    for a in serving.adapters:
        entry = by_id.get(a.id) or {}
        same_file = Path(str(entry.get("path", ""))).name == a.gguf.name
        tokens = entry.get("alora_invocation_tokens") or None
        if not same_file or tokens != a.invocation_tokens or entry.get("scale") != 0:
            raise LlamaCppError(
                f"llama-server lists adapter {a.id} as {entry or 'missing'}; expected {a.gguf.name} at "
                f"scale 0 with invocation tokens {a.invocation_tokens}."
            )
