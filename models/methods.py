"""How each continual-learning method learns one task on top of the shared learner.

- PackNet: train on the free weights (older ones frozen), free the lowest-magnitude share of the new
  weights, retrain the rest.
- Piggyback: task 0 trains the dense weights; every later task only learns a binary mask over them
  (plus its own head, norms, biases...).
- CPG: pick (a piggyback mask over older tasks' weights) while training the free weights; grow the
  feed-forwards when the accuracy goal is missed; compact by gradual magnitude pruning (cubic schedule)
  to the largest sparsity whose validation accuracy still meets the goal (or, without a goal or when
  the goal stayed out of reach, stays within ``tolerance`` of the dense accuracy).
"""
from __future__ import annotations

import math

import torch

from crossback.config.model import CPGOptions, MethodConfig, PackNetOptions, TrainOptions
from crossback.models.learner import ContinualLearner, TaskRecord
from crossback.models.task_data import TaskData
from crossback.models.training import Progress, evaluate, fit

from .masks import magnitude_prune
from .parallel import DataParallel


def learn_task(learner: ContinualLearner, data: TaskData, method: MethodConfig, opts: TrainOptions,
               progress: Progress | None = None, parallel: DataParallel | None = None) -> TaskRecord:
    """``parallel``: this process is one rank of a node training together (models.parallel); every
    rank runs learn_task alike, so every decision below (prune, grow, compact) comes out the same."""
    i = learner.begin_task(data.name, data.num_classes, list(data.classes), len(data.train))
    gen = torch.Generator().manual_seed(learner.seed * 7919 + i)
    fit(learner, i, data.train, opts.epochs, opts, gen, "train", progress, parallel=parallel)
    record = learner.tasks[i]
    if method.name == "packnet":
        _packnet_prune(learner, i, data, method.packnet, opts, gen, progress, parallel)
    elif method.name == "cpg":
        _cpg_grow(learner, i, data, method.cpg, opts, gen, progress, parallel)
        _cpg_compact(learner, i, data, method.cpg, opts, gen, progress, parallel)
    record.events.append({
        "event": "learned",
        "val_accuracy": evaluate(learner, i, data.val, opts.eval_batch_size),
        "owned_fraction": learner.owned_fraction(i),
        "free_fraction": learner.free_fraction(),
    })
    learner.end_task()
    return record


def _prune_to(learner: ContinualLearner, i: int, targets: dict[str, int]) -> int:
    """Free weights of task ``i`` until each layer holds ``targets[name]`` of them."""
    freed = 0
    for name, layer in learner.layers.items():
        held = int((layer.owner == i + 1).sum())
        freed += magnitude_prune(layer, i + 1, held - targets[name])
    return freed


def _held(learner: ContinualLearner, i: int) -> dict[str, int]:
    return {n: int((l.owner == i + 1).sum()) for n, l in learner.layers.items()}


def _packnet_prune(learner, i, data, opts: PackNetOptions, train: TrainOptions, gen, progress, parallel) -> None:
    held = _held(learner, i)
    freed = _prune_to(learner, i, {n: h - math.floor(h * opts.prune_ratio) for n, h in held.items()})
    fit(learner, i, data.train, opts.retrain_epochs, train, gen, "retrain", progress, parallel=parallel)
    learner.tasks[i].events.append({"event": "prune", "ratio": opts.prune_ratio, "freed": freed})


def _cpg_grow(learner, i, data, opts: CPGOptions, train: TrainOptions, gen, progress, parallel) -> None:
    record = learner.tasks[i]
    val = evaluate(learner, i, data.val, train.eval_batch_size)
    grows = 0
    while opts.accuracy_goal is not None and val < opts.accuracy_goal and grows < opts.max_grow:
        before = sum(l.weight.numel() for l in learner.layers.values())
        widths = learner.grow(opts.grow_units)
        fit(learner, i, data.train, opts.grow_epochs, train, gen, f"grow{grows + 1}", progress, parallel=parallel)
        after_val = evaluate(learner, i, data.val, train.eval_batch_size)
        record.events.append({
            "event": "grow",
            "goal": opts.accuracy_goal,
            "val_before": val,
            "val_after": after_val,
            "ff_widths": {g: list(w) for g, w in widths.items()},
            "weights_added": sum(l.weight.numel() for l in learner.layers.values()) - before,
        })
        val, grows = after_val, grows + 1
    if opts.accuracy_goal is not None and val < opts.accuracy_goal:
        record.events.append({"event": "goal_missed", "goal": opts.accuracy_goal, "val_accuracy": val})


def _cpg_compact(learner, i, data, opts: CPGOptions, train: TrainOptions, gen, progress, parallel) -> None:
    dense_val = evaluate(learner, i, data.val, train.eval_batch_size)
    goal = opts.accuracy_goal
    floor = goal if goal is not None and dense_val >= goal else dense_val - opts.tolerance
    start = _held(learner, i)
    if not any(start.values()):  # nothing of its own to compact: the task lives on its pick mask
        learner.tasks[i].events.append({"event": "compact", "sparsity": None, "dense_val": dense_val,
                                        "val_accuracy": dense_val, "floor": floor, "reason": "no own weights"})
        return
    accepted, accepted_val, snap = 0.0, dense_val, learner.rollback_point()
    for k in range(1, opts.prune_steps + 1):
        sparsity = opts.max_sparsity * (1.0 - (1.0 - k / opts.prune_steps) ** 3)
        _prune_to(learner, i, {n: h - math.floor(h * sparsity) for n, h in start.items()})
        fit(learner, i, data.train, opts.step_epochs, train, gen, f"compact{k}", progress, parallel=parallel)
        val = evaluate(learner, i, data.val, train.eval_batch_size)
        if val < floor:
            learner.rollback(snap)
            break
        accepted, accepted_val, snap = sparsity, val, learner.rollback_point()
    learner.tasks[i].events.append({
        "event": "compact",
        "sparsity": accepted,
        "dense_val": dense_val,
        "val_accuracy": accepted_val,
        "floor": floor,
    })
