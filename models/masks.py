"""Shared, masked weights: one pool per linear layer of the core, an owner index per weight.

``owner == 0`` means free, ``owner == t`` (t >= 1) means task t trained it. Task t sees
``its own weights + older tasks' weights (times its pick mask, if it has one)``; newer weights are
replaced by exact zeros, so an old task's effective weights never change after it is learned.
Feed-forward layers can grow (CPG); each task remembers the hidden width it was learned at and sees
only that slice, so its matmuls keep their shapes too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class MaskedLayer:
    name: str  # parameter name inside the network, e.g. core.layers.0.self_attns.0.1.fn.net.0.weight
    weight: nn.Parameter
    owner: Tensor  # int16, same shape as weight
    ff_group: str | None = None  # feed-forward this layer belongs to (growable), if any
    ff_role: str | None = None  # "in" (GEGLU rows: value half then gate half) or "out" (columns)

    def width(self) -> int | None:
        if self.ff_role == "in":
            return self.weight.shape[0] // 2
        if self.ff_role == "out":
            return self.weight.shape[1]
        return None

    def index(self, width: int | None) -> tuple[Tensor | slice, Tensor | slice]:
        """Row and column selection for a task learned at feed-forward width ``width``."""
        full = self.width()
        if width is None or full is None or width == full:
            return slice(None), slice(None)
        if self.ff_role == "in":
            rows = torch.cat([torch.arange(width), full + torch.arange(width)])
            return rows, slice(None)
        return slice(None), slice(0, width)

    def sliced(self, width: int | None) -> tuple[Tensor, Tensor]:
        rows, cols = self.index(width)
        if isinstance(rows, slice) and isinstance(cols, slice) and rows == cols == slice(None):
            return self.weight, self.owner  # the whole matrix: no view, no autograd node per step
        return self.weight[rows][:, cols], self.owner[rows][:, cols]


def binarize(scores: Tensor, threshold: float) -> Tensor:
    """Piggyback's hard threshold; gradients pass straight through to the real-valued scores."""
    hard = (scores > threshold).to(scores.dtype)
    return hard + scores - scores.detach()


def effective_weight(
    weight: Tensor,
    owner: Tensor,
    task_owner: int,
    *,
    train: bool,
    pick: Tensor | None = None,
) -> Tensor:
    """The weight task ``task_owner`` runs with.

    ``pick``: a boolean mask (inference) or real-valued straight-through mask (training) over the
    weights of older tasks; ``None`` means use all of them.
    """
    own = owner == task_owner
    older = (owner >= 1) & (owner < task_owner)
    if not train:
        visible = own | (older & pick) if pick is not None else own | older
        return torch.where(visible, weight, torch.zeros((), dtype=weight.dtype))
    frozen = weight.detach()
    trained = torch.where(own, weight, torch.zeros((), dtype=weight.dtype))
    if pick is None:
        return trained + torch.where(older, frozen, torch.zeros((), dtype=weight.dtype))
    return trained + frozen * older.to(weight.dtype) * pick


@dataclass
class _Masks:
    weight: Tensor
    owner: Tensor
    owner_version: int
    task_owner: int
    own: Tensor  # bool: the weights the task trains
    frozen: Tensor  # older tasks' weights where they are, exact zeros elsewhere (no grad)


class TrainingMasks:
    """``effective_weight(..., train=True)`` for the task being trained, with what does not change
    between its steps computed once: which weights are its own, and the older tasks' frozen weights
    (zero forgetting: no step changes them). An entry is recomputed when its layer's weight or owner
    tensor is replaced (growth, a device move) or the owner index is written (pruning, claiming,
    restoring), which bumps the owner's version counter. Forward values and gradients equal
    ``effective_weight``'s (tests/test_masks.py)."""

    def __init__(self):
        self._entries: dict[str, _Masks] = {}

    def clear(self) -> None:
        self._entries.clear()

    def _masks(self, name: str, weight: Tensor, owner: Tensor, task_owner: int) -> _Masks:
        e = self._entries.get(name)
        if (e is None or e.weight is not weight or e.owner is not owner or e.owner_version != owner._version
                or e.task_owner != task_owner):
            with torch.no_grad():
                older = (owner >= 1) & (owner < task_owner)
                frozen = torch.where(older, weight.detach(), torch.zeros((), dtype=weight.dtype))
            e = _Masks(weight, owner, owner._version, task_owner, owner == task_owner, frozen)
            self._entries[name] = e
        return e

    def weight(self, name: str, weight: Tensor, owner: Tensor, task_owner: int, pick: Tensor | None = None) -> Tensor:
        """``pick``: the real-valued straight-through mask over older weights (Piggyback, CPG)."""
        e = self._masks(name, weight, owner, task_owner)
        return torch.where(e.own, weight, e.frozen if pick is None else e.frozen * pick)


def init_uniform_(t: Tensor, fan_in: int, generator: torch.Generator) -> Tensor:
    """nn.Linear's default weight distribution, drawn from a seeded generator."""
    bound = 1.0 / math.sqrt(fan_in)
    return t.uniform_(-bound, bound, generator=generator)


def magnitude_prune(layer: MaskedLayer, task_owner: int, k: int) -> int:
    """Free the ``k`` lowest-magnitude weights of ``task_owner`` in this layer (owner 0, value 0)."""
    mine = layer.owner == task_owner
    k = min(k, int(mine.sum()))
    if k <= 0:
        return 0
    magnitudes = layer.weight.detach().abs()[mine]
    cutoff = torch.kthvalue(magnitudes, k).values
    below = mine & (layer.weight.detach().abs() <= cutoff)
    # ties at the cutoff may overshoot k; free exactly the k smallest by stable order
    idx = torch.nonzero(below.flatten()).squeeze(1)
    if idx.numel() > k:
        order = torch.argsort(layer.weight.detach().abs().flatten()[idx], stable=True)
        idx = idx[order[:k]]
    with torch.no_grad():
        layer.owner.view(-1)[idx] = 0
        layer.weight.view(-1)[idx] = 0.0
    return k
