"""Resumable runs: after every epoch, the training state in one safetensors file beside --outfile.

`.NAME.train-state.safetensors` (a hidden sibling of the adapter directory, never inside it) holds
the adapter's current and best-so-far weights, the best epoch's validation scores, the optimizer's
tensors and every process's RNG states as tensors; everything else (epoch records, best-epoch
bookkeeping, the scheduler, the fingerprint of the run) as JSON in the file's metadata. Nothing is
unpickled. The file is replaced atomically (a temporary sibling, flocked while written, then
os.replace), so a kill leaves the previous epoch's state. The last epoch (or an early stop) writes
none: a run killed while saving resumes from the epoch before and repeats the last one, which gives
the same adapter. A finished run deletes the state. Several processes: rank 0 writes it (with every
rank's RNG states), every rank reads it. `--resume`
continues from the last completed epoch only if the fingerprint (data file, prompt file, recipe and
run options, base model, number of processes) is the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from validora.errors import ResumeError
from validora.train.distributed import gather_objects, launched_world
from validora.train.report import EpochRecord

STATE_FORMAT = 1
STATE_SUFFIX = ".train-state.safetensors"
PAUSE_ENV = "VALIDORA_TEST_STATE_PAUSE"  # tests: seconds to wait, with a line on stderr, once a state is kept


def state_path(outfile: str | Path) -> Path:
    """Where the state of the run writing `outfile` lives: a hidden sibling file (recover() ignores it)."""
    target = Path(outfile)
    return target.parent / f".{target.name}{STATE_SUFFIX}"


def fingerprint(config: Any, processes: int) -> dict[str, Any]:
    """What must be the same for a resumed run to end as the uninterrupted one would have: the recipe
    and run options (base model and device included), the data and prompt files' contents (not their
    paths), and the number of processes (it sets the global batch)."""
    skip = ("overwrite", "outfile", "datafile", "promptfile")
    options = {k: v for k, v in config.to_dict().items() if k not in skip}
    files = {}
    for name in ("datafile", "promptfile"):
        if path := getattr(config, name):
            files[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"options": options, "files": files, "processes": processes}


@dataclass
class RunState:
    """The loop's bookkeeping between epochs; what `save_state` writes and `load_state` gives back."""

    records: list[EpochRecord] = field(default_factory=list)
    best_score: tuple[float, float] | None = None  # (macro-F1 + accuracy, -validation loss) of the best epoch
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # its adapter weights
    best_loglik: torch.Tensor | None = None  # its [N_val, K] validation log-likelihoods
    stale: int = 0  # epochs since the best one

    @property
    def epoch(self) -> int:
        return len(self.records)


def rng_state() -> dict[str, Any]:
    """This process's RNG states: torch's (dropout masks) and Python's; CUDA's where present."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    path: Path,
    run: RunState,
    *,
    fingerprint: dict[str, Any],
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    rngs: list[dict[str, Any]],
) -> None:
    """Write the state atomically: a flocked temporary sibling, then os.replace."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in model.items()}
    if run.best_state is not None and run.best_loglik is not None:
        tensors |= {f"best.{k}": v for k, v in run.best_state.items()} | {"best_loglik": run.best_loglik}
    for index, entries in optimizer["state"].items():
        tensors |= {f"optim.{index}.{k}": v for k, v in entries.items() if isinstance(v, torch.Tensor)}
    scalars = {i: {k: v for k, v in e.items() if not isinstance(v, torch.Tensor)} for i, e in optimizer["state"].items()}  # fmt: skip
    rng_json = []
    for rank, rng in enumerate(rngs):
        tensors[f"rng.{rank}.torch"] = rng["torch"]
        for device, cuda in enumerate(rng.get("cuda", [])):
            tensors[f"rng.{rank}.cuda.{device}"] = cuda
        rng_json.append({"python": rng["python"], "cuda": len(rng.get("cuda", []))})
    meta = {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "records": [asdict(r) for r in run.records],
        "best": {"score": run.best_score, "epoch": run.best_epoch, "stale": run.stale},
        "optimizer": {"groups": [{"lr": g["lr"]} for g in optimizer["param_groups"]], "scalars": scalars},
        "scheduler": {k: v for k, v in scheduler.items() if k != "lr_lambdas"},
        "rng": rng_json,
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)
    try:
        _flock(fd)
        save_file(tensors, tmp, metadata={"validora.train_state": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _pause_for_tests(f"state kept after epoch {run.epoch}")


def _flock(fd: int) -> bool:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (ImportError, OSError):
        return False


def remove_state(path: Path) -> None:
    """The run is complete: nothing to resume (a state that cannot be removed only costs disk space)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary state files of killed runs (a live writer holds its flock and keeps its file)."""
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f"{path.name}.tmp-*"):
            with contextlib.suppress(OSError):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    if _flock(fd):
                        tmp.unlink()
                finally:
                    os.close(fd)


@dataclass
class LoadedState:
    run: RunState
    model: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, Any]]
    lrs: list[float]
    scheduler: dict[str, Any]
    rngs: list[dict[str, Any]]


def load_state(path: Path, expected: dict[str, Any]) -> LoadedState:
    """Read a state written by `save_state`; another run's (its fingerprint differs) is refused."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["validora.train_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ResumeError(
            f"The saved training state {path} is unreadable ({exc}); delete it and train again."
        ) from None
    if meta.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} was written by another validora version; delete it to start over.")
    if meta["fingerprint"] != expected:
        raise ResumeError(
            f"The saved training state {path} belongs to a different run: {_difference(meta['fingerprint'], expected)}. "
            "Run without --resume to start over (the state is then replaced), or restore that run's settings."
        )
    best = meta["best"]
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    run = RunState(
        records=[EpochRecord(**r) for r in meta["records"]],
        best_score=None if best["score"] is None else (best["score"][0], best["score"][1]),
        best_epoch=best["epoch"],
        best_state=best_state or None,
        best_loglik=tensors.get("best_loglik"),
        stale=best["stale"],
    )
    optimizer_state: dict[int, dict[str, Any]] = {}
    for index, scalars in meta["optimizer"]["scalars"].items():
        prefix = f"optim.{index}."
        entries = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        optimizer_state[int(index)] = {**scalars, **entries}
    rngs = []
    for rank, rng in enumerate(meta["rng"]):
        state = {"torch": tensors[f"rng.{rank}.torch"], "python": rng["python"]}
        if rng["cuda"]:
            state["cuda"] = [tensors[f"rng.{rank}.cuda.{d}"] for d in range(rng["cuda"])]
        rngs.append(state)
    lrs = [g["lr"] for g in meta["optimizer"]["groups"]]
    return LoadedState(run, model, optimizer_state, lrs, meta["scheduler"], rngs)


def _difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The first thing that differs, in words."""
    if saved.get("files", {}).get("datafile") != now["files"].get("datafile"):
        return "the data file's contents differ"
    if saved.get("processes") != now["processes"]:
        return f"it ran in {saved.get('processes')} process(es), not {now['processes']}"
    if saved.get("files") != now["files"]:
        return "the prompt file's contents differ"
    old, new = saved.get("options", {}), now["options"]
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "its " + ", ".join(f"{k} was {old.get(k)!r}, not {new.get(k)!r}" for k in changed[:3])


def _pause_for_tests(moment: str) -> None:
    if delay := os.environ.get(PAUSE_ENV):
        import sys
        import time

        print(f"validora-test: {moment}", file=sys.stderr, flush=True)
        time.sleep(float(delay))


class KeepsState:
    """The Trainer's side of it (a mixin, so training.py stays short): read before the model loads,
    restore once everything is set up, keep after every epoch."""

    config: Any
    keep_state: bool
    resume_state: bool
    progress: Any
    shard: Any
    epochs: int
    peft: Any
    optimizer: Any
    lr_scheduler: Any

    def _read_state(self) -> LoadedState | None:
        """The state to resume from (refused if another run's), before the model loads: a refusal is quick."""
        self.run = RunState()
        self.state_file = state_path(self.config.outfile) if self.keep_state else None
        if self.state_file is None:
            return None
        remove_stale_temporaries(self.state_file)
        self.fingerprint = fingerprint(self.config, launched_world())
        there = self.state_file.is_file()
        if there and not self.resume_state:
            self.progress.log(f"An interrupted run's state is at {self.state_file}; starting over replaces it (--resume continues it).")  # fmt: skip
        elif self.resume_state and not there:
            self.progress.log(f"No saved training state at {self.state_file}: starting from the first epoch.")
        return load_state(self.state_file, self.fingerprint) if there and self.resume_state else None

    def _restore(self, saved: LoadedState) -> None:
        """Weights, optimizer, schedule and RNG as they were after the saved epoch; the loop goes on from there."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.peft, saved.model)
        groups = self.optimizer.state_dict()["param_groups"]
        for group, lr in zip(groups, saved.lrs, strict=True):
            group["lr"] = lr
        self.optimizer.load_state_dict({"state": saved.optimizer_state, "param_groups": groups})
        self.lr_scheduler.load_state_dict({**saved.scheduler, "lr_lambdas": [None] * len(groups)})
        set_rng_state(saved.rngs[self.shard.rank])
        self.run = saved.run
        self.progress.log(f"Resuming after epoch {saved.run.epoch} of {self.epochs} from {self.state_file}.")

    def _keep_state(self) -> None:
        """After an epoch: the state to resume from, written by the main process."""
        from peft import get_peft_model_state_dict

        if self.state_file is None:
            return
        rngs = gather_objects(rng_state(), self.shard)  # every process's dropout RNG
        if not self.shard.main:
            return
        try:
            save_state(
                self.state_file, self.run, fingerprint=self.fingerprint,
                model=get_peft_model_state_dict(self.peft), optimizer=self.optimizer.state_dict(),
                scheduler=self.lr_scheduler.state_dict(), rngs=rngs,
            )  # fmt: skip
        except Exception as exc:  # a full disk (safetensors has its own error type): the run goes on
            if getattr(self, "_state_failed", False):
                return
            self._state_failed = True
            self.progress.log(f"Could not keep the training state at {self.state_file} ({exc}); --resume would go back further, or start over.")  # fmt: skip
