"""Fuzzing (issue 20, item 9): damaged adapter files and hostile inputs to the readers.

Every case must end in a `ValidoraError` with a message that names the file (or field) at fault, or in
the right result: for an adapter, the unmutated adapter's verdict on the same texts (same labels,
probabilities within 1e-6); for a reader, what the input says. Never another exception, never a hang
(each case runs under a 20-second alarm; a FIFO in place of a file is also unblocked by a watchdog that
opens its other end), never a different verdict or a NaN. The adapter cases attach each mutated copy to
one copy of the embedded model kept for this module and strip the LoRA layers off it afterwards, so a
case costs a load of the adapter's own files, not of the base model.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from validora.errors import ValidoraError

from . import fuzz_cases as fc
from .conftest import LABELS

TIMEOUT = 20  # seconds per case (an adapter case: at least 4 times the unmutated adapter's load and scoring)
TEXTS = [
    "Blue smoke from the exhaust and the oil level drops every week.",
    "The engine starts at once and idles smoothly; nothing to report.",
]
FUZZED = "fuzzed-adapter"  # the copy's directory name: an error message must name it or the file


class Hang(Exception):
    """A case ran past TIMEOUT."""


@contextlib.contextmanager
def deadline(seconds: int, directory: Path | None = None) -> Iterator[None]:
    """Raise Hang in the main thread after `seconds`; after that, keep opening the write end of every
    FIFO in `directory` so that a read blocked in native code (which retries on EINTR) sees end-of-file."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    done = threading.Event()

    def unblock() -> None:
        if done.wait(seconds) or directory is None:
            return
        while not done.is_set():
            for path in directory.iterdir():
                if stat.S_ISFIFO(path.lstat().st_mode):
                    with contextlib.suppress(OSError):
                        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.05)

    old = signal.signal(signal.SIGALRM, on_alarm)
    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        done.set()
        watchdog.join()


def check_refusal(exc: ValidoraError, useful: tuple[str, ...]) -> None:
    message = str(exc).strip()
    assert message, f"{type(exc).__name__} with an empty message"
    assert any(u in message for u in useful), f"{type(exc).__name__} names none of {useful}: {message}"


# ---------------------------------------------------------------- adapters


class Base:
    """The copy of the embedded model the adapter cases attach to (replaced if it cannot be cleaned)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.loaded = make()

    def clean(self) -> None:
        """Take every LoRA layer and PEFT wrapper a load (finished or not) left on the model off it."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        model = self.loaded.model
        for name, module in list(model.named_modules()):
            original = None
            if isinstance(module, BaseTunerLayer):
                original = module.get_base_layer()
            elif hasattr(module, "original_module"):  # modules_to_save and similar wrappers
                original = module.original_module
            if original is not None and name:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, original)
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(model):
                delattr(model, attr)
        if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            self.loaded = self.make()


def verdict(path: Path, base: Base) -> list[Any]:
    from validora.backends.validator import load_validator

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validator = load_validator(path, loaded=base.loaded)
            return validator.predict(TEXTS)
    finally:
        base.clean()


@pytest.fixture(scope="module")
def fuzz_base(fresh_model) -> Base:
    return Base(fresh_model)


@dataclass(frozen=True)
class Reference:
    verdict: list[Any]
    timeout: int  # seconds a case may take: a loaded machine scores slower


@pytest.fixture(scope="module")
def reference(trained_adapter, fuzz_base, tmp_path_factory) -> Reference:
    copy = tmp_path_factory.mktemp("fuzz-ref") / FUZZED
    shutil.copytree(trained_adapter, copy)
    first = verdict(copy, fuzz_base)
    start = time.monotonic()
    again = verdict(copy, fuzz_base)  # the harness itself leaves the model as it found it
    same_verdict(again, first)
    return Reference(first, max(TIMEOUT, math.ceil(4 * (time.monotonic() - start))))


def same_verdict(got: list[Any], want: list[Any], changes: bool = False) -> None:
    """The same verdicts (`changes`: only finite probabilities over the same labels)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert all(math.isfinite(p) for p in g.probs.values()), f"non-finite probabilities {g.probs}"
        assert set(g.probs) == set(w.probs), f"labels {list(g.probs)} instead of {list(w.probs)}"
        if changes:
            continue
        assert g.label == w.label, f"verdict {g} instead of {w}"
        worst = max(abs(g.probs[k] - w.probs[k]) for k in w.probs)
        assert worst <= 1e-6, f"probabilities differ by {worst:.3g}: {g.probs} instead of {w.probs}"


ADAPTER_CASES = fc.adapter_cases()


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=[c.id for c in ADAPTER_CASES])
def test_fuzz_adapter(case: fc.AdapterCase, trained_adapter, fuzz_base, reference, tmp_path) -> None:
    if case.id.startswith("fs:"):  # files for its symlinks to point at
        shutil.copytree(trained_adapter, tmp_path / "outside" / "copy")
        (tmp_path / "outside" / "junk").write_text("not an adapter file\n")
    path = tmp_path / FUZZED
    shutil.copytree(trained_adapter, path)
    case.mutate(path)
    try:
        with deadline(reference.timeout, path):
            got = verdict(path, fuzz_base)
    except ValidoraError as exc:
        check_refusal(exc, (FUZZED, fc.INFO, fc.CONFIG, fc.WEIGHTS, fc.LEXICAL))
        return
    if case.changes:
        assert all(abs(sum(g.probs.values()) - 1) < 1e-4 for g in got), f"probabilities {got}"
    same_verdict(got, reference.verdict, case.changes)


# ---------------------------------------------------------------- readers

REFUSE = fc.REFUSE


@dataclass(frozen=True)
class InputCase:
    id: str
    run: Callable[[Path], Any]  # given a scratch folder, the reader's result
    expect: tuple  # every acceptable outcome: a result, or REFUSE (a ValidoraError)
    useful: tuple[str, ...] = ("input",)  # a refusal's message must name one of these


def _rows(examples: Any, labeled: bool) -> list[tuple]:
    return [(e.item, e.label) if labeled else (e.item,) for e in examples]


def _load_jsonl(d: Path, raw: bytes) -> Any:
    from validora.core.data import load_jsonl

    (d / "input.jsonl").write_bytes(raw)
    return _rows(load_jsonl(d / "input.jsonl"), True)


def _load_texts(d: Path, raw: bytes, name: str) -> Any:
    from validora.core.data import load_texts

    (d / name).write_bytes(raw)
    return _rows(load_texts(d / name), False)


def _stdin(d: Path, raw: bytes) -> Any:
    from validora.core.data import load_texts

    return _rows(load_texts("-", raw), False)


def _batch(d: Path, raw: bytes, name: str) -> Any:
    """The texts batch prediction would score, in order (planned and streamed; no model needed)."""
    from validora.programs.batch import plan_batch

    (d / name).write_bytes(raw)
    (d / "adapter").mkdir(exist_ok=True)
    job = plan_batch(d / name, d / "out.jsonl", adapter=d / "adapter")
    try:
        return _rows(job.remaining, False)
    finally:
        job.close()


def _outcomes(rows: Any, may_refuse: bool) -> tuple:
    return (rows, REFUSE) if may_refuse and rows is not REFUSE else (rows,)


def reader_cases() -> list[InputCase]:
    cases: list[InputCase] = []
    for c in fc.reader_contents():
        labeled = c.rows if c.labeled else REFUSE
        jsonl = c.rows if c.rows is REFUSE else [(item,) for item, _ in c.rows]
        lines = fc.text_lines(c.raw)
        text = REFUSE if lines is None else [(t,) for t in lines]
        loose = c.may_refuse or lines is None  # plain text: may it be refused?
        cases += [
            InputCase(f"train-jsonl:{c.id}", partial(_load_jsonl, raw=c.raw), _outcomes(labeled, c.may_refuse)),
            InputCase(f"predict-jsonl:{c.id}", partial(_load_texts, raw=c.raw, name="input.jsonl"),
                      _outcomes(jsonl, c.may_refuse)),
            InputCase(f"predict-text:{c.id}", partial(_load_texts, raw=c.raw, name="input.txt"), _outcomes(text, loose)),
            InputCase(f"predict-stdin:{c.id}", partial(_stdin, raw=c.raw), (jsonl, *_outcomes(text, loose)), ("stdin",)),
            InputCase(f"batch-jsonl:{c.id}", partial(_batch, raw=c.raw, name="input.jsonl"), _outcomes(jsonl, c.may_refuse)),
            InputCase(f"batch-text:{c.id}", partial(_batch, raw=c.raw, name="input.txt"), _outcomes(text, loose)),
        ]  # fmt: skip
    useful = ("accept=", "reject=", "requirement", "description", "label", "must")
    for desc in fc.descriptions():
        expect = tuple(e if e is REFUSE else set(e) for e in desc.expect)
        cases += [
            InputCase(f"grammar:{desc.id}", partial(_read_description, text=desc.text), expect, useful),
            InputCase(f"passing_labels:{desc.id}", partial(_passing_labels, text=desc.text), expect, useful),
        ]
    return cases


def _read_description(d: Path, text: str) -> Any:
    from validora.programs.grammar import read_description

    return read_description(text, LABELS)


def _passing_labels(d: Path, text: str) -> Any:
    from validora.programs.requirements import req

    return req(text).passing_labels(LABELS)


READER_CASES = reader_cases()


@pytest.mark.parametrize("case", READER_CASES, ids=[c.id for c in READER_CASES])
def test_fuzz_reader(case: InputCase, tmp_path) -> None:
    try:
        with deadline(TIMEOUT, tmp_path), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = case.run(tmp_path)
    except ValidoraError as exc:
        assert REFUSE in case.expect, f"refused an input it must read: {exc}"
        check_refusal(exc, case.useful)
        return
    results = [e for e in case.expect if e is not REFUSE]
    assert results, f"read an input it must refuse, as {_short(got)}"
    assert got in results, f"read {_short(got)}; wanted one of {_short(results)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."
