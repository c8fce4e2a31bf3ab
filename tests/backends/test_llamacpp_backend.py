"""LlamaCppBackend on a real llama-server (built by `make test`) and the real embedded model.

Numerics are never mocked: the parity tests compare the server's label probabilities with the in-process
backend's. Faults a real server cannot be made to produce on demand (a hang, an HTTP 500, a dropped
connection) come from a small proxy in front of the real server, which forwards everything else.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from validora import ChatContext, CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.backends.llamacpp import LlamaCppBackend
from validora.core.models import embedded_gguf_path
from validora.errors import AdapterError, LlamaCppError
from validora.llamacpp.gguf import export_gguf
from validora.llamacpp.server import free_port, start_server
from validora.llamacpp.serving import serve
from validora.programs.sampling import RejectionSamplingStrategy

from ..conftest import EXAMPLES

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
SEED_REQ = "The failure mode must not be 'no_failure'."
SHORT = {"max_new_tokens": 24}
QUICK = {"threads": 1, "ctx_size": 512}


def engine_notes() -> list[str]:
    return [
        json.loads(line)["item"]
        for line in (EXAMPLES / "engine_failures_test.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def requirement_adapter(trained_adapter, tmp_path_factory) -> Path:
    """The trained adapter marked as trained with requirement texts: requirements enter its prompt (its
    digest differs, so the server serves it as a second adapter)."""
    path = shutil.copytree(trained_adapter, tmp_path_factory.mktemp("req") / "second")
    info = json.loads((path / "validora.json").read_text())
    (path / "validora.json").write_text(json.dumps({**info, "requirements": True}))
    return path


@pytest.fixture(scope="module")
def serving(trained_adapter, requirement_adapter, llama_server):
    with serve([trained_adapter, requirement_adapter], threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def adapters(trained_adapter, requirement_adapter) -> list[CustomIntrinsicAdapter]:
    return [CustomIntrinsicAdapter(model_id=str(p)) for p in (trained_adapter, requirement_adapter)]


@pytest.fixture(scope="module")
def server(serving, adapters) -> LlamaCppBackend:
    backend = LlamaCppBackend(serving.url)
    for adapter in adapters:
        backend.add_adapter(adapter)
    return backend


@pytest.fixture(scope="module")
def local(adapters) -> LocalHFBackend:
    backend = LocalHFBackend(device="cpu")
    for adapter in adapters:
        backend.add_adapter(adapter)
    return backend


TIE = 0.02  # in-process margins this small are decided by arithmetic noise, not by the adapter


def differences(
    served: list[dict[str, float]], expected: list[dict[str, float]]
) -> tuple[float, int, float, float]:
    """Share of items whose most probable label is the expected one, counting as agreeing the near-ties
    (the server's choice within TIE of the expected top in the expected probabilities); how many such
    ties there were; mean and max |p - q| over items and labels."""
    agree, ties = 0, 0
    for p, q in zip(served, expected, strict=True):
        mine, theirs = max(p, key=p.get), max(q, key=q.get)
        agree += mine == theirs or q[theirs] - q[mine] <= TIE
        ties += mine != theirs and q[theirs] - q[mine] <= TIE
    diffs = [abs(p[k] - q[k]) for p, q in zip(served, expected, strict=True) for k in p]
    return agree / len(served), ties, sum(diffs) / len(diffs), max(diffs)


def test_parity_with_in_process_scores_on_the_engine_test_notes(server, local):
    """Issue item 5: llama.cpp's Q4_1 arithmetic (activations quantised to 8 bits) against PyTorch's fp32
    on the dequantised weights. The issue names the demo adapter, which `make demo` trains for minutes;
    this is the session's small adapter on the same engine task (the demo adapter, measured by hand:
    48/48 same label, mean |dp| 0.0066, max 0.087). The small adapter leaves a few notes near a tie
    (in-process top-two margins of 0.0007 and 0.0014 on two notes in one training), where a difference
    of 0.001 picks the other label: those count as agreeing when within TIE (measured here: mean |dp|
    0.0012-0.0015, max 0.006-0.007, 46-48 of 48 strictly the same label).
    The same figures with llama.cpp's converter export (invocation unshifted, the adapter on from one
    token early) were 0.0013 / 0.0066 on this adapter: the off-by-one barely moves it."""
    notes = engine_notes()
    assert len(notes) == 48
    with ThreadPoolExecutor(1) as pool:  # the in-process scores meanwhile, on the other core
        in_process = pool.submit(lambda: [local.check(n, [("engine", None)])[0].scores.probs for n in notes])
        served = [server.check(n, [("engine", None)])[0].scores.probs for n in notes]
        expected = in_process.result()
    same, ties, mean, worst = differences(served, expected)
    print(f"\nparity on {len(notes)} notes: same label {same:.1%} (near-ties {ties}), mean |dp| {mean:.4f}, "
          f"max {worst:.4f}")  # fmt: skip
    assert same >= 0.98 and mean <= 0.03, (same, ties, mean, worst)
    assert all(
        set(p) == set(q) and sum(p.values()) == pytest.approx(1)
        for p, q in zip(served, expected, strict=True)
    )


def test_the_yes_no_judge_is_close_to_in_process(server, local):
    """The base model alone (no adapter) on the judge's chat prompt. Measured on 12 notes x 2 requirements:
    mean |dp| 0.012, max 0.044 (p(yes) 0.109 vs 0.153, a log-odds shift of 0.39): larger than the
    adapter's because the judge's prompt is longer (the template's system turn) and its yes/no are
    close (p(yes) 0.1-0.25), so 8-bit activations move them more. Bounds: max 0.06, mean 0.03."""
    checks = [(None, "Does the note mention a noise?"), (None, "The note names a part of the engine.")]
    served, expected = [], []
    for note in engine_notes()[:3]:
        served += [r.scores.probs for r in server.check(note, checks)]
        expected += [r.scores.probs for r in local.check(note, checks)]
    same, ties, mean, worst = differences(served, expected)
    print(f"\njudge on {len(served)} checks: same answer {same:.0%}, mean |dp| {mean:.4f}, max {worst:.4f}")
    assert same == 1 and ties == 0 and mean <= 0.03 and worst <= 0.06, (same, mean, worst)


def test_a_judge_check_is_the_same_whether_its_prompt_was_cached_or_not(server):
    """llama.cpp's arithmetic depends on how a prompt is split into batches (p(yes) 0.1916 computed in one
    batch vs 0.1801 with the last token alone, for the first test note): every label of one check must be
    read from one computation of the prompt's last token, so that checking an output a second time (its
    prompt now cached) gives what the first check gave (before that: 0.1332 vs 0.1346 here)."""
    output = "Starter cranks slowly and the engine stalls when the choke is opened."  # used nowhere else
    first, again = (server.check(output, [(None, "Mentions a noise.")])[0] for _ in range(2))
    assert first.scores.probs == pytest.approx(again.scores.probs, abs=1e-6)


def test_several_checks_of_one_output_come_in_order_and_equal_single_checks(server, local):
    output = "Summary: heavy knock under load at 3100 RPM; suspect the connecting rod bearing."
    checks = [
        ("second", "Must be 'connecting_rod'."),
        ("engine", SEED_REQ),
        (None, "Mentions RPM."),
        ("second", "Must be 'piston_rings'."),
        ("engine", None),
        ("second", "Must be 'connecting_rod'."),
    ]
    shared = server.check(output, checks)
    alone = [server.check(output, [check])[0] for check in checks]
    for check, got, single in zip(checks, shared, alone, strict=True):
        assert got.scores.probs == pytest.approx(single.scores.probs, abs=1e-4), check
    # A requirement enters the prompt of an adapter trained with requirements, not of a classifier.
    assert shared[0].scores.probs != pytest.approx(shared[3].scores.probs, abs=1e-3)
    assert shared[1].scores.probs == shared[4].scores.probs and shared[0] is shared[5]
    # And each is what the in-process backend computes for that check.
    *_, worst = differences(
        [r.scores.probs for r in shared], [r.scores.probs for r in local.check(output, checks)]
    )
    assert worst <= 0.06, worst


PART = "Name one engine part."  # greedy margins of 0.78 nats or more in-process: no near-tie to flip


def test_a_session_generates_and_checks_through_the_server(server, local):
    """As tests/programs/test_programs.py's seed-requirement case, on the server: the same program, unchanged."""
    m = Session(server, ctx=ChatContext())
    result = m.instruct(PART, requirements=[req(SEED_REQ, adapter="engine")], model_options=SHORT)
    assert result.text == local.generate([{"role": "user", "content": PART}], SHORT).text
    (v,) = result.validations
    assert v.adapter == "engine" and v.score == pytest.approx(1 - v.probs["no_failure"], abs=1e-6)
    assert v.passed == (v.score >= 0.5)
    assert [msg["content"] for msg in m.ctx.messages] == [PART, result.text]
    (direct,) = server.check(result.text, [("engine", SEED_REQ)])
    assert direct.scores.probs == pytest.approx(v.probs, abs=1e-6)
    (in_process,) = local.check(result.text, [("engine", SEED_REQ)])
    assert differences([v.probs], [in_process.scores.probs])[3] <= 0.03


def test_rejection_sampling_resamples_through_the_server(server):
    calls = []

    def second_time_lucky(text: str) -> bool:
        calls.append(text)
        return len(calls) >= 2

    checked = req(SEED_REQ, adapter="engine", threshold=0.0)  # scored by the server, never decisive
    requirements = [req("passes on the second try", validation_fn=second_time_lucky), checked]
    options = {**SHORT, "seed": 1, "temperature": 0.0}
    m = Session(server)
    result = m.instruct(
        PART,
        requirements=requirements,
        strategy=RejectionSamplingStrategy(loop_budget=3),
        model_options=options,
        return_sampling_results=True,
    )
    tries = result.sample_generations
    assert len(tries) == 2 and [v[0].passed for v in result.sample_validations] == [False, True]
    assert result.success and result.result is tries[1]
    # The retry sampled at the strategy's temperature with the next seed, on the server (reproducibly).
    retry = server.generate([{"role": "user", "content": PART}], {**SHORT, "seed": 2, "temperature": 0.7})
    assert tries[1].text == retry.text
    for output in tries:
        (direct,) = server.check(output.text, [("engine", SEED_REQ)])
        assert output.validations[1].probs == pytest.approx(direct.scores.probs, abs=1e-6)


# ----- errors: each a clear LlamaCppError/AdapterError, never a verdict -------------------------------


class FaultyProxy:
    """A real llama-server behind a proxy that can fail one path, once `after` requests to it have passed:
    "500" answers as llama-server does on an internal error, "hang" never answers, "drop" closes the
    connection without an answer (a crashed server). Everything else is forwarded."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.fault: str | None = None
        self.path = "/completion"
        self.after = 0
        self.seen = 0
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self, None)

            def do_POST(self) -> None:
                proxy.handle(self, self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def set(self, fault: str | None, path: str = "/completion", after: int = 0) -> None:
        self.fault, self.path, self.after, self.seen = fault, path, after, 0
        if fault == "hang":
            self.release.clear()

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        if self.fault and handler.path == self.path:
            self.seen += 1
            if self.seen > self.after:
                return self.fail(handler)
        request = urllib.request.Request(
            self.upstream + handler.path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                status, data = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        self.answer(handler, status, data)

    def fail(self, handler: BaseHTTPRequestHandler) -> None:
        if self.fault == "hang":
            self.release.wait(60)
        elif self.fault == "drop":
            handler.close_connection = True
        else:
            error = {"code": 500, "message": "llama_decode failed: no memory slot", "type": "server_error"}
            self.answer(handler, 500, json.dumps({"error": error}).encode())

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):  # a client that gave up (timed out) is gone
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def proxy(serving):
    faulty = FaultyProxy(serving.url)
    yield faulty
    faulty.close()


@pytest.fixture
def through_proxy(proxy, adapters):
    """A backend that reaches the module's server through the proxy; the fault is cleared afterwards."""
    backend = LlamaCppBackend(proxy.url)
    backend.add_adapter(adapters[0])
    yield backend
    proxy.set(None)
    proxy.release.set()


def test_no_server_at_the_url_is_connection_refused():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LlamaCppError, match="connection refused") as err:
        LlamaCppBackend(url)
    assert url in str(err.value) and "m alora serve" in str(err.value)


def test_a_server_that_does_not_answer_is_a_timeout(proxy, through_proxy):
    proxy.set("hang", "/props")
    started = time.monotonic()
    with pytest.raises(LlamaCppError, match=r"did not answer /props within 0\.5 s"):
        LlamaCppBackend(proxy.url, timeout=0.5)
    assert time.monotonic() - started < 5
    proxy.set("hang", "/completion")
    through_proxy.timeout = 1.0  # the check's first request, GET /lora-adapters, takes milliseconds
    with pytest.raises(LlamaCppError, match=r"did not answer /completion within 1 s"):
        through_proxy.check(NOTE, [("engine", None)])


def test_an_http_error_is_an_error_never_a_verdict(proxy, through_proxy):
    proxy.set("500", after=1)  # the check's second label
    with pytest.raises(LlamaCppError, match=r"answered /completion with HTTP 500: llama_decode failed"):
        through_proxy.check(NOTE, [("engine", None)])
    session = Session(through_proxy)
    proxy.set("500", after=3)
    with pytest.raises(LlamaCppError, match="HTTP 500"):
        session.validate([SEED_REQ], output=NOTE)
    proxy.set("500", after=0)
    with pytest.raises(LlamaCppError, match="HTTP 500"):
        session.instruct(PART, requirements=[SEED_REQ], model_options=SHORT)
    assert session.ctx.messages == []
    proxy.set("500", "/lora-adapters")
    with pytest.raises(LlamaCppError, match="answered /lora-adapters with HTTP 500"):
        through_proxy.check(NOTE, [("engine", None)])


def test_a_dropped_connection_is_an_error(proxy, through_proxy):
    proxy.set("drop", after=1)
    with pytest.raises(LlamaCppError, match="dropped /completion"):
        through_proxy.check(NOTE, [("engine", None)])
    proxy.set(None)
    (after,) = through_proxy.check(NOTE, [("engine", None)])  # and the next check works again
    assert set(after.scores.probs) == {"piston_rings", "connecting_rod", "mini_carburetor", "no_failure"}


def test_an_adapter_the_server_does_not_serve_is_refused(server, trained_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    other = shutil.copytree(trained_adapter, tmp_path / "retrained")
    weights = load_file(other / "adapter_model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 1e-3
    save_file(weights, other / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        AdapterError, match=r"does not serve adapter 'retrained' \(validora:[0-9a-f]{16}\)"
    ) as err:
        server.add_adapter(CustomIntrinsicAdapter(model_id=str(other)))
    assert "0: 0-engine.gguf, 1: 1-second.gguf" in str(err.value) and "m alora serve" in str(err.value)
    assert "retrained" not in server.adapter_labels()


def test_a_restarted_server_and_a_converter_export_are_refused(trained_adapter, llama_server, tmp_path):
    """After add_adapter the server restarts with other adapters: adapter 0 is now another file, and the
    next check raises instead of scoring with it. The converter's export (unshifted invocation) is refused."""
    engine = CustomIntrinsicAdapter(model_id=str(trained_adapter))
    base, port = embedded_gguf_path(), free_port()
    ours = export_gguf(trained_adapter, tmp_path / "ours.gguf")
    theirs = export_gguf(trained_adapter, tmp_path / "theirs.gguf", same_as_converter=True)
    with start_server(llama_server, base, [ours], port=port, **QUICK) as first:
        backend = LlamaCppBackend(first.url)
        backend.add_adapter(engine)
        backend.check(NOTE, [("engine", None)])
    with pytest.raises(LlamaCppError, match="connection refused"):
        backend.check(NOTE, [("engine", None)])
    with start_server(llama_server, base, [theirs], port=port, **QUICK) as second:
        with pytest.raises(LlamaCppError, match=r"no longer serves validora:[0-9a-f]{16} as adapter 0"):
            backend.check(NOTE, [("engine", None)])
        with pytest.raises(AdapterError, match="unshifted") as err:
            LlamaCppBackend(second.url).add_adapter(engine)
        assert "theirs.gguf" in str(err.value) and "without same_as_converter" in str(err.value)


def test_a_server_running_another_base_model_is_refused(llama_server, tmp_path):
    other = tmp_path / "other-model.gguf"
    other.symlink_to(embedded_gguf_path())
    refused = pytest.raises(LlamaCppError, match=r"runs other-model\.gguf, not this backend's base model")
    with start_server(llama_server, other, [], **QUICK) as running, refused:
        LlamaCppBackend(running.url)


def test_several_slots_are_refused_for_alora_adapters(trained_adapter, llama_server, tmp_path):
    """llama.cpp@0c1e57098 batches slots with the wrong adapter scales (llamacpp.PARALLEL_ALORA_BUG):
    `serve` refuses --parallel > 1 for aLoRA adapters, and the backend a server with several slots."""
    from validora.errors import ConfigError

    with pytest.raises(ConfigError, match="parallel 2 is refused for aLoRA adapters") as err:
        serve([trained_adapter], parallel=2)
    assert err.value.option == "parallel"
    ours = export_gguf(trained_adapter, tmp_path / "ours.gguf")
    with start_server(llama_server, embedded_gguf_path(), [ours], parallel=2, **QUICK) as running:
        with pytest.raises(LlamaCppError, match="runs 2 parallel slots"):
            LlamaCppBackend(running.url).add_adapter(CustomIntrinsicAdapter(model_id=str(trained_adapter)))
        unsafe = LlamaCppBackend(running.url, unsafe_parallel_alora=True)  # the benchmark's way to show it
        unsafe.add_adapter(CustomIntrinsicAdapter(model_id=str(trained_adapter)))
        assert unsafe.adapter_labels()
