"""CrossBack transfer: run the task on the chosen peer's parts (``borrow``: its K/V, its encoder
cross-attention block, or its whole encoder body) under new piggyback masks, and adapt the task's own
tensors and those masks; the head is first refit by a linear probe on the borrowed features
(``head_probe``). Without a payload it is the no-transfer baseline: the same adaptation on the
task's own weights, so arms differ only in what was borrowed."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from crossback.config.transfer import PART_KINDS
from crossback.models.training import accuracy, fit, fit_head, predict

from .base import AdaptOptions, InjectionError, Strategy


class CrossBackTransfer(Strategy):
    name = "crossback"
    any_shape = False  # the task runs the peer's parts, so they must have its shapes
    borrows_parts = True
    extra: str | None = None
    keep_rule = "accuracy"  # how the task decides between this arm and none (orchestrator_free.backbone.decide_keep)

    def __init__(self, borrow: str = "backbone", keep_rule: str | None = None):
        if borrow not in PART_KINDS or (borrow == "task" and type(self) is CrossBackTransfer):
            raise ValueError(f"unknown borrow level {borrow!r}; choose one of {list(PART_KINDS)}")
        self.borrow = borrow
        self.needs = frozenset({borrow})
        if keep_rule is not None:
            self.keep_rule = keep_rule

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        return adapt_on_parts(learner, task, data, payload, opts, generator)


def adapt_on_parts(learner, task: int, data, parts: dict | None, opts: AdaptOptions, generator: torch.Generator,
                   warm_up: Callable[[], dict] | None = None) -> dict:
    """Adapt ``task`` on a peer's ``parts`` (None: on its own weights): inject them under new piggyback
    masks, check they run, refit the head (``head_probe``), then ``warm_up()`` if given (mona's stage 1;
    its facts are kept), then the adaptation epochs. Returns facts worth logging."""
    with torch.no_grad():
        local = {n: t.clone() for n, t in learner.params_for(task).items()}
    learner.begin_adaptation(task, parts, opts.own_weights)
    facts = {}
    try:
        if parts is not None:
            facts = check_injected(learner, task, local)
            if opts.head_probe:
                facts["head_probe_loss"] = fit_head(learner, task, data.train)
        if warm_up is not None:
            facts |= warm_up()
        fit(learner, task, data.train, opts.epochs, opts.train, generator, "adapt")
    finally:
        learner.end_adaptation()
    masks = learner.borrow_masks.get(task)
    if masks:
        kept = sum(int(m.sum()) for m in masks.values())
        facts["mask_kept"] = kept / sum(m.numel() for m in masks.values())
    return facts


def check_injected(learner, task: int, local: dict) -> dict:
    """Every borrowed part is what the task now runs with, and something differs from before."""
    with torch.no_grad():
        running = {n: t.detach() for n, t in learner.params_for(task).items()}
    borrowed = learner.borrowed.get(task, {})
    for name, weight in borrowed.items():
        if not torch.equal(running[name], weight):
            raise InjectionError(f"the task does not run with the borrowed {name}")
    names = sorted(n for n in running if not torch.equal(running[n], local[n]))
    if not names:
        raise InjectionError("the borrowed parts equal the local ones: nothing was transferred")
    changed = sum(int((running[n] != local[n]).sum()) for n in names)
    total = sum(running[n].numel() for n in names)
    return {"borrowed_tensors": len(borrowed), "changed_tensors": len(names), "changed_fraction": changed / total,
            "delta_norm": float(sum(float((running[n] - local[n]).norm()) ** 2 for n in names) ** 0.5)}


class TaskTransfer(CrossBackTransfer):
    """``borrow: task``: run the task on a peer's model of the very same task (backbone, query and head,
    the head's rows in this task's label order; see crossback.orchestrator_free.same_task), then adapt
    on the task's own items. The head is the peer's, so there is no head probe. Adaptation on a few
    items can undo what the peer learned from many: the adapted state is kept only if its validation
    accuracy beats the task as borrowed, otherwise the task keeps the peer's model unchanged (under
    all-ones masks). Where no peer learned the label set, the node borrows ``fallback``'s way instead,
    and keeps that backbone only on a margin of validation items (``keep_rule: margin``): no peer learned
    this task, and a one-item win kept backbones that cost points on held-out data (issue 39).
    The task then keeps the borrowed arm unless ``none`` is significantly better on validation items
    (``keep_rule: sign``): a handful of items must not overrule a model of the very same classes."""

    keep_rule = "sign"
    matches_tasks = True

    def __init__(self):
        super().__init__("task")
        self.fallback = CrossBackTransfer("backbone", keep_rule="margin")

    def as_borrowed(self, learner, task: int, data, parts: dict, opts: AdaptOptions, split=None) -> tuple[float, float]:
        """(accuracy, loss) on ``split`` (default: the validation split) of ``task`` run on ``parts``
        unchanged; the task's state is left as it was."""
        split = data.val if split is None else split
        base = learner.task_state(task)
        try:
            adapt_on_parts(learner, task, data, parts, dataclasses.replace(opts, epochs=0, head_probe=False),
                           torch.Generator().manual_seed(0))
            logits = predict(learner, task, split.inputs)
            return accuracy(logits, split.labels), float(F.cross_entropy(logits, split.labels))
        finally:
            learner.set_task_state(task, base)

    def adapt(self, learner, task, data, payload, opts: AdaptOptions, generator: torch.Generator) -> dict:
        if payload is None:
            return adapt_on_parts(learner, task, data, None, opts, generator)
        base = learner.task_state(task)
        own = dataclasses.replace(opts, head_probe=False)
        facts = adapt_on_parts(learner, task, data, payload, dataclasses.replace(own, epochs=0), generator)
        borrowed_val = accuracy(predict(learner, task, data.val.inputs), data.val.labels)
        facts |= {"val_as_borrowed": borrowed_val, "adapted": False}
        if opts.epochs == 0:
            return facts
        borrowed = learner.task_state(task)
        learner.set_task_state(task, base)
        adapted = adapt_on_parts(learner, task, data, payload, own, generator)
        adapted_val = accuracy(predict(learner, task, data.val.inputs), data.val.labels)
        if adapted_val > borrowed_val:
            return adapted | {"val_as_borrowed": borrowed_val, "val_adapted": adapted_val, "adapted": True}
        learner.set_task_state(task, borrowed)
        return facts | {"val_adapted": adapted_val}
