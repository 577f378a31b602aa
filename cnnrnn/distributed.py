"""Training on several processes with torch.distributed: `torchrun ... -m cnnrnn train ...`.

torchrun starts one process per rank and sets RANK, LOCAL_RANK and WORLD_SIZE; `World.from_env`
reads them. With one process (no torchrun) every method here is a no-op, so the training loop
reads the same either way:
- each rank takes its own slice of every global batch (`shard`), so the global batch and the
  learning rate stay those of the config and one step sees exactly the samples a
  single-process step would;
- the model is wrapped in DistributedDataParallel, which averages the gradients;
- only rank 0 writes the run folder and prints; a stop (Ctrl-C, SIGTERM) or a NaN loss on any
  rank stops every rank at the same step (`agree`).
The backend is NCCL on CUDA devices and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cnnrnn.errors import CnnrnnError

T = TypeVar("T")

# Long enough for rank 0 to pretrain an encoder while the others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The ranks torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

    def init(self, device: torch.device) -> None:
        """Join the process group (once); the device picks the backend."""
        if not self.distributed or dist.is_initialized():
            return
        if not dist.is_available():
            raise CnnrnnError("this torch build has no torch.distributed; run one process")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK on GPUs."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag true on any rank -> true on every rank (one small all-reduce)."""
        if not self.distributed:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sum(self, *values: float) -> list[float]:
        """The sums of `values` over the ranks."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_every_rank(self, fn: Callable[[], T]) -> T:
        """fn() on every rank; a user error on any rank is raised on every rank (so none waits
        forever at its next collective)."""
        if not self.distributed:
            return fn()
        result, error = None, None
        try:
            result = fn()
        except CnnrnnError as e:
            error = (type(e), str(e))  # its class too: a caller may catch a kind of error
        errors = [e for e in self.gather(error) if e]
        if errors:
            kind, message = error or errors[0]
            if all(e == (kind, message) for e in errors):  # one error, said once
                raise kind.on_every_rank(message)
            raise kind(message)  # ranks that failed differently each say their own
        return result  # type: ignore[return-value]

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0 only (an encoder's pretraining, say), its result given to every rank;
        its user error is raised on every rank."""
        if not self.distributed:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except CnnrnnError as e:  # its class too (the CLI catches encoders.Interrupted)
                outcome = ("error", (type(e), str(e)))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise value[0].on_every_rank(value[1])
        return value

    def shard(self, batches: Any) -> Any:
        """This rank's slices of every batch of `batches` (a BatchSource)."""
        return ShardedBatches(batches, self.rank, self.world_size) if self.distributed \
            else batches

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
        else torch.device("cpu")


@dataclass
class ShardedBatches:
    """Rank r of W takes rows [r*B/W, (r+1)*B/W) of each global batch of B: the shards of a
    step never overlap and together are the batch a single process would train on."""

    source: Any
    rank: int
    world_size: int

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.source.epoch(epoch, start):
            if len(x) % self.world_size:
                raise CnnrnnError.on_every_rank(  # every rank meets the same batch
                    f"a batch of {len(x)} does not split into {self.world_size} equal shards; "
                    "choose a batch size divisible by the number of processes")
            per = len(x) // self.world_size
            part = slice(self.rank * per, (self.rank + 1) * per)
            yield x[part], y[part]
