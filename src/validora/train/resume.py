"""Resumable runs: after every epoch, the training state in one safetensors file beside the outfile.

`.NAME.train-state.safetensors` (a hidden sibling of the adapter directory, never inside it) holds
the adapter's current and best-so-far weights, the best epoch's validation scores, the optimizer's
tensors and every process's RNG states as tensors; everything else (epoch records, best-epoch
bookkeeping, the scheduler, the fingerprint of the run) as JSON in the file's metadata. Nothing is
unpickled. The file is replaced atomically (a temporary sibling, flocked while written, then
os.replace), so a kill leaves the previous epoch's state. The last epoch (or an early stop) writes
none: a run killed while saving resumes from the epoch before and repeats the last one, which gives
the same adapter. A finished run deletes the state. Several processes: rank 0 writes it (with every
rank's RNG states), every rank reads it. Resuming
continues from the last completed epoch only if the fingerprint (data and prompt files' contents,
recipe, base model, device, number of processes) is the same; the cache budget may change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from validora.core import files
from validora.core.jsonio import parse_json
from validora.errors import ResumeError
from validora.train.distributed import Shard, gather_objects, launched_world
from validora.train.recipe import TrainConfig
from validora.train.report import EpochRecord

STATE_FORMAT = 1
STATE_SUFFIX = ".train-state.safetensors"
PAUSE_ENV = "VALIDORA_TEST_STATE_PAUSE"  # tests: seconds to wait, with a line on stderr, once a state is kept


def state_path(outfile: str | Path) -> Path:
    """Where the state of the run writing `outfile` lives: a hidden sibling file (recover() ignores it)."""
    target = Path(outfile)
    return target.parent / f".{target.name}{STATE_SUFFIX}"


def fingerprint(config: TrainConfig, processes: int) -> dict[str, Any]:
    """What must be the same for a resumed run to end as the uninterrupted one would have: the recipe,
    the base model, device and remote-code permission, the data and prompt files' contents (not their
    paths), and the number of processes (it sets the global batch). The cache budget is not in it: it
    decides only whether prefix caches are kept or recomputed."""
    run = {
        "basemodel": config.basemodel,
        "device": config.device,
        "trust_remote_code": config.trust_remote_code,
    }
    files = {}
    for name, path in (("datafile", config.datafile), ("promptfile", config.promptfile)):
        if path:
            files[name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"options": {**run, **config.recorded()}, "files": files, "processes": processes}


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
    with files.atomic_file(path, prefix=f"{path.name}.tmp-", private=True) as tmp:
        save_file(tensors, tmp, metadata={"validora.train_state": json.dumps(meta)})


def remove_state(path: Path) -> None:
    """The run is complete: nothing to resume (a state that cannot be removed only costs disk space)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary state files of killed runs (a live writer holds its flock and keeps its file)."""
    files.sweep_files(path, f"{path.name}.tmp-")


@dataclass
class LoadedState:
    run: RunState
    model: dict[str, torch.Tensor]
    optimizer_state: dict[int, dict[str, Any]]
    lrs: list[float]
    scheduler: dict[str, Any]
    rngs: list[dict[str, Any]]


def load_state(path: Path, expected: dict[str, Any]) -> LoadedState:
    """Read a state written by `save_state`; another run's (its fingerprint differs) is refused, and so
    is a damaged one (truncated, edited): a ResumeError, never a traceback."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("validora.train_state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        meta = parse_json(raw) if isinstance(raw, str) else None
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise ResumeError(
            f"The saved training state {path} is unreadable ({exc}); delete it and train again."
        ) from None
    if not isinstance(meta, dict):
        raise ResumeError(f"{path} holds no validora training state; delete it and train again.")
    if meta.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} was written by another validora version; delete it to start over.")
    if meta.get("fingerprint") != expected:
        raise ResumeError(
            f"The saved training state {path} belongs to a different run: {_difference(meta.get('fingerprint'), expected)}. "
            "Run without resume_state to start over (the state is then replaced), or restore that run's settings.",
            option="resume_state",
        )
    try:
        return _loaded(meta, tensors)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ResumeError(
            f"The saved training state {path} is damaged ({type(exc).__name__}: {exc}); delete it and train again."
        ) from None


def _loaded(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LoadedState:
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


def _difference(saved: Any, now: dict[str, Any]) -> str:
    """The first thing that differs, in words."""
    if not isinstance(saved, dict):
        return "it records no fingerprint"
    if saved.get("files", {}).get("datafile") != now["files"].get("datafile"):
        return "the data file's contents differ"
    if saved.get("processes") != now["processes"]:
        return f"it ran in {saved.get('processes')} process(es), not {now['processes']}"
    if saved.get("files") != now["files"]:
        return "the prompt file's contents differ"
    old, new = saved.get("options", {}), now["options"]
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "its " + ", ".join(f"{k} was {old.get(k)!r}, not {new.get(k)!r}" for k in changed[:3])


class Checkpointer:
    """The resumable state of one run, held by its Trainer (as torchtune's recipes hold a checkpointer):
    read before the model loads, restored once the optimizer exists, kept after every epoch, removed
    when the adapter is saved. Notices go to `log` (the Trainer's progress)."""

    def __init__(self, config: TrainConfig, *, keep: bool, resume: bool, log: Callable[[str], None]):
        """`keep`: write the state after every epoch; `resume`: continue from it if there is one."""
        self.path = state_path(config.outfile) if keep or resume else None
        self.resume = resume
        self._config = config
        self._log = log
        self._fingerprint: dict[str, Any] = {}
        self._failed = False  # a state could not be written: said once

    def read(self) -> LoadedState | None:
        """The state to resume from (refused if another run's), before the model loads: a refusal is quick."""
        if self.path is None:
            return None
        remove_stale_temporaries(self.path)
        self._fingerprint = fingerprint(self._config, launched_world())
        there = self.path.is_file()
        if there and not self.resume:
            self._log(f"An interrupted run's state is at {self.path}; starting over replaces it (resume_state continues it).")  # fmt: skip
        elif self.resume and not there:
            self._log(f"No saved training state at {self.path}: starting from the first epoch.")
        return load_state(self.path, self._fingerprint) if there and self.resume else None

    def restore(self, saved: LoadedState, *, model: Any, optimizer: Any, scheduler: Any, shard: Shard, epochs: int) -> RunState:  # fmt: skip
        """Weights, optimizer, schedule and RNG as they were after the saved epoch; the loop goes on from
        the RunState returned."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, saved.model)
        groups = optimizer.state_dict()["param_groups"]
        for group, lr in zip(groups, saved.lrs, strict=True):
            group["lr"] = lr
        optimizer.load_state_dict({"state": saved.optimizer_state, "param_groups": groups})
        scheduler.load_state_dict({**saved.scheduler, "lr_lambdas": [None] * len(groups)})
        set_rng_state(saved.rngs[shard.rank])
        self._log(f"Resuming after epoch {saved.run.epoch} of {epochs} from {self.path}.")
        return saved.run

    def keep(self, run: RunState, *, model: Any, optimizer: Any, scheduler: Any, shard: Shard) -> None:
        """After an epoch: the state to resume from, written by the main process."""
        from peft import get_peft_model_state_dict

        if self.path is None:
            return
        rngs = gather_objects(rng_state(), shard)  # every process's dropout RNG
        if not shard.main:
            return
        try:
            save_state(
                self.path, run, fingerprint=self._fingerprint, model=get_peft_model_state_dict(model),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rngs=rngs,
            )  # fmt: skip
        except Exception as exc:  # a full disk (safetensors has its own error type): the run goes on
            if not self._failed:
                self._failed = True
                self._log(f"Could not keep the training state at {self.path} ({exc}); resume_state would go back further, or start over.")  # fmt: skip
            return
        if delay := os.environ.get(PAUSE_ENV):
            self._log(f"validora-test: state kept after epoch {run.epoch}")
            time.sleep(float(delay))

    def finish(self) -> None:
        """The adapter is saved: nothing to resume."""
        if self.path is not None:
            remove_state(self.path)
