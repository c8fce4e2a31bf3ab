"""What scores texts for `m alora predict`: the model loaded here or a running llama-server (`Engine`),
and the llama-server scorer (`ServerScorer`). `programs/batch.py` plans and writes the results file."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from validora.adapter.loading import CustomIntrinsicAdapter
from validora.adapter.schema import AdapterInfo
from validora.errors import AdapterError, ConfigError
from validora.programs.batch import BatchJob, Scorer, plan_batch
from validora.score.readout import LabelScores


@dataclass
class Engine:
    """What scores texts for `m alora predict`, and with which settings: the model loaded here
    ("in-process") or a running llama-server (`server`). One place for the choices made for texts given
    at once and for a resumable results file."""

    adapter: str  # a directory or a hub id
    server: str | None = None
    basemodel: str | None = None
    device: str = "auto"
    revision: str | None = None
    batch_size: int = 8
    concurrency: int = 1
    api_key: str | None = None  # the server's, sent as a bearer token (never recorded)
    allow_base_mismatch: bool = False  # load onto base weights other than the adapter's (a warning)

    @property
    def name(self) -> str:
        return "llama-server" if self.server else "in-process"

    @functools.cached_property
    def directory(self) -> Path:
        """The adapter's directory (a hub id is downloaded once)."""
        from validora.adapter.loading import resolve_adapter_dir

        return resolve_adapter_dir(self.adapter, revision=self.revision)[0]

    def plan(
        self, source: str | Path, output: str | Path, *, requirement: str | None, fmt: str, overwrite: bool,
        stdin: bytes | None,
    ) -> BatchJob:  # fmt: skip
        """`plan_batch` for this engine: a base-model override is a setting, and a written batch holds
        the texts in flight at once."""
        return plan_batch(
            source,
            output,
            adapter=self.directory,
            settings=self.settings() or None,
            requirement=requirement,
            fmt=fmt,
            batch_size=max(self.batch_size, self.concurrency),
            overwrite=overwrite,
            stdin=stdin,
            engine=self.name,
            **({} if self.server else self.precision()),
        )

    def settings(self) -> dict[str, object]:
        """The choices besides the adapter that change its probabilities (the sidecar records them)."""
        chosen: dict[str, object] = {"basemodel": self.basemodel} if self.basemodel else {}
        return chosen | ({"allow_base_mismatch": True} if self.allow_base_mismatch else {})

    def precision(self) -> dict[str, str]:
        """Where and in which dtype the model loaded here computes (its probabilities depend on both)."""
        from validora.core.models import pick_device, pick_dtype

        device = pick_device(self.device)
        return {"device": device.type, "dtype": str(pick_dtype(device)).removeprefix("torch.")}

    def open(self, digest: str | None = None) -> AbstractContextManager[Scorer]:
        """The scorer, ready: connected to a server that serves the adapter, or the model loaded here.
        `digest`: the adapter a planned job recorded; a model loaded here must hold exactly that one."""
        if self.server:
            return ServerScorer(
                self.server, self.directory, basemodel=self.basemodel, concurrency=self.concurrency,
                api_key=self.api_key,
            )  # fmt: skip
        return self._in_process(digest)

    @contextmanager
    def _in_process(self, digest: str | None = None) -> Iterator[Scorer]:
        """The model loaded here; texts longer than the adapter's max_length are counted as they are
        scored and warned about once, at the end (scoring cuts their beginning without a word)."""
        from validora.backends.validator import load_validator
        from validora.core.prompting import truncated_count, truncation_note

        validator = load_validator(
            self.adapter,
            basemodel=self.basemodel,
            device=self.device,
            revision=self.revision,
            allow_base_mismatch=self.allow_base_mismatch,
        )
        snapshot = validator.adapter.snapshot
        if digest is not None and snapshot is not None and snapshot.digest != digest:
            raise AdapterError(
                f"The adapter {self.adapter} changed between reading the input and loading it (another "
                "run saved over it?); nothing was scored. Run the command again."
            )
        cut, seen = [0], [0]

        def score(items: Sequence[str], reqs: Sequence[str | None]) -> list[LabelScores]:
            own = [validator.adapter.requirement_for(r) for r in reqs]
            cut[0] += truncated_count(validator.fmt, items, own)
            seen[0] += len(items)
            return validator.predict(items, requirements=reqs, batch_size=self.batch_size)

        try:
            yield score
        finally:
            if cut[0]:
                warnings.warn(truncation_note(cut[0], seen[0], validator.fmt.max_length), stacklevel=3)

    def predict(
        self, texts: Sequence[str], requirements: Sequence[str | None], requirement: str | None = None
    ) -> list[LabelScores]:
        """Every text's scores at once; a text without its own requirement is judged on `requirement`."""
        with self.open() as score:
            return score(texts, [r if r is not None else requirement for r in requirements])


class ServerScorer:
    """A `Scorer` that asks a running llama-server (`LlamaCppBackend`), `concurrency` texts at a time,
    results in input order.

    Connecting and finding the adapter happen here, so a server that is not there, or that does not serve
    this adapter, fails before any output is written; a server lost later raises `LlamaCppError` from the
    call, after the batches before it are on disk. A text's requirement reaches the adapter's prompt only
    when it was trained with requirements (`LoadedAdapter.requirement_for`, the one rule of programs,
    `LlamaCppBackend.check` and in-process `Validator.predict`); for other adapters the first requirement
    seen brings a warning.
    """

    def __init__(
        self,
        server: str,
        adapter: str | Path,
        *,
        basemodel: str | None = None,
        concurrency: int = 1,
        timeout: float | None = None,
        api_key: str | None = None,
    ):
        from validora.backends.llamacpp import DEFAULT_TIMEOUT, LlamaCppBackend

        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(
                f"concurrency must be a whole number of at least 1, not {concurrency!r}.",
                option="concurrency",
            )
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be positive seconds, not {timeout!r}.", option="timeout")
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"server must be a URL like http://127.0.0.1:8080 (what `m alora serve` prints), not {server!r}.",
                option="server",
            )
        base = basemodel or AdapterInfo.read(Path(adapter)).base_model
        self.backend = LlamaCppBackend(server, base, timeout=timeout or DEFAULT_TIMEOUT, api_key=api_key)
        self.adapter = self.backend.add_adapter(CustomIntrinsicAdapter(str(adapter)))
        self.name = self.adapter.name
        self.concurrency = concurrency
        self._warned = False  # about requirements the adapter ignores: said once
        self._pool = ThreadPoolExecutor(concurrency, "validora-server") if concurrency > 1 else None

    def _one(self, text: str, requirement: str | None) -> LabelScores:
        return self.backend.check(text, [(self.name, requirement)])[0].scores

    def __call__(self, texts: Sequence[str], requirements: Sequence[str | None]) -> list[LabelScores]:
        if not self._warned and self.adapter.ignores(requirements):
            self._warned = True
            warnings.warn(self.adapter.ignoring_note(f"adapter {self.name!r}"), stacklevel=2)
        if self._pool is None:
            return [self._one(t, r) for t, r in zip(texts, requirements, strict=True)]
        futures = [self._pool.submit(self._one, t, r) for t, r in zip(texts, requirements, strict=True)]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:  # a failure or an interruption: the texts not yet sent are not sent
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ServerScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
