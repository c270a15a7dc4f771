"""Data parallelism inside one node: several processes (or GPUs) train one learner together.

Every rank holds the same learner and draws the same seeded batch order. Rank r trains on every W-th
item of each batch, and DistributedDataParallel averages the gradients. Each rank's loss is its summed
cross-entropy times W / |batch|, so the average is exactly the one-process batch mean (up to the order
of float additions) whatever the shard sizes. Frozen weights get exact zero gradients on every rank,
so their average is zero too and zero forgetting holds as it does in one process.

Only this node's processes share the group: swarm nodes never do (see ``crossback.node.distributed``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int
    device: torch.device  # where collectives run: cpu for gloo, this rank's GPU for NCCL
    group: object = None  # the node-local process group (None: torch.distributed's default group)

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def shard(self, idx: Tensor) -> tuple[Tensor, float]:
        """This rank's items of one batch and the weight of its summed loss. A rank left without items
        (a last batch smaller than the world) runs one item at weight 0: DDP needs every rank's backward."""
        mine = idx[self.rank :: self.world]
        if len(mine) == 0:
            return idx[:1], 0.0
        return mine, self.world / len(idx)

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any: a decision every rank must take together (stop)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def broadcast(self, t: Tensor, src: int = 0) -> Tensor:
        """``t`` from rank ``src`` on every rank (in place where the device allows it)."""
        moved = t.to(self.device)
        dist.broadcast(moved, src, group=self.group)
        return moved.to(t.device)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        moved = t.to(self.device)
        out = [torch.empty_like(moved) for _ in range(self.world)]
        dist.all_gather(out, moved, group=self.group)
        return [o.cpu() for o in out]


class _LearnerStep(nn.Module):
    """The tensors a task trains, registered as one module so DDP can hook their gradients; its
    forward is the learner's own (functional_call over the masked effective weights)."""

    def __init__(self, learner, task: int, tensors: list[nn.Parameter]):
        super().__init__()
        self.tensors = nn.ParameterList(tensors)
        self._run = lambda x: learner.logits(x, task)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)


@contextmanager
def as_parameters(learner, task: int):
    """Per-task tensors are plain leaf tensors; DDP only hooks ``nn.Parameter``s. For the length of one
    fit they are swapped for parameters over the same storage, so updates land in the learner."""
    plain = learner.task_params[task]
    learner.task_params[task] = {n: nn.Parameter(t.detach(), requires_grad=t.requires_grad) for n, t in plain.items()}
    try:
        yield
    finally:
        learner.task_params[task] = {n: p.detach().requires_grad_(plain[n].requires_grad)
                                     for n, p in learner.task_params[task].items()}


def distributed_forward(learner, task: int, tensors: list[Tensor], parallel: DataParallel) -> nn.Module:
    """A DDP module over ``tensors`` (every one an nn.Parameter the learner runs with) whose call is
    ``learner.logits(x, task)``."""
    step = _LearnerStep(learner, task, tensors)
    ids = [parallel.device.index] if parallel.device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids, process_group=parallel.group)
