"""Data-parallel training over several processes (`accelerate launch` / `torchrun`), without DDP.

Every process holds the whole frozen base model and the tiny adapter. Each training and validation
item is owned by one process (`index % world == rank`): it caches that item's prefix and computes its
loss. Every process walks the same global batches (one seeded order per epoch, `batch_size x world`
items each), backpropagates its own items' token losses divided by the whole global batch's token
count, and the flattened adapter gradients are all-reduced as a SUM before each optimizer step: the
update is the one-process mean over the global batch, up to float summation order.

Why not DDP: a process may own none of a batch's items and must still join the all-reduce, which
DDP's backward hooks cannot do without a dummy forward; the adapter's gradients are a few MiB, so one
flat all-reduce per optimizer step costs nothing next to the forward passes. FSDP and DeepSpeed shard
the model for `prepare()`, which this loop does not use, so their configurations are refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from validora.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes; item `i` belongs to process `i % world`."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where the collectives' buffers live (NCCL needs CUDA)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def mine(self, indices: Iterable[int]) -> list[int]:
        """The indices this process owns, in their given order."""
        return [i for i in indices if self.owns(i)]


def launched_rank() -> int:
    """The rank a launcher gave this process (0 without one): the CLI prints only on rank 0, before
    any process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched_world() -> int:
    """The number of processes a launcher started (1 without one), known before any process group."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def shard_of(accelerator: object) -> Shard:
    """The Shard of an initialised `accelerate.Accelerator`; FSDP and DeepSpeed are refused (see above)."""
    kind = str(getattr(accelerator, "distributed_type", "NO"))
    if "FSDP" in kind or "DEEPSPEED" in kind:
        raise ConfigError(
            f"The accelerate configuration asks for {kind.rsplit('.', 1)[-1]}, which validora does not "
            "use: each process holds a full copy of the base model (an 8B model in bfloat16 takes about "
            "16 GiB per GPU) and only the adapter's gradients are exchanged. Use distributed_type: "
            "MULTI_GPU (accelerate launch's multi-GPU mode)."
        )
    acc: Any = accelerator
    return Shard(acc.process_index, acc.num_processes, str(acc.device))


def _all_reduce(buffer: torch.Tensor, shard: Shard) -> torch.Tensor:
    import torch.distributed as dist

    on_device = buffer.to(shard.device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(buffer.device)


def sum_gradients(params: Sequence[torch.Tensor], shard: Shard, flag: float = 0.0) -> float:
    """Replace every parameter's gradient by its sum over the processes (a missing one counts as zero),
    in one flat all-reduce that also sums `flag` (a process's "my loss was not finite"); returns that sum."""
    if shard.world == 1:
        return flag
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), torch.tensor([flag], device=grads[0].device)])
    flat = _all_reduce(flat, shard)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()
    return float(flat[-1])


def all_sum(values: Sequence[float], shard: Shard) -> list[float]:
    """Scalars summed over the processes (in float64), the same on every process."""
    if shard.world == 1:
        return list(values)
    return _all_reduce(torch.tensor(values, dtype=torch.float64), shard).tolist()


def gather_rows(rows: torch.Tensor, indices: Sequence[int], total: int, shard: Shard) -> torch.Tensor:
    """Every process's rows (its items' [n, K] scores) put back in item order, [total, K] on every
    process. Each row is owned by one process and the others add zeros, so the sum is exact."""
    if shard.world == 1:
        return rows
    full = torch.zeros(total, rows.shape[1], dtype=rows.dtype)
    full[list(indices)] = rows
    return _all_reduce(full, shard)


def gather_objects(value: Any, shard: Shard) -> list[Any]:
    """Every process's `value`, by rank (small things: RNG states between our own processes)."""
    if shard.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * shard.world
    dist.all_gather_object(gathered, value)
    return gathered
