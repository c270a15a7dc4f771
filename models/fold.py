"""A finished task as a plain model: its masks folded into ordinary weights.

A continual learner runs a task by recomputing every masked matrix from the shared pool on each
forward pass (owners, pick masks, borrowed weights, the task's feed-forward width). For inference of
a finished task none of that changes, so ``fold`` computes those weights once and returns an ordinary
``nn.Module`` holding them: same outputs, no mask arithmetic, nothing else of the learner. It is a
copy: later tasks cannot change it, and it cannot change the learner.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .learner import ContinualLearner
from .perceiver import PerceiverClassifier


def fold(learner: ContinualLearner, task: int) -> PerceiverClassifier:
    """Task ``task`` of ``learner`` as a plain PerceiverClassifier in eval mode (no gradients)."""
    if task == learner.active:
        raise RuntimeError(f"task {learner.tasks[task].name!r} is still being learned; fold it once it is finished")
    with torch.no_grad():
        params = {name: t.detach().clone() for name, t in learner.params_for(task).items()}
    net = copy.deepcopy(learner.net)
    for name, value in params.items():
        owner_path, _, leaf = name.rpartition(".")
        module = net.get_submodule(owner_path) if owner_path else net
        # a tensor of another shape than the module's placeholder (a task's head, a feed-forward
        # width grown after the task): the parameter is replaced, not copied into
        setattr(module, leaf, nn.Parameter(value, requires_grad=False))
    return net.eval().requires_grad_(False)
