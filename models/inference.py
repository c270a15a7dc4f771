"""A finished task as a plain classifier: its folded model (``.fold``), its classes and its input view."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from crossback.config.data import View

from .fold import fold
from .prediction import Prediction


@dataclass(frozen=True)
class TaskModel:
    task: str
    classes: list[str]  # label order
    view: View
    model: nn.Module  # folded, eval mode, on ``device``
    device: torch.device
    checkpoint: Path | None = None


def task_model(learner, index: int, view: View, device: torch.device, checkpoint: Path | None = None) -> TaskModel:
    """Finished task ``index`` of ``learner`` folded into a plain model on ``device``."""
    record = learner.tasks[index]
    classes = list(record.classes) if record.classes else [str(k) for k in range(record.num_classes)]
    return TaskModel(record.name, classes, view, fold(learner, index).to(device), device, checkpoint)


@torch.no_grad()
def classify(tm: TaskModel, inputs: Tensor, top: int = 3, batch_size: int = 256,
             check: Callable[[], None] = lambda: None) -> list[Prediction]:
    """Predictions for ``inputs``, ``batch_size`` at a time; ``check()`` runs before each batch (it
    raises to stop the work)."""
    out = []
    k = max(1, min(top, len(tm.classes)))
    for start in range(0, inputs.shape[0], batch_size):
        check()
        logits = tm.model(inputs[start:start + batch_size].to(tm.device)).float().cpu()
        probs = logits.softmax(dim=1)
        values, index = probs.topk(k, dim=1)
        for row, (v, i) in enumerate(zip(values.tolist(), index.tolist())):
            best = int(logits[row].argmax())  # argmax of the logits: what evaluate scores
            out.append(Prediction(tm.classes[best], [(tm.classes[c], p) for c, p in zip(i, v)]))
    return out
