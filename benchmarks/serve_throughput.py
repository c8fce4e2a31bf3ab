"""Serving throughput: the in-process backend vs llama-server, side by side in one run.

Both backends check the same outputs with the same adapter: LocalHFBackend (PyTorch, one lock) driven
by 1 and by 4 client threads, and LlamaCppBackend against one `serve(adapter, parallel=P)` driven by 1
and by 4 concurrent clients. Each client takes the next output and calls `backend.check(output, checks)`;
an output's latency is that call's wall time. Torch and the server use the same number of threads
(--threads), set explicitly. Runs of one client count are measured back to back (in-process, then
server, on the same texts), so that a busier minute of a shared machine hits both alike. The same run
checks that the two backends agree: the most probable label of every check, at each client count.

Outputs: the notes of --file (default: the engine test notes), repeated in order up to --n outputs
(--tokens N joins consecutive notes until each output has at least N tokens), each made unique by a
"Log K-I:" tag (K the run pair, I the output): llama-server keeps finished prompts in RAM and would
otherwise serve a repeated output's prefix from there (--same-outputs shows that effect). A check is one
(adapter, requirement) pair, scored over all the adapter's labels; --judge adds a second check per
output, the base model as yes/no judge of one requirement, in a second set of rows.

The adapter must exist (this script trains nothing): --adapter DIR, default checkpoints/engine_alora,
which `make demo` writes. llama-server is found or built as `m alora serve` does.

    nice -n 19 .venv/bin/python benchmarks/serve_throughput.py --n 48 --threads 1 [--clients 1 4] \
        [--parallel 4] [--judge] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from validora import CustomIntrinsicAdapter, LocalHFBackend
from validora.backends.llamacpp import LlamaCppBackend
from validora.llamacpp.build import build_info
from validora.llamacpp.serving import serve

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADAPTER = ROOT / "checkpoints" / "engine_alora"
DEFAULT_NOTES = ROOT / "examples" / "engine_failures_test.jsonl"
REQUIREMENT = "The failure mode must not be 'no_failure'."
JUDGE_REQUIREMENT = "The note names a specific engine part."
AGREEMENT_TARGET = 0.98


@dataclass
class Run:
    """One backend driven by `clients` threads over every output."""

    backend: str
    clients: int
    checks: int  # per output
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)  # per output, per check
    probs: list[list[dict[str, float]]] = field(default_factory=list)
    server: dict[str, float] | None = None  # llama-server's own timings (server runs)

    def row(self) -> dict[str, Any]:
        n = len(self.latencies)
        cuts = (
            statistics.quantiles(self.latencies, n=100, method="inclusive") if n > 1 else self.latencies * 99
        )
        return {
            "backend": self.backend,
            "clients": self.clients,
            "checks_per_output": self.checks,
            "outputs": n,
            "wall_s": round(self.wall, 3),
            "checks_per_s": round(n * self.checks / self.wall, 3),
            "outputs_per_s": round(n / self.wall, 3),
            "p50_ms": round(cuts[49] * 1000, 1),
            "p95_ms": round(cuts[94] * 1000, 1),
        }


class TimedLlamaCppBackend(LlamaCppBackend):
    """LlamaCppBackend that keeps the server's own timings of every /completion: how many prompt tokens
    it computed and how many it took from the slot's cache, and its compute time (vs the client's)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timings: list[dict[str, float]] = []

    def _request(self, path: str, body: dict | None) -> Any:
        answer = super()._request(path, body)
        if path == "/completion" and isinstance(answer, dict) and isinstance(answer.get("timings"), dict):
            self.timings.append(answer["timings"])  # list.append is atomic: safe from client threads
        return answer


def server_stats(timings: list[dict[str, float]], requests_wall: float) -> dict[str, float]:
    """Per /completion: prompt tokens computed and cached, server compute ms; the share of prompt reused."""
    n = len(timings)
    computed = sum(t.get("prompt_n", 0) for t in timings)
    cached = sum(t.get("cache_n", 0) for t in timings)
    prompt_ms = sum(t.get("prompt_ms", 0.0) for t in timings)
    predicted_ms = sum(t.get("predicted_ms", 0.0) for t in timings)
    return {
        "requests": n,
        "prompt_tokens_computed_per_request": round(computed / n, 1),
        "prompt_tokens_cached_per_request": round(cached / n, 1),
        "prompt_reused": round(cached / max(cached + computed, 1), 3),
        "generated_tokens_per_request": round(sum(t.get("predicted_n", 0) for t in timings) / n, 2),
        "server_prompt_ms_per_request": round(prompt_ms / n, 1),
        "server_generation_ms_per_request": round(predicted_ms / n, 1),
        "client_ms_per_request": round(requests_wall * 1000 / n, 1),
    }


def drive(backend: Any, name: str, outputs: list[str], checks: list, clients: int) -> Run:
    """`clients` threads, each checking the next unchecked output until none is left; results in input order."""
    n = len(outputs)
    latencies: list[float] = [0.0] * n
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock, next_index = threading.Lock(), iter(range(n))

    def client() -> None:
        while not errors:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                results[i] = backend.check(outputs[i], checks)
            except BaseException as exc:  # re-raised in the main thread
                errors.append(exc)
                return
            latencies[i] = time.perf_counter() - started

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    run = Run(name, clients, len(checks), wall, latencies)
    run.labels = [[r.scores.label for r in result] for result in results]
    run.probs = [[dict(r.scores.probs) for r in result] for result in results]
    return run


def agreement(a: Run, b: Run) -> tuple[float, float]:
    """Share of checks with the same most probable label, and the mean absolute probability difference."""
    same = total = 0
    diffs: list[float] = []
    for la, lb, pa, pb in zip(a.labels, b.labels, a.probs, b.probs, strict=True):
        for x, y, px, py in zip(la, lb, pa, pb, strict=True):
            same += x == y
            total += 1
            diffs += [abs(px[k] - py[k]) for k in px]
    return same / total, statistics.fmean(diffs)


def load_outputs(path: Path, n: int, tokens: int, tokenizer: Any) -> list[str]:
    notes = [json.loads(line)["item"] for line in path.read_text().splitlines() if line.strip()]
    if tokens <= 0:
        return [notes[i % len(notes)] for i in range(n)]
    outputs = []
    for i in range(n):
        text, j = notes[i % len(notes)], i + 1
        while len(tokenizer(text)["input_ids"]) < tokens:
            text += " " + notes[j % len(notes)]
            j += 1
        outputs.append(text)
    return outputs


def tagged(outputs: list[str], pair: int) -> list[str]:
    """Outputs no earlier call has seen: llama-server keeps finished prompts in RAM (--cache-ram, 8 GiB by
    default) and would serve a repeated output's prefix from there, which the in-process backend cannot."""
    return [f"Log {pair}-{i}: {text}" for i, text in enumerate(outputs)]


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak resident memory: this process (ru_maxrss), or another one's VmHWM."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path, default=DEFAULT_ADAPTER,
                        help="validora adapter directory (default: checkpoints/engine_alora, from `make demo`; "
                             "nothing is trained here)")  # fmt: skip
    parser.add_argument("--file", type=Path, default=DEFAULT_NOTES, help="JSONL with an 'item' per line")
    parser.add_argument("--n", type=int, default=500, help="outputs (the notes repeated in order)")
    parser.add_argument(
        "--tokens", type=int, default=0, help="join notes until each output has this many tokens"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads = llama-server threads (-t)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent clients per run")
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="llama-server slots (default 1; more reproduce llama.cpp's batched-aLoRA bug: labels disagree)",
    )
    parser.add_argument(
        "--judge", action="store_true", help="also rows with a second check: the base-model judge"
    )
    parser.add_argument("--same-outputs", action="store_true",
                        help="check the very same outputs in every run (by default each output is made unique "
                             "by a 'Log K-I:' tag, so that llama-server's prompt cache in RAM cannot reuse an "
                             "earlier run's or an earlier repeat's prefix)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="save the results here")
    args = parser.parse_args()
    if not (args.adapter / "validora.json").is_file():
        parser.error(f"no validora adapter at {args.adapter}: run `make demo` or pass --adapter DIR")
    if args.n < 1 or args.threads < 1 or min(args.clients) < 1:
        parser.error("--n, --threads and --clients must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    parallel = (
        args.parallel or 1
    )  # several slots give aLoRA checks wrong labels (llamacpp.PARALLEL_ALORA_BUG)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    serving = serve(
        [args.adapter], parallel=parallel, threads=args.threads, unsafe_parallel_alora=parallel > 1
    )
    try:
        local = LocalHFBackend(device="cpu")
        remote = TimedLlamaCppBackend(serving.url, unsafe_parallel_alora=parallel > 1)
        adapter = CustomIntrinsicAdapter(str(args.adapter))
        local.add_adapter(adapter)
        remote.add_adapter(adapter)
        outputs = load_outputs(args.file, args.n, args.tokens, local.tokenizer)
        sets = [[(adapter.name, REQUIREMENT)]]
        if args.judge:
            sets.append([(adapter.name, REQUIREMENT), (None, JUDGE_REQUIREMENT)])
        for backend in (local, remote):  # warm both (first-call costs, the server's first slot)
            backend.check(outputs[0], sets[-1])
        runs: list[Run] = []
        for checks in sets:
            for clients in args.clients:
                texts = outputs if args.same_outputs else tagged(outputs, len(runs) // 2)
                runs.append(drive(local, "in-process", texts, checks, clients))
                remote.timings.clear()
                runs.append(drive(remote, f"llama-server -np {parallel}", texts, checks, clients))
                runs[-1].server = server_stats(remote.timings, sum(runs[-1].latencies))
                for run in runs[-2:]:
                    print(f"  done: {run.backend}, {clients} client(s), {len(checks)} check(s)/output: "
                          f"{run.wall:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        rss_local = peak_rss_mib()
        rss_server = peak_rss_mib(serving.server.process.pid)
    finally:
        serving.stop()

    rows = [{**r.row(), **({"server": r.server} if r.server else {})} for r in runs]
    final = outputs if args.same_outputs else tagged(outputs, 0)
    mean_tokens = statistics.fmean(len(local.tokenizer(o)["input_ids"]) for o in final)
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} CPU cores, {platform.system()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); llama.cpp {(build_info() or {}).get('commit', '?')} "
          f"(llama-server -t {args.threads} -np {parallel}); load average before/after: "
          f"{load_before[0]:.2f}/{os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"Command: `{' '.join(sys.argv)}`; adapter {args.adapter.name}; {len(outputs)} outputs of "
          f"{mean_tokens:.0f} tokens on average ({args.file.name}, "
          f"{'the same in every run' if args.same_outputs else 'each made unique by a tag'}); total {time.perf_counter() - began:.0f} s\n")  # fmt: skip
    print(
        "| backend | clients | checks/output | checks/s | outputs/s | p50 ms/output | p95 ms/output | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['clients']} | {r['checks_per_output']} | {r['checks_per_s']:.2f} | "
              f"{r['outputs_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['wall_s']:.1f} |")  # fmt: skip
    print(f"\nPeak RSS: in-process {rss_local:.0f} MiB (this process: model, tokenizer, results); "
          f"llama-server {rss_server:.0f} MiB\n")  # fmt: skip

    print(
        "| server run | clients | checks/output | requests | prompt tokens computed / cached per request "
        "| prompt reused | server ms / request: prompt + generation | client ms / request |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        if (st := run.server) is not None:
            print(f"| {run.backend} | {run.clients} | {run.checks} | {st['requests']} | "
                  f"{st['prompt_tokens_computed_per_request']:.1f} / {st['prompt_tokens_cached_per_request']:.1f} | "
                  f"{st['prompt_reused']:.0%} | {st['server_prompt_ms_per_request']:.0f} + "
                  f"{st['server_generation_ms_per_request']:.0f} | "
                  f"{st['client_ms_per_request']:.0f} |")  # fmt: skip
    print(
        "(server ms: its prompt and generation times per /completion, from its `timings`; client ms: the "
        "client's wall time per request, with HTTP, queueing for a slot and the client's own work)\n"
    )

    ratios = []
    for local_run, server_run in zip(runs[::2], runs[1::2], strict=True):
        a, b = local_run.row(), server_run.row()
        ratios.append({"clients": a["clients"], "checks_per_output": a["checks_per_output"],
                       "checks_per_s": round(b["checks_per_s"] / a["checks_per_s"], 3),
                       "p95": round(b["p95_ms"] / a["p95_ms"], 3)})  # fmt: skip
        print(
            f"server / in-process, {a['clients']} client(s), {a['checks_per_output']} check(s)/output: "
            f"checks/s x{ratios[-1]['checks_per_s']:.2f}, p95 latency x{ratios[-1]['p95']:.2f}"
        )

    agree = []
    for local_run, server_run in zip(runs[::2], runs[1::2], strict=True):  # the same texts
        share, mad = agreement(local_run, server_run)
        agree.append({"clients": server_run.clients, "checks_per_output": server_run.checks,
                      "same_label": round(share, 4), "mean_abs_prob_diff": round(mad, 4)})  # fmt: skip
        verdict = "ok" if share >= AGREEMENT_TARGET else f"BELOW {AGREEMENT_TARGET:.0%}"
        print(f"agreement server vs in-process, {server_run.clients} client(s), {server_run.checks} check(s)/output: "
              f"same label {share:.1%} ({verdict}), mean |dp| {mad:.4f}")  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "machine": cpu_model(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "server_threads": args.threads, "parallel": parallel,
            "llama_cpp": (build_info() or {}).get("commit"), "adapter": str(args.adapter),
            "outputs": len(outputs), "mean_tokens": round(mean_tokens, 1), "same_outputs": args.same_outputs,
            "load_average_before": load_before[0], "rows": rows, "ratios": ratios, "agreement": agree,
            "peak_rss_mib": {"in_process": round(rss_local), "llama_server": round(rss_server)},
        }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
