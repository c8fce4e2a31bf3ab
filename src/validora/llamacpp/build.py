"""llama.cpp's `llama-server`, the engine validators are served on: find one that serves aLoRA adapters,
or build one, once, from the official sources into validora's cache.

The official llama.cpp tree ships inside the `llama-cpp-python` source distribution on PyPI
(`vendor/llama.cpp`); PyPI has no prebuilt server and the Python bindings do not expose aLoRA, so the
C++ server is built with CMake + Ninja (Release, CPU, no OpenSSL, no web UI download): only the
`llama-server` target, into `<cache>/llama.cpp/<commit>/`, with `build.json` recording the commit.
`make llama-server` runs it through the hidden command `m llama-server build` (cli/llama.py); progress
goes to the `say` callback of the caller (nothing by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from validora.core import files
from validora.core.models import cache_dir
from validora.errors import ConfigError, LlamaCppError, ValidoraError
from validora.llamacpp.server import supports_alora

LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors llama.cpp at this commit (its CHANGELOG says so)
LLAMA_CPP_COMMIT = "0c1e57098"
SERVER_ENV = "VALIDORA_LLAMA_SERVER"  # a llama-server binary to use instead of PATH or the cache
SDIST_ENV = "VALIDORA_LLAMA_CPP_SDIST"  # a downloaded llama_cpp_python-<version>.tar.gz (offline builds)
BUILD_INFO = "build.json"
CMAKE_FLAGS = (
    "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF",
)  # fmt: skip


def home() -> Path:
    """Where this commit's sources, build tree and server live."""
    return cache_dir() / "llama.cpp" / LLAMA_CPP_COMMIT


def source_tree() -> Path:
    return home() / "src"


# x86 CPU flag (/proc/cpuinfo) → ggml option. AMX stays off: ggml's AMX matmul crashed (SIGSEGV in
# ggml_backend_amx_mul_mat, at the first decode) on the Q4_1 embedded model on an AMX machine, and
# GGML_NATIVE's -march=native would turn it on (a server built so runs here only with `--no-repack`).
X86_OPTIONS = {
    "GGML_SSE42": ("sse4_2",), "GGML_AVX": ("avx",), "GGML_AVX2": ("avx2",), "GGML_BMI2": ("bmi2",),
    "GGML_FMA": ("fma",), "GGML_F16C": ("f16c",), "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",), "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}  # fmt: skip


def cpu_flags() -> list[str]:
    """ggml's CPU options for this machine: its x86 instruction sets without AMX; elsewhere -march=native."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    have = set(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )
    if "avx" not in have:
        return []  # not x86 (or very old): ggml's own native detection
    on = [f"-D{opt}={'ON' if all(f in have for f in need) else 'OFF'}" for opt, need in X86_OPTIONS.items()]
    return ["-DGGML_NATIVE=OFF", *on, "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def cmake_flags() -> list[str]:
    return [*CMAKE_FLAGS, *cpu_flags(), f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}"]


def cached_server() -> Path | None:
    """The server built by `build()` with today's flags, if its build finished (build.json is written last)."""
    binary = home() / "bin" / "llama-server"
    info = build_info()
    return binary if info and info.get("cmake_flags") == cmake_flags() and binary.is_file() else None


def build_info() -> dict | None:
    path = home() / BUILD_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def _quiet(line: str) -> None:
    """The default progress callback: the library says nothing; the CLI passes one that shows lines."""


def _sdist(workdir: Path, say: Callable[[str], None]) -> Path:
    """The llama-cpp-python sdist: $VALIDORA_LLAMA_CPP_SDIST, else `pip download` from PyPI."""
    if given := os.environ.get(SDIST_ENV):
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError(f"{SDIST_ENV}={given} is not a file.")
        return path
    say(f"Downloading the llama.cpp sources (llama-cpp-python {LLAMA_CPP_PYTHON} sdist, about 75 MB) ...")
    cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-deps",
           "--no-binary", ":all:", "-d", str(workdir)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(workdir.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise LlamaCppError(
            f"Could not download the llama.cpp sources from PyPI:\n{done.stderr.strip()[-2000:]}\n"
            f"Download llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz yourself and set {SDIST_ENV} to it."
        )
    return found[0]


def fetch_sources(say: Callable[[str], None] = _quiet) -> Path:
    """The official llama.cpp tree, extracted once from the sdist into the cache (checked: its commit)."""
    tree = source_tree()
    if (tree / "CMakeLists.txt").is_file():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".src-", dir=tree.parent) as tmp:
        sdist = _sdist(Path(tmp), say)
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/"
        with tarfile.open(sdist) as tar:
            try:
                text = tar.extractfile(prefix + "CHANGELOG.md").read().decode()  # type: ignore[union-attr]
            except (KeyError, AttributeError, UnicodeDecodeError):
                text = ""
            if f"[{LLAMA_CPP_PYTHON}]" not in text or f"llama.cpp@{LLAMA_CPP_COMMIT}" not in text:
                raise LlamaCppError(
                    f"{sdist} is not llama-cpp-python {LLAMA_CPP_PYTHON} (llama.cpp@{LLAMA_CPP_COMMIT})."
                )
            vendor = prefix + "vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(vendor)]
            for m in members:
                m.name = m.name[len(vendor) :]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.11.4 lacks it
            tar.extractall(Path(tmp) / "tree", members=members, **safe)
        os.replace(Path(tmp) / "tree", tree)
    return tree


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache; a second `make llama-server` waits and then reuses the first."""
    home().mkdir(parents=True, exist_ok=True)
    with files.file_lock(home() / "build.lock"):
        yield


def build(*, jobs: int = 1, niceness: int = 19, say: Callable[[str], None] = _quiet) -> Path:
    """Build `llama-server` once (CPU, Release); return the binary. An earlier finished build is reused."""
    if found := cached_server():
        return found
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise LlamaCppError(f"Building llama-server needs {tool} on PATH (and a C++17 compiler).")
    with _build_lock():
        if found := cached_server():
            return found
        tree = fetch_sources(say)
        build_dir = home() / "build"
        nice = ["nice", "-n", str(niceness)] if niceness and shutil.which("nice") else []
        start = time.monotonic()
        steps = [
            [*nice, "cmake", "-S", str(tree), "-B", str(build_dir), *cmake_flags()],
            [*nice, "cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)],
        ]  # fmt: skip
        say(f"Building llama-server (llama.cpp@{LLAMA_CPP_COMMIT}, CPU, -j {jobs}) in {build_dir} ...")
        for cmd in steps:
            _run_streamed(cmd, say)
        binary = home() / "bin" / "llama-server"
        binary.parent.mkdir(exist_ok=True)
        shutil.copy2(build_dir / "bin" / "llama-server", binary)
        _smoke_test(binary, say)
        seconds = round(time.monotonic() - start, 1)
        info = {"commit": LLAMA_CPP_COMMIT, "llama_cpp_python": LLAMA_CPP_PYTHON, "jobs": jobs,
                "niceness": niceness, "seconds": seconds, "cmake_flags": cmake_flags(),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        (home() / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        say(f"Built {binary} in {seconds / 60:.1f} min.")
        return binary


def _smoke_test(binary: Path, say: Callable[[str], None]) -> None:
    """A build that cannot serve the embedded model with an aLoRA adapter is not kept."""
    from validora.core.models import embedded_gguf_path

    try:
        base = embedded_gguf_path()
    except ValidoraError:
        say("The embedded model is not installed: the new llama-server was not tried.")
        return
    if not supports_alora(binary, base):
        raise LlamaCppError(f"The llama-server just built does not serve {base} with an aLoRA adapter.")


def _run_streamed(cmd: list[str], say: Callable[[str], None]) -> None:
    """Run a build step, showing Ninja's `[n/N]` progress lines; on failure, the log's tail."""
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-40:], line.rstrip()]
            if line.startswith("[") or line.startswith("-- Build files") or "error" in line.lower():
                say(line.rstrip())
    if proc.returncode:
        raise LlamaCppError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))


def find_server(*, check: bool = True) -> Path | None:
    """The llama-server to use: $VALIDORA_LLAMA_SERVER (must serve aLoRA), else one on PATH that serves
    aLoRA, else the cached build; None when there is none (then `build()`)."""
    if given := os.environ.get(SERVER_ENV):
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{SERVER_ENV}={given} is not an executable file.")
        if check and not supports_alora(path):
            raise LlamaCppError(
                f"{SERVER_ENV}={given} does not serve aLoRA adapters (its /lora-adapters answer has no "
                "invocation tokens); use a llama.cpp from September 2025 or later, or unset it and run "
                "`make llama-server`."
            )
        return path
    on_path = shutil.which("llama-server")
    if on_path and (not check or supports_alora(on_path)):
        return Path(on_path)
    return cached_server()


def build_jobs() -> int:
    """Cores for a first build of llama-server: $VALIDORA_BUILD_JOBS (as `make llama-server`), else 1."""
    text = os.environ.get("VALIDORA_BUILD_JOBS", "1")
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"VALIDORA_BUILD_JOBS={text} is not a positive number of build jobs.")
    return int(text)


def ensure_server(*, jobs: int = 1, say: Callable[[str], None] = _quiet) -> Path:
    """A llama-server that serves aLoRA: found, or built once (tens of minutes on two cores)."""
    return find_server() or build(jobs=jobs, say=say)
