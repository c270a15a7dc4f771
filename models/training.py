"""Plain supervised loops over in-memory tensors: fit one task, predict, score."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from crossback.config.model import TrainOptions

from .learner import ContinualLearner
from .optim import Adam
from .parallel import DataParallel, as_parameters, distributed_forward
from .task_data import Split

# progress(phase, epoch, epochs, loss, accuracy): called once per epoch, with the epoch's mean training
# loss and its accuracy on the training batches as they were trained (Avalanche's Top1_Acc_Epoch)
Progress = Callable[[str, int, int, float, float], None]


# before_step(step) / after_step(step): called around every optimiser step, counted from 0
StepHook = Callable[[int], None]


def fit(learner: ContinualLearner, task: int, data: Split, epochs: int, opts: TrainOptions,
        generator: torch.Generator, phase: str = "train", progress: Progress | None = None,
        before_step: StepHook | None = None, after_step: StepHook | None = None,
        parallel: DataParallel | None = None) -> float:
    """Train the active task for ``epochs``; returns the mean loss of the last epoch. The hooks let a
    transfer strategy act between steps (MergeNet regenerates weights there). ``parallel``: this is one
    rank of a node's process group; every rank calls fit alike and trains its shard of each batch."""
    if task != learner.active:
        raise RuntimeError(f"task {task} is not the task being learned")
    if parallel is None:
        return _fit(learner, task, data, epochs, opts, generator, phase, progress, before_step, after_step)
    with as_parameters(learner, task):
        return _fit(learner, task, data, epochs, opts, generator, phase, progress, before_step, after_step, parallel)


def _fit(learner, task, data, epochs, opts, generator, phase, progress, before_step, after_step,
         parallel: DataParallel | None = None) -> float:
    params, scores = learner.trainable()
    groups = [{"params": params, "lr": opts.lr}]
    if scores:
        groups.append({"params": scores, "lr": opts.mask_lr})
    forward = (lambda x: learner.logits(x, task)) if parallel is None else \
        distributed_forward(learner, task, params + scores, parallel)
    # No weight decay: a frozen weight gets an exact zero gradient, and Adam then leaves it untouched.
    optimizer = Adam(groups)
    n = len(data)
    last = float("nan")
    step = 0
    for epoch, batches in enumerate(epoch_batches(n, opts.batch_size, epochs, generator)):
        total, seen, correct = 0.0, 0, 0
        for idx in batches:
            weight = None
            if parallel is not None:
                idx, weight = parallel.shard(idx)
            x, y = data.inputs[idx].to(learner.device), data.labels[idx].to(learner.device)
            if before_step:
                before_step(step)
            logits = forward(x)
            if weight is None:
                loss = F.cross_entropy(logits, y)
                batch_loss, items = float(loss.detach()) * len(idx), len(idx)
            else:
                summed = F.cross_entropy(logits, y, reduction="sum")
                loss = summed * weight
                batch_loss, items = (float(summed.detach()), len(idx)) if weight else (0.0, 0)
            if items:
                correct += int((logits.detach().argmax(1) == y).sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step:
                after_step(step)
            step += 1
            total += batch_loss
            seen += items
        if parallel is not None:
            total, seen, correct = parallel.sum(total, seen, correct)
        last = total / max(seen, 1)
        if progress:
            progress(phase, epoch + 1, epochs, last, correct / max(seen, 1))
    return last


def epoch_batches(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[list[Tensor]]:
    """Per epoch, the minibatches of a fresh shuffle of ``range(n)`` (the one epoch loop every trainer
    uses). Each epoch's permutation is drawn when that epoch starts, so a trainer that also draws from
    ``generator`` inside an epoch gets the same numbers as if it had written the loop itself."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield [order[start : start + batch_size] for start in range(0, n, batch_size)]


@torch.no_grad()
def features(learner: ContinualLearner, task: int, inputs: Tensor, params: dict | None = None,
             batch_size: int = 256) -> Tensor:
    """What the task's head reads, for every input: the decoded query (N, queries_dim). ``params``: run
    with these tensors instead of the task's own (e.g. a candidate's borrowed parts swapped in)."""
    params = learner.params_for(task) if params is None else params
    out = [learner.call(learner.net, params, (inputs[s : s + batch_size].to(learner.device),), {"features": True})
           for s in range(0, inputs.shape[0], batch_size)]
    return torch.cat(out).cpu()


def fit_head(learner: ContinualLearner, task: int, data: Split, steps: int = 300, lr: float = 0.05,
             weight_decay: float = 1e-3) -> float:
    """Linear probe: refit the head of the task being adapted, from zero, on the features its weights
    give now (full batch, so deterministic); returns the final training loss. A head learned on one
    body reads another body's features as noise; with a few items per class, a few epochs of joint
    training cannot re-learn it, a convex fit on fixed features can (linear probing before fine-tuning)."""
    if task != learner.active:
        raise RuntimeError(f"task {task} is not the task being adapted")
    f = features(learner, task, data.inputs).to(learner.device)
    y = data.labels.to(learner.device)
    head_w, head_b = learner.task_params[task]["head.weight"], learner.task_params[task]["head.bias"]
    w, b, loss = fit_linear(f, y, head_w.shape[0], steps, lr, weight_decay)
    with torch.no_grad():
        head_w.copy_(w)
        head_b.copy_(b)
    return loss


def fit_linear(x: Tensor, y: Tensor, classes: int, steps: int = 300, lr: float = 0.05,
               weight_decay: float = 1e-3) -> tuple[Tensor, Tensor, float]:
    """(weight, bias, final loss) of a softmax classifier fit from zero on fixed inputs ``x`` (full
    batch, so deterministic)."""
    w = torch.zeros(classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(classes, device=x.device, requires_grad=True)
    optimizer = Adam([w, b], lr=lr)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w**2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return w.detach(), b.detach(), float(loss.detach())


@torch.no_grad()
def predict(learner: ContinualLearner, task: int, inputs: Tensor, batch_size: int = 256) -> Tensor:
    chunks = [learner.logits(inputs[s : s + batch_size].to(learner.device), task).cpu()
              for s in range(0, inputs.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, learner.tasks[task].num_classes)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    if labels.numel() == 0:
        raise ValueError("cannot score an empty split")
    return float((logits.argmax(dim=1) == labels).float().mean())


def evaluate(learner: ContinualLearner, task: int, data: Split, batch_size: int = 256) -> float:
    return accuracy(predict(learner, task, data.inputs, batch_size), data.labels)
