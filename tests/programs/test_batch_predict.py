"""Batch validation to a file (`predict --output`): order, resume after interruption, refusals; in-process
and through a real llama-server (`--server`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from validora.cli import app
from validora.errors import ConfigError, DataError
from validora.programs.batch import meta_path, plan_batch, predict_file
from validora.programs.engines import ServerScorer

from ..conftest import EXAMPLES, ROOT, write_jsonl

runner = CliRunner()
NOTES = [
    {"item": "rod knock at 3100 rpm, loud under load"},
    {"item": "blue smoke on start, oil consumption high"},
    {"item": "idle surges, carburetor float sticks", "requirement": "Name the failure."},
    {"item": "new air filter, runs fine"},
    {"item": "compression low on cylinder two"},
]


@pytest.fixture(scope="module")
def validator(trained_adapter: Path):
    from validora.backends.validator import load_validator

    return load_validator(trained_adapter, device="cpu")


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = write_jsonl(tmp_path / "notes.jsonl", NOTES)
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # a blank line 2: line numbers skip it
    return path


class Counting:
    """The real validator's predict, recording what it scored; optionally interrupted after `stop_after` calls."""

    def __init__(self, validator, stop_after: int | None = None):
        self.validator, self.stop_after, self.calls = validator, stop_after, []

    def __call__(self, texts, reqs):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(list(texts))
        return self.validator.predict(texts, requirements=reqs, batch_size=2)


def run(validator, notes: Path, out: Path, score=None, **kw):
    score = score or Counting(validator)
    return predict_file(score, notes, out, adapter=validator.path, batch_size=2, **kw), score


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_results_are_in_input_order_and_equal_in_memory_predict(validator, notes: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    job = plan_batch(notes, out, adapter=validator.path, batch_size=2)
    assert not out.exists() and not meta_path(out).exists()  # checked, nothing written before the run
    seen, score = [], Counting(validator)
    result = job.run(score, progress=lambda d, t: seen.append((d, t)))
    assert (result.total, result.skipped, result.scored) == (5, 0, 5)
    assert [len(c) for c in score.calls] == [2, 2, 1] and seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    expected = validator.predict(
        [n["item"] for n in NOTES], requirements=[n.get("requirement") for n in NOTES], batch_size=2
    )
    got = rows(out)
    assert [r["line"] for r in got] == [1, 3, 4, 5, 6]
    assert [r["item"] for r in got] == [n["item"] for n in NOTES]
    assert [r["label"] for r in got] == [e.label for e in expected]
    for r, e in zip(got, expected, strict=True):
        assert r["probs"] == pytest.approx(e.probs, abs=1e-5)
    assert json.loads(meta_path(out).read_text())["items"] == 5


def test_an_interrupted_run_resumes_to_the_same_file_scoring_only_the_rest(
    validator, notes: Path, tmp_path: Path
):
    whole = tmp_path / "whole.jsonl"
    run(validator, notes, whole)
    out = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(validator, notes, out, Counting(validator, stop_after=1))
    assert [r["line"] for r in rows(out)] == [1, 3]  # the first batch is on disk, whole lines only
    result, score = run(validator, notes, out)
    assert (result.skipped, result.scored, result.dropped_partial) == (2, 3, False)
    assert score.calls == [[NOTES[2]["item"], NOTES[3]["item"]], [NOTES[4]["item"]]]
    assert out.read_bytes() == whole.read_bytes()
    again, score = run(validator, notes, out)  # finished: nothing left to score
    assert (again.skipped, again.scored, score.calls) == (5, 0, [])
    assert out.read_bytes() == whole.read_bytes()


def test_a_partial_last_line_is_dropped_and_rescored(validator, notes: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    run(validator, notes, out)
    whole = out.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(whole[: last + 20])  # killed in the middle of writing the last line
    result, score = run(validator, notes, out)
    assert result.dropped_partial and (result.skipped, result.scored) == (4, 1)
    assert score.calls == [[NOTES[4]["item"]]]
    assert out.read_bytes() == whole


def test_another_input_or_adapter_is_refused_and_nothing_changes(
    validator, notes: Path, tmp_path: Path, trained_adapter: Path
):
    out = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(validator, notes, out, Counting(validator, stop_after=1))
    before, meta_before = out.read_bytes(), meta_path(out).read_bytes()
    other = write_jsonl(tmp_path / "other.jsonl", NOTES[::-1])
    with pytest.raises(ConfigError, match="holds results for a different input") as exc:
        run(validator, other, out)
    assert exc.value.exit_code == 2 and "overwrite=True" in str(exc.value)
    recalibrated = tmp_path / "recalibrated"
    shutil.copytree(trained_adapter, recalibrated)
    info = json.loads((recalibrated / "validora.json").read_text())
    info["temperature"] = 2.5
    (recalibrated / "validora.json").write_text(json.dumps(info))
    score = Counting(validator)
    with pytest.raises(ConfigError, match="different adapter"):
        predict_file(score, notes, out, adapter=recalibrated, batch_size=2)
    with pytest.raises(ConfigError, match="different requirement"):
        run(validator, notes, out, requirement="Name the failure.")
    assert (out.read_bytes(), meta_path(out).read_bytes(), score.calls) == (before, meta_before, [])
    mine = tmp_path / "mine.jsonl"  # a file the user wrote: never replaced unless asked
    mine.write_text("my notes\n")
    with pytest.raises(ConfigError, match="cannot be resumed"):
        run(validator, notes, mine)
    assert mine.read_text() == "my notes\n" and not meta_path(mine).exists()
    with pytest.raises(ConfigError, match="is the input file"):
        run(validator, notes, notes, overwrite=True)


def test_cli_output_resumes_refuses_and_overwrites(trained_adapter: Path, notes: Path, tmp_path: Path):
    out = tmp_path / "results.jsonl"
    cmd = ["alora", "predict", str(trained_adapter), "--file", str(notes), "--batch-size", "2"]
    first = runner.invoke(app, [*cmd, "--output", str(out), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and "5 results in" in first.stderr
    assert [r["line"] for r in rows(out)] == [1, 3, 4, 5, 6]
    done = out.read_bytes()
    again = runner.invoke(app, [*cmd, "--output", str(out)])
    assert again.exit_code == 0 and "5 were already there" in again.stderr
    model = runner.invoke(app, [*cmd, "--output", str(out), "--basemodel", "no/such-model"])
    assert model.exit_code == 2 and "other settings" in model.stderr  # refused before loading any model
    other = write_jsonl(tmp_path / "other.jsonl", NOTES[:2])
    cmd[4] = str(other)
    refused = runner.invoke(app, [*cmd, "--output", str(out)])
    assert refused.exit_code == 2 and "--output" in refused.stderr and "different input" in refused.stderr
    assert out.read_bytes() == done
    redone = runner.invoke(app, [*cmd, "--output", str(out), "--overwrite"])
    assert redone.exit_code == 0, redone.output
    assert [r["item"] for r in rows(out)] == [n["item"] for n in NOTES[:2]]
    alone = runner.invoke(app, ["alora", "predict", str(trained_adapter), "x", "--output", str(out)])
    assert alone.exit_code == 2 and "--file" in alone.stderr
    stray = runner.invoke(app, ["alora", "predict", str(trained_adapter), "x", "--overwrite"])
    assert stray.exit_code == 2 and "--overwrite goes with --output" in stray.stderr


def test_cli_output_reads_stdin_and_resumes_it(trained_adapter: Path, tmp_path: Path):
    out, text = tmp_path / "results.jsonl", "blue smoke\n\nrod knock\nidle surges\n"
    cmd = ["alora", "predict", str(trained_adapter), "--file", "-", "--output", str(out), "--batch-size", "2"]
    assert runner.invoke(app, cmd, input=text).exit_code == 0
    assert [(r["line"], r["item"]) for r in rows(out)] == [
        (1, "blue smoke"),
        (3, "rod knock"),
        (4, "idle surges"),
    ]
    assert "3 were already there" in runner.invoke(app, cmd, input=text).stderr
    changed = runner.invoke(app, cmd, input=text + "valve tick\n")
    assert changed.exit_code == 2 and "different input" in changed.stderr and len(rows(out)) == 3


def test_sigterm_leaves_whole_lines_and_the_rerun_finishes(trained_adapter: Path, tmp_path: Path):
    big = EXAMPLES / "engine_failures_test.jsonl"
    total = len(big.read_text().splitlines())
    out = tmp_path / "results.jsonl"
    cmd = ["alora", "predict", str(trained_adapter), "--file", str(big), "--output", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "validora.cli", *cmd, "--batch-size", "1", "--device", "cpu"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted." in err and "run the same command again to resume" in err
    kept = out.read_bytes()
    assert kept.endswith(b"\n") and 2 <= len(rows(out)) < total
    resumed = runner.invoke(app, [*cmd, "--batch-size", "8"])  # the batch size may change on resume
    assert resumed.exit_code == 0, resumed.output
    assert (
        f"{total} results in" in resumed.stderr
        and f"({len(kept.splitlines())} were already" in resumed.stderr
    )
    assert out.read_bytes().startswith(kept) and [r["line"] for r in rows(out)] == list(range(1, total + 1))


def test_bad_input_lines_are_named_and_nothing_is_written(validator, tmp_path: Path, trained_adapter: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item": "fine"}\n\n{"item": "broken"\n{"text": "no item"}\n')
    out = tmp_path / "results.jsonl"
    with pytest.raises(DataError) as exc:
        run(validator, bad, out)
    assert [p.line for p in exc.value.problems] == [3, 4] and "invalid JSON" in str(exc.value)
    assert not out.exists() and not meta_path(out).exists()
    result = runner.invoke(
        app, ["alora", "predict", str(trained_adapter), "--file", str(bad), "--output", str(out)]
    )
    assert result.exit_code == 2 and "bad.jsonl:3: invalid JSON" in result.stderr


# ----- --server: the same rows computed by a real llama-server ---------------------------------------


@pytest.fixture(scope="module")
def served(trained_adapter: Path, llama_server):
    """The trained adapter on a real llama-server (one slot: --concurrency 2 then queues on the server;
    several slots give aLoRA checks wrong labels, see llamacpp.PARALLEL_ALORA_BUG)."""
    from validora.llamacpp.serving import serve

    with serve([trained_adapter], threads=1, ctx_size=1024) as serving:
        yield serving


@pytest.fixture
def keep_sigterm():
    """The CLI turns SIGTERM into KeyboardInterrupt for the rest of the process; give pytest its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def in_process_expected(validator) -> list:
    """In-process scores of NOTES as the server computes them: an adapter trained without requirement
    texts sees the text alone (as in programs; the server, like `LocalHFBackend.check`, drops them)."""
    reqs = [n.get("requirement") if validator.info.requirements else None for n in NOTES]
    return validator.predict([n["item"] for n in NOTES], requirements=reqs, batch_size=2)


def assert_like_in_process(got: list[dict], expected: list, tol: float = 0.05) -> None:
    assert [r["line"] for r in got] == [1, 3, 4, 5, 6]
    assert [r["item"] for r in got] == [n["item"] for n in NOTES]
    assert [r["label"] for r in got] == [e.label for e in expected]
    for r, e in zip(got, expected, strict=True):
        assert r["probs"] == pytest.approx(e.probs, abs=tol)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_rows_equal_in_process_in_input_order_also_concurrently(
    validator, served, notes: Path, trained_adapter: Path, tmp_path: Path
):
    expected = in_process_expected(validator)
    out, fast = tmp_path / "server.jsonl", tmp_path / "concurrent.jsonl"
    with (
        ServerScorer(served.url, trained_adapter) as score,
        pytest.warns(UserWarning, match="trained without requirement texts") as said,
    ):
        result = predict_file(score, notes, out, adapter=trained_adapter, batch_size=2, engine="llama-server")
    assert len(said) == 1  # NOTES' one requirement is ignored for this classifier, and it is said once
    assert (result.total, result.scored) == (5, 5)
    assert json.loads(meta_path(out).read_text())["engine"] == "llama-server"
    assert_like_in_process(rows(out), expected)
    with (
        ServerScorer(served.url, trained_adapter, concurrency=2) as score,  # 2 requests at once
        pytest.warns(UserWarning, match="requirement"),
    ):
        predict_file(score, notes, fast, adapter=trained_adapter, batch_size=5, engine="llama-server")
    assert_like_in_process(rows(fast), expected)
    for one, two in zip(rows(out), rows(fast), strict=True):  # the slots batch together: ~1e-3 apart
        assert two["probs"] == pytest.approx(one["probs"], abs=0.01)
    two = [NOTES[0]["item"], NOTES[1]["item"]]  # the plain path: texts as arguments, scored by the server
    texts = runner.invoke(
        app, ["alora", "predict", str(trained_adapter), *two, "--server", served.url, "--jsonl"]
    )
    assert texts.exit_code == 0, texts.output
    printed = [json.loads(line) for line in texts.stdout.splitlines()]
    assert [p["label"] for p in printed] == [e.label for e in expected[:2]]


def test_server_dying_mid_run_keeps_finished_lines_and_another_server_resumes(
    validator, served, notes: Path, trained_adapter: Path, tmp_path: Path, monkeypatch, keep_sigterm
):
    from validora.llamacpp.serving import serve

    dying = serve([trained_adapter], threads=1, ctx_size=1024)
    real = ServerScorer.__call__

    def first_batch_then_server_dies(self, texts, reqs):
        results = real(self, texts, reqs)
        dying.stop()  # after the first batch is scored, before it is written
        return results

    monkeypatch.setattr(ServerScorer, "__call__", first_batch_then_server_dies)
    out = tmp_path / "results.jsonl"
    cmd = ["alora", "predict", str(trained_adapter), "--file", str(notes), "--output", str(out)]
    cmd += ["--batch-size", "2"]
    try:
        died = runner.invoke(app, [*cmd, "--server", dying.url])
    finally:
        dying.stop()
    monkeypatch.undo()
    assert died.exit_code == 1, died.output
    assert "connection refused" in died.stderr and "2 of 5 results are in" in died.stderr
    assert "run the same command" in died.stderr
    assert [r["line"] for r in rows(out)] == [1, 3] and out.read_bytes().endswith(b"\n")
    resumed = runner.invoke(app, [*cmd, "--server", served.url])  # another port: the same adapter
    assert resumed.exit_code == 0, resumed.output
    assert "5 results in" in resumed.stderr and "(2 were already there)" in resumed.stderr
    assert_like_in_process(rows(out), in_process_expected(validator))


def test_server_errors_and_engine_switches_are_refused_before_any_line_is_written(
    validator, served, notes: Path, trained_adapter: Path, tmp_path: Path, keep_sigterm
):
    class StopAfterFirst:
        def __init__(self, score):
            self.score, self.calls = score, 0

        def __call__(self, texts, reqs):
            if self.calls:
                raise KeyboardInterrupt
            self.calls += 1
            return self.score(texts, reqs)

    on_server, here = tmp_path / "server.jsonl", tmp_path / "here.jsonl"
    with pytest.raises(KeyboardInterrupt), ServerScorer(served.url, trained_adapter) as score:
        predict_file(
            StopAfterFirst(score), notes, on_server, adapter=trained_adapter, batch_size=2,
            engine="llama-server",
        )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(validator, notes, here, Counting(validator, stop_after=1))
    files = [on_server, meta_path(on_server), here, meta_path(here)]
    before = [f.read_bytes() for f in files]
    base = ["alora", "predict", str(trained_adapter), "--file", str(notes), "--batch-size", "2"]

    nobody = f"http://127.0.0.1:{free_port()}"
    refused = runner.invoke(app, [*base, "--output", str(on_server), "--server", nobody])
    assert refused.exit_code == 1 and "No llama-server answers" in refused.stderr, refused.output
    assert "connection refused" in refused.stderr and nobody in refused.stderr

    switched = runner.invoke(app, [*base, "--output", str(on_server)])  # refused before the model loads
    assert switched.exit_code == 2 and "scored by llama-server (--server)" in switched.stderr
    assert "this run scores in-process" in switched.stderr and "--overwrite" in switched.stderr
    meta = json.loads(meta_path(here).read_text())
    del meta["engine"]  # a sidecar written before --server existed: in-process
    meta_path(here).write_text(json.dumps(meta))
    before[3] = meta_path(here).read_bytes()
    switched = runner.invoke(app, [*base, "--output", str(here), "--server", served.url])
    assert switched.exit_code == 2 and "scored in-process (without --server)" in switched.stderr
    assert "this run scores by llama-server" in switched.stderr
    assert [f.read_bytes() for f in files] == before  # nothing touched by any of these

    other = tmp_path / "other"  # a recalibrated copy: another adapter, which the server does not serve
    shutil.copytree(trained_adapter, other)
    info = json.loads((other / "validora.json").read_text())
    (other / "validora.json").write_text(json.dumps({**info, "temperature": 2.5}))
    fresh = tmp_path / "fresh.jsonl"
    cmd = ["alora", "predict", str(other), "--file", str(notes), "--output", str(fresh)]
    missing = runner.invoke(app, [*cmd, "--server", served.url])
    assert missing.exit_code == 1 and "does not serve adapter" in missing.stderr, missing.output
    assert not fresh.exists() and not meta_path(fresh).exists()

    for flags, says in (
        (["--server", "127.0.0.1:8080"], "--server must be a URL"),
        (["--concurrency", "2"], "--concurrency goes with --server"),
        (["--server", served.url, "--device", "cpu"], "--device"),
        (["--server", served.url, "--concurrency", "0"], "--concurrency"),
    ):
        bad = runner.invoke(app, [*cmd, *flags])
        assert bad.exit_code == 2 and says in bad.stderr, (flags, bad.output)
    assert not fresh.exists() and not meta_path(fresh).exists()


def test_a_second_run_on_the_same_output_is_refused_at_once_and_the_first_is_intact(
    validator, notes: Path, tmp_path: Path
):
    from validora.programs.engines import Engine
    from validora.programs.output_lock import lock_path

    out = tmp_path / "results.jsonl"
    first = plan_batch(notes, out, adapter=validator.path, batch_size=2)
    for overwrite in (False, True):  # not even overwrite=True takes the file from a live run
        with pytest.raises(ConfigError, match="being written by another validora run") as exc:
            plan_batch(notes, out, adapter=validator.path, batch_size=2, overwrite=overwrite)
        assert exc.value.exit_code == 2
    result = first.run(Counting(validator))
    assert result.scored == 5 and [r["line"] for r in rows(out)] == [1, 3, 4, 5, 6]  # each line once
    assert not lock_path(out).exists()  # released and removed with the run
    again, score = run(validator, notes, out)  # the next run is free again: nothing left to score
    assert (again.skipped, score.calls) == (5, [])
    # The CLI: a second `predict --output` exits 2 with the message while another run holds the file.
    job = Engine(str(validator.path), device="cpu").plan(
        notes, out, requirement=None, fmt="auto", overwrite=False, stdin=None
    )
    args = [
        "alora",
        "predict",
        str(validator.path),
        "--file",
        str(notes),
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--output" in result.stderr and "another validora run" in result.stderr
    job.close()
    assert len(rows(out)) == 5


def test_a_second_run_through_a_symlink_to_the_same_output_is_refused(
    trained_adapter: Path, notes: Path, tmp_path: Path
):
    from validora.programs.output_lock import lock_path

    out, alias = tmp_path / "out.jsonl", tmp_path / "alias.jsonl"
    alias.symlink_to(out.name)  # dangling until the first run writes: still the same file
    first = plan_batch(notes, out, adapter=trained_adapter, batch_size=2)
    try:
        with pytest.raises(ConfigError, match="being written by another validora run"):
            plan_batch(notes, alias, adapter=trained_adapter, batch_size=2)
        assert lock_path(alias) == lock_path(out)
    finally:
        first.close()
    plan_batch(notes, alias, adapter=trained_adapter, batch_size=2).close()  # free again once released


def test_a_lock_path_that_cannot_be_a_lock_file_is_refused_not_ignored(
    trained_adapter: Path, notes: Path, tmp_path: Path
):
    from validora.programs.output_lock import lock_path

    out = tmp_path / "out.jsonl"
    lock_path(out).mkdir()  # a directory where the lock file goes: two runs would both write
    with pytest.raises(ConfigError, match="lock file") as exc:
        plan_batch(notes, out, adapter=trained_adapter, batch_size=2)
    assert str(lock_path(out)) in str(exc.value) and "remove" in str(exc.value)
    assert exc.value.option == "output" and not out.exists()


def test_a_read_only_output_directory_goes_on_without_a_lock(tmp_path: Path, monkeypatch):
    from validora.programs import output_lock

    out = tmp_path / "out.jsonl"
    real_open = os.open

    def read_only(path, flags, *rest):  # as in a read-only directory (root writes into one anyway)
        if Path(path) == output_lock.lock_path(out):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *rest)

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path.resolve())
    assert output_lock.hold(out) == -1  # the write then fails with its own message
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: True)  # writable: the failure is refused
    with pytest.raises(ConfigError, match="Permission denied"):
        output_lock.hold(out)


def test_the_sidecar_records_device_and_dtype_and_refuses_to_mix_them(validator, notes: Path, tmp_path: Path):
    from validora.programs.engines import Engine

    out = tmp_path / "results.jsonl"
    job = Engine(str(validator.path), device="cpu", batch_size=2).plan(
        notes, out, requirement=None, fmt="auto", overwrite=False, stdin=None
    )
    assert (job.meta["device"], job.meta["dtype"]) == ("cpu", "float32")
    with pytest.raises(KeyboardInterrupt):
        job.run(Counting(validator, stop_after=1))
    before = out.read_bytes()
    with pytest.raises(
        ConfigError, match="scored on cpu in float32, and this run scores on cuda in bfloat16"
    ):
        plan_batch(notes, out, adapter=validator.path, batch_size=2, device="cuda", dtype="bfloat16")
    assert out.read_bytes() == before
    meta = json.loads(meta_path(out).read_text())
    del meta["device"], meta["dtype"]  # a sidecar written before they were recorded: accepted
    meta_path(out).write_text(json.dumps(meta))
    result, _ = run(validator, notes, out, device="cuda", dtype="bfloat16")
    assert (result.skipped, result.scored) == (2, 3)


def test_a_lone_surrogate_in_the_input_is_refused_with_its_line_before_anything_is_written(
    validator, tmp_path: Path
):
    source = tmp_path / "notes.jsonl"
    source.write_text('{"item": "fine"}\n{"item": "bad \\ud800 text"}\n', encoding="utf-8")
    out = tmp_path / "results.jsonl"
    with pytest.raises(DataError) as exc:
        plan_batch(source, out, adapter=validator.path, batch_size=2)
    assert [p.line for p in exc.value.problems] == [2] and "lone surrogate" in str(exc.value)
    assert not out.exists() and not meta_path(out).exists()


def test_texts_cut_to_max_length_are_counted_and_warned_about(trained_adapter: Path):
    from validora.programs.engines import Engine

    long = "rod knock " * 1200
    with pytest.warns(UserWarning, match=r"1 of 2 text\(s\) were longer than max_length \d+ tokens"):
        Engine(str(trained_adapter), device="cpu").predict([long, "runs fine"], [None, None])


def test_an_adapter_saved_over_between_planning_and_loading_is_refused(
    trained_adapter: Path, notes: Path, tmp_path: Path
):
    """The job records the adapter's digest before the model loads; the model loaded must hold that
    adapter, or the results file would say one adapter and hold another's verdicts."""
    from validora.errors import AdapterError
    from validora.programs.engines import Engine

    adapter = tmp_path / "adapter"
    shutil.copytree(trained_adapter, adapter)
    engine = Engine(str(adapter), device="cpu", allow_base_mismatch=True)
    out = tmp_path / "results.jsonl"
    job = engine.plan(notes, out, requirement=None, fmt="auto", overwrite=False, stdin=None)
    assert job.meta["settings"] == {"allow_base_mismatch": True}  # a choice that changes verdicts is recorded
    info = json.loads((adapter / "validora.json").read_text())
    info["temperature"] = info["temperature"] * 1.5  # another save: same shape, other verdicts
    (adapter / "validora.json").write_text(json.dumps(info))
    try:
        with (
            pytest.raises(AdapterError, match="changed between reading the input and loading it"),
            engine.open(job.meta["adapter_sha256"]),
        ):
            pass
    finally:
        job.close()
    assert not out.exists()
