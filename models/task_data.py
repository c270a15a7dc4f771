"""The task containers: a task's items as tensors (``Split``) and one task's classes and splits
(``TaskData``). ``crossback.data`` builds them from a dataset; the models, the transfer strategies
and the selection read them."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Split:
    inputs: Tensor  # images (N, C, H, W) uint8 (or float in [0, 1]), or byte ids (N, L) long
    labels: Tensor  # (N,) long, 0..num_classes-1
    items: tuple[str, ...] | None = None  # the item id of every sample, where the data has them

    def __len__(self) -> int:
        return int(self.labels.shape[0])



@dataclass
class TaskData:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    # the held-out public items of the task's classes in this node's view (SplitSpec.public_fraction)
    public: Split | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
