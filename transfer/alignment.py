"""MoNA's outer loss and the gradient a source computes of it, on its own labelled items.

The outer loss asks how discriminative an encoder body ``theta_f`` keeps the source's own data: the
source's items go through the source's embedder (its adapter and K/V) and the body, the features the
source's head reads are put on the unit sphere, and

    L_outer = L_align + L_uniform
    L_align   = mean over same-class pairs of ||f_i - f_j||^2
    L_uniform = log mean over all pairs i != j of exp(-2 ||f_i - f_j||^2)

(Wang & Isola's alignment and uniformity with their defaults alpha = 2, t = 2; MoNA's Eq. 4 prints the
alignment term with a minus sign and without the square, which would push same-class features apart,
so we follow the paper it cites.) Only the body's gradient of this loss, averaged over a bounded
number of batches, leaves the source (``outer_gradient``); the items, labels and features do not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from crossback.models.borrowed import part_names
from crossback.models.learner import ContinualLearner
from crossback.models.task_data import Split

UNIFORM_T = 2.0


def alignment_uniformity(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(L_align, L_uniform) of a batch of features (b, d) with labels (b,); a batch with no same-class
    pair has L_align = 0."""
    f = torch.nn.functional.normalize(features, dim=1)
    sq = (f[:, None, :] - f[None, :, :]).pow(2).sum(-1)  # b b; squared distances (no sqrt: smooth at 0)
    off = ~torch.eye(len(labels), dtype=torch.bool, device=f.device)
    same = (labels[:, None] == labels[None, :]) & off
    align = sq[same].mean() if bool(same.any()) else sq.new_zeros(())
    uniform = torch.logsumexp(-UNIFORM_T * sq[off], dim=0) - torch.log(torch.tensor(float(off.sum()), dtype=sq.dtype))
    return align, uniform


def body_names(learner: ContinualLearner, task: int) -> list[str]:
    """The encoder body theta_f of ``task``: the parameters of payload kind ``encoder``."""
    return part_names("encoder", learner.part_shapes(task))


def outer_loss(learner: ContinualLearner, task: int, inputs: Tensor, labels: Tensor,
               body: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(L_outer, L_align, L_uniform) of ``task``'s items through the learner's embedder and ``body``
    (default: the task's own); differentiable in ``body``."""
    params = dict(learner.params_for(task))
    params.update(body or {})
    feats = learner.call(learner.net, params, (inputs.to(learner.device),), {"features": True})
    align, uniform = alignment_uniformity(feats, labels.to(learner.device))
    return align + uniform, align, uniform


@dataclass(frozen=True)
class OuterGradient:
    body: dict[str, Tensor]  # theta_f as the source runs it
    grad: dict[str, Tensor]  # dL_outer / dtheta_f, averaged over batches (same names and shapes)
    sample_count: int
    batch_count: int
    batch_size: int
    outer_loss: float
    align_loss: float
    uniform_loss: float


def outer_batches(n: int, batches: int, batch_size: int, seed: int) -> list[Tensor]:
    """At most ``batches`` disjoint index batches of ``batch_size`` (a smaller last one if it holds at
    least 2 items), in a seeded order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = [order[s : s + batch_size] for s in range(0, n, batch_size)][:batches]
    return [b for b in out if len(b) >= 2]


def outer_gradient(learner: ContinualLearner, task: int, data: Split, batches: int, batch_size: int,
                   seed: int = 0) -> OuterGradient:
    """The source side of first-order MoNA: the gradient of L_outer with respect to the body of
    ``task``, at the body it publishes, on its own items (mean over at most ``batches`` batches)."""
    names = body_names(learner, task)
    with torch.no_grad():
        body = {n: t.detach().clone() for n, t in learner.params_for(task).items() if n in names}
    index = outer_batches(len(data), batches, batch_size, seed)
    if not index:
        raise ValueError(f"task {learner.tasks[task].name!r} has {len(data)} labelled items: at least 2 are needed")
    grad = {n: torch.zeros_like(t) for n, t in body.items()}
    totals = torch.zeros(3, dtype=torch.float64)
    with torch.enable_grad():
        for idx in index:
            leaves = {n: t.clone().requires_grad_(True) for n, t in body.items()}
            loss, align, uniform = outer_loss(learner, task, data.inputs[idx], data.labels[idx], leaves)
            for n, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)):
                if g is not None:
                    grad[n] += g.detach() / len(index)
            totals += torch.tensor([float(loss.detach()), float(align.detach()), float(uniform.detach())], dtype=torch.float64) / len(index)
    return OuterGradient({n: t.cpu() for n, t in body.items()}, {n: g.cpu() for n, g in grad.items()},
                         sum(len(b) for b in index), len(index), batch_size, *map(float, totals))
