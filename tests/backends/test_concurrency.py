"""Fault injection: checks run while other threads add and remove adapters (issue 9).

Every call either completes with exactly the single-threaded result or, when it names an adapter
that is not there at that moment, fails with a clear error; nothing else ever escapes.
"""

import json
import shutil
import threading
import time

from validora import CustomIntrinsicAdapter, LocalHFBackend, Session, req
from validora.backends.huggingface import Generation
from validora.errors import AdapterError, RequirementError
from validora.score.checks import CheckResult

NOTE = "High vibration at 3100 RPM, connecting rod suspected."
SEED_REQ = "The failure mode must not be 'no_failure'."
MESSAGES = [{"role": "user", "content": "Name one engine part."}]
TOGGLE_SECONDS = 6.0


def clear_refusal(exc: BaseException) -> bool:
    """The only errors allowed: the named adapter is not (or no longer) added."""
    if isinstance(exc, AdapterError):
        return "No adapter named" in str(exc)
    return isinstance(exc, RequirementError) and "is not added to the backend" in str(exc)


def in_thread(fn):
    """Run fn in a worker thread (torch's intra-op pool differs between the main thread and others)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def outcome(result) -> str | list[dict[str, float]]:
    """A generation's text, or each check's label probabilities."""
    if isinstance(result, Generation):
        return result.text
    return [r.scores.probs if isinstance(r, CheckResult) else r.probs for r in result]


def same(got, expected) -> bool:
    if isinstance(expected, str):
        return got == expected
    return len(got) == len(expected) and all(
        g.keys() == e.keys() and all(abs(g[k] - e[k]) <= 1e-4 for k in e)
        for g, e in zip(got, expected, strict=True)
    )


def test_checks_while_adapters_are_added_and_removed(trained_adapter, tmp_path):
    second_dir = shutil.copytree(trained_adapter, tmp_path / "second")
    info = json.loads((second_dir / "validora.json").read_text())
    (second_dir / "validora.json").write_text(json.dumps({**info, "requirements": True}))
    engine = CustomIntrinsicAdapter(model_id=str(trained_adapter))
    second = CustomIntrinsicAdapter(model_id=str(second_dir))
    b = LocalHFBackend(device="cpu")
    b.add_adapter(engine)
    b.add_adapter(second)
    jobs = {
        "engine+judge": lambda: b.check(NOTE, [("engine", SEED_REQ), (None, "Mentions RPM.")]),
        "both": lambda: b.check(NOTE, [("engine", SEED_REQ), ("second", "Must be 'connecting_rod'.")]),
        "judge": lambda: b.check(NOTE, [(None, "Mentions a rod.")]),
        "session": lambda: Session(b).validate([req(SEED_REQ, adapter="second")], output=NOTE),
        "generate": lambda: b.generate(MESSAGES, {"max_new_tokens": 6}),
    }
    expected = {name: in_thread(lambda job=job: outcome(job())) for name, job in jobs.items()}
    done: dict[str, int] = dict.fromkeys(jobs, 0)
    refused: dict[str, int] = dict.fromkeys(jobs, 0)
    failures: list[str] = []
    stop = threading.Event()

    def checker(order: list[str]) -> None:
        for i in range(500):  # bounded; normally ended by `stop`
            if stop.is_set():
                return
            name = order[i % len(order)]
            try:
                got = outcome(jobs[name]())
            except Exception as exc:
                if clear_refusal(exc):
                    refused[name] += 1
                else:
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if same(got, expected[name]):
                done[name] += 1
            else:
                failures.append(f"{name}: {got} != {expected[name]}")

    def toggler() -> None:
        deadline = time.monotonic() + TOGGLE_SECONDS
        try:
            for _ in range(50):  # {engine, second} -> {second} -> {} -> {engine} -> {engine, second}
                # At least TOGGLE_SECONDS, and on a slow machine until every kind of job has completed.
                if time.monotonic() > deadline and all(done[name] + refused[name] for name in jobs):
                    break
                b.remove_adapter("engine")
                b.remove_adapter("second")
                b.add_adapter(engine)
                b.add_adapter(second)
        except Exception as exc:
            failures.append(f"toggler: {type(exc).__name__}: {exc}")
        finally:
            stop.set()

    names = list(jobs)
    threads = [
        threading.Thread(target=checker, args=(names,)),
        threading.Thread(target=checker, args=(names[::-1],)),
        threading.Thread(target=toggler),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert done["judge"] and done["generate"], done
    assert sum(done.values()) + sum(refused.values()) >= len(jobs), (done, refused)
    assert set(b.adapters) == {"engine", "second"}
    assert same(in_thread(lambda: outcome(jobs["both"]())), expected["both"])
