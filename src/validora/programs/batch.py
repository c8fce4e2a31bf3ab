"""Batch validation to a JSONL file: streamed input, results flushed batch by batch, resumable.

Why a sidecar: the results file stays pure JSONL (one object per input line, `line` first), and
`<output>.meta.json` records what produced it (input digest, adapter digest, settings, engine). A rerun
that matches scores only the lines still missing; one that does not is refused before anything is touched.

The engine is "in-process" (the PyTorch model, fp32) or "llama-server" (`ServerScorer`, Q4_1 arithmetic):
their probabilities differ slightly, so one file never mixes them. Which server does not matter (a
server moved to another port serves the same adapter, found by its digest), only which engine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from validora.adapter.layouts import adapter_digest
from validora.backends.validator import check_batch_size
from validora.core import files
from validora.core.data import Example, resolve_format, scan_input, stream_texts
from validora.core.jsonio import parse_json
from validora.errors import ConfigError, DataError, LineProblem
from validora.programs.output_lock import hold, let_go
from validora.score.readout import LabelScores

META_VERSION = 1
# What must be equal for a rerun to append to earlier results (paths may differ: the content decides).
MATCHED = ("input_sha256", "items", "format", "requirement", "adapter_sha256", "settings", "engine")
ENGINES = ("in-process", "llama-server")  # sidecars written before the server existed hold no engine
PRECISION = ("device", "dtype")  # in-process: must match where recorded (older sidecars hold neither)

Scorer = Callable[[Sequence[str], Sequence[str | None]], list[LabelScores]]


@dataclass(frozen=True)
class BatchRun:
    output: Path
    total: int  # items in the input
    skipped: int  # already in the output from an earlier run
    scored: int  # scored by this run
    dropped_partial: bool  # an incomplete last line (an interrupted write) was removed


def meta_path(output: str | Path) -> Path:
    """The sidecar that records which input, adapter and settings `output` holds results for."""
    output = Path(output)
    return output.with_name(output.name + ".meta.json")


def result_row(example: Example, scores: LabelScores) -> str:
    """One output line: the input line number, then what `predict --jsonl` prints."""
    row = {"line": example.line, "item": example.item, "label": scores.label, "probs": scores.probs}
    return json.dumps(row, ensure_ascii=False) + "\n"


def _read_meta(path: Path) -> dict[str, Any] | None:
    """The sidecar's record, or None when the file is not one of ours."""
    try:
        meta = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("validora_batch") == META_VERSION else None


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """Atomically: a crash leaves the old record or the new one, never half of one."""
    files.atomic_write_text(path, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def _mismatch(output: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Why `output` cannot be resumed by this run, in the user's terms (None: it can)."""
    for key in MATCHED:
        if _matched(old, key) == _matched(new, key):
            continue
        if key in ("input_sha256", "items", "format"):
            what = (
                f"a different input ({old.get('input')}, {old.get('items')} texts, sha256 "
                f"{str(old.get('input_sha256'))[:12]}; this run reads {new['input']}, {new['items']} texts, "
                f"sha256 {new['input_sha256'][:12]})"
            )
        elif key == "adapter_sha256":
            what = f"a different adapter ({old.get('adapter')}; this run uses {new['adapter']})"
        elif key == "engine":
            return (
                f"{output} holds results scored {_ENGINE_WORDS.get(_matched(old, key), '?')}, and this run "
                f"scores {_ENGINE_WORDS[new[key]]}; their probabilities differ slightly (Q4_1 weights in "
                "llama.cpp, fp32 in PyTorch), so one file does not mix them. Rerun with the engine the file "
                "was started with."
            )
        elif key == "settings":
            what = f"other settings ({old.get(key)}; this run has {new[key]})"
        else:
            what = f"a different {key} ({old.get(key)!r}; this run has {new[key]!r})"
        return f"{output} holds results for {what}."
    recorded = {key: old[key] for key in PRECISION if key in old}
    if recorded and recorded != {key: new.get(key) for key in recorded}:
        return (
            f"{output} holds results scored on {old.get('device')} in {old.get('dtype')}, and this run scores "
            f"on {new.get('device')} in {new.get('dtype')}; their probabilities differ slightly, so one file "
            "does not mix them. Rerun on the device the file was started on (device=...)."
        )
    return None


_ENGINE_WORDS = {
    "in-process": 'in-process (engine="in-process")',
    "llama-server": 'by llama-server (engine="llama-server")',
}


def _matched(meta: Mapping[str, Any], key: str) -> Any:
    return meta.get(key, "in-process") if key == "engine" else meta.get(key)


def _done_prefix(output: Path, examples: Iterator[Example]) -> tuple[int, int, bool]:
    """Check the output's complete lines against the input, in order: (lines done, bytes to keep, partial).

    Consumes from `examples` exactly the inputs already done, so scoring carries on from the next one.
    """
    done = keep = 0
    with output.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return done, keep, True  # killed mid-write: dropped, then written again
            expected = next(examples, None)
            try:
                row = parse_json(raw)
            except ValueError:
                row = None
            if expected is None or not isinstance(row, dict) or row.get("line") != expected.line:
                want = f"the result for input line {expected.line}" if expected else "no more lines"
                raise DataError(
                    f"{output} does not continue as this input: line {done + 1} should hold {want}. "
                    "Nothing was changed; use overwrite=True to start over.",
                    [LineProblem(output, done + 1, "unexpected line")],
                )
            if row.get("item") != expected.item:
                raise DataError(
                    f"{output} line {done + 1} holds a different text than input line {expected.line}. "
                    "Nothing was changed; use overwrite=True to start over."
                )
            done, keep = done + 1, keep + len(raw)
    return done, keep, False


def _batches(examples: Iterator[Example], size: int) -> Iterator[list[Example]]:
    batch: list[Example] = []
    for example in examples:
        batch.append(example)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class BatchJob:
    """A checked plan: what `output` already holds, and the input texts still to score (not yet read)."""

    output: Path
    meta: dict[str, Any]
    total: int
    skipped: int
    keep: int | None  # resume: bytes of `output` to keep (a partial last line is cut); None: start afresh
    partial: bool
    requirement: str | None
    batch_size: int
    remaining: Iterator[Example]
    lock: int | None = None  # the flock that keeps a second run off `output` until this job ends

    def close(self) -> None:
        """Let another run at `output` (`run` does this when it ends; so does the end of the process)."""
        let_go(self.output, self.lock)
        self.lock = None

    def __del__(self) -> None:
        self.close()

    def run(self, score: Scorer, progress: Callable[[int, int], None] | None = None) -> BatchRun:
        """Score the remaining texts, `batch_size` per call of `score(texts, requirements)`; each batch is
        written and flushed to disk before the next, so an interruption leaves whole lines (at worst one
        partial last line, which the next run cuts). `progress(done, total)`: before scoring, after each batch.
        """
        try:
            return self._run(score, progress)
        finally:
            self.close()

    def _run(self, score: Scorer, progress: Callable[[int, int], None] | None) -> BatchRun:
        if self.keep is None:
            _write_meta(meta_path(self.output), self.meta)
            self.output.write_bytes(b"")  # a new file, or the old one emptied because overwrite asked for it
        elif self.partial:
            os.truncate(self.output, self.keep)
        if progress:
            progress(self.skipped, self.total)
        done = self.skipped
        with self.output.open("ab") as f:
            for batch in _batches(self.remaining, self.batch_size):
                reqs = [e.requirement if e.requirement is not None else self.requirement for e in batch]
                results = score([e.item for e in batch], reqs)
                if len(results) != len(batch):
                    raise ConfigError(f"the scorer returned {len(results)} results for {len(batch)} texts.")
                rows = "".join(result_row(e, r) for e, r in zip(batch, results, strict=True))
                f.write(rows.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                done += len(batch)
                if progress:
                    progress(done, self.total)
        return BatchRun(self.output, self.total, self.skipped, done - self.skipped, self.partial)


def plan_batch(
    source: str | Path,
    output: str | Path,
    *,
    adapter: str | Path,
    settings: Mapping[str, Any] | None = None,
    requirement: str | None = None,
    fmt: str = "auto",
    batch_size: int = 8,
    overwrite: bool = False,
    stdin: bytes | None = None,
    engine: str = "in-process",
    device: str | None = None,
    dtype: str | None = None,
) -> BatchJob:
    """Check the input (every bad line reported) and what `output` holds, before any model is loaded.

    `adapter` (its directory) and `settings` (anything else that changes scores, e.g. a base-model
    override) are fingerprinted with the input's bytes; when `output` exists, its sidecar must match and
    its lines must be the results of the input's first texts, in order, or this raises without touching
    anything. `overwrite` starts afresh instead. `stdin` holds the bytes when `source` is "-". `engine`
    ("in-process" or "llama-server") says what will score it: a rerun must use the same one, and on the
    same `device` type and `dtype` where they were recorded ("cpu", "float32"). From here until the job
    runs or closes, another run at `output` is refused (a hidden lock file beside it). Nothing else is
    written until `BatchJob.run`.
    """
    check_batch_size(batch_size)
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}.", option="engine")
    is_stdin = str(source) == "-"
    name = "<stdin>" if is_stdin else str(source)
    if is_stdin:
        data: Path | bytes = stdin if stdin is not None else b""
    else:
        data = Path(source)
        if not data.is_file():
            raise ConfigError(f"file {source} does not exist or is not a file.", option="file")
    output = Path(output)
    if output.is_dir() or not output.parent.is_dir():
        raise ConfigError(f"output {output} must be a file in an existing directory.", option="output")
    if isinstance(data, Path) and output.exists() and output.samefile(data):
        raise ConfigError(f"output {output} is the input file; write the results elsewhere.", option="output")
    resolved = resolve_format(fmt, "-" if is_stdin else data, stdin or b"")
    jsonl = resolved == "jsonl"
    sha, total = scan_input(data, name, jsonl)
    meta = {
        "validora_batch": META_VERSION,
        "input": name,
        "input_sha256": sha,
        "items": total,
        "format": resolved,
        "requirement": requirement,
        "adapter": str(adapter),
        "adapter_sha256": adapter_digest(adapter),
        "settings": dict(settings or {}),
        "engine": engine,
        **{key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None},
    }
    examples = stream_texts(data, name, jsonl)
    job = BatchJob(output, meta, total, 0, None, False, requirement, batch_size, examples, hold(output))
    try:
        _resume(job, examples, overwrite)
    except BaseException:
        job.close()
        raise
    return job


def _resume(job: BatchJob, examples: Iterator[Example], overwrite: bool) -> None:
    """What `job.output` holds, checked against the new record: a fresh start, a resume, or a refusal."""
    output, meta, meta_file = job.output, job.meta, meta_path(job.output)
    if overwrite:
        return
    old = _read_meta(meta_file) if meta_file.exists() else None
    if meta_file.exists() and old is None:
        raise ConfigError(
            f"output {output}: its sidecar {meta_file.name} exists and was not written by validora; "
            "move it, or pass overwrite=True.",
            option="output",
        )
    if not output.exists():
        return
    if old is None:
        raise ConfigError(
            f"output {output} exists and has no {meta_file.name} saying what it holds, so it cannot be "
            "resumed; choose another output file, or pass overwrite=True to replace it.",
            option="output",
        )
    why = _mismatch(output, old, meta)
    if why:
        raise ConfigError(
            f"output {why} Nothing was changed; choose another output file, or pass overwrite=True to start over.",
            option="output",
        )
    job.skipped, job.keep, job.partial = _done_prefix(output, examples)


def predict_file(
    score: Scorer,
    source: str | Path,
    output: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> BatchRun:
    """Score every text of `source` into `output` (JSONL, input order), resuming an interrupted run:
    `plan_batch(source, output, **options).run(score, progress)`."""
    return plan_batch(source, output, **options).run(score, progress)
