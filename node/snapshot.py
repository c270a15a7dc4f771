"""The immutable view a node serves to peers: a reloaded copy of its last finished checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from crossback.models.learner import ContinualLearner

from .checkpoint import load_checkpoint


@dataclass(frozen=True)
class Snapshot:
    version: int  # finished-task count
    learner: ContinualLearner  # a private copy, never trained again
    kv: dict[str, Tensor]  # the last finished task's encoder K and V

    @property
    def task(self) -> int:
        return self.version - 1

    @property
    def finished_tasks(self) -> list[str]:
        return [t.name for t in self.learner.tasks]

    @classmethod
    def from_checkpoint(cls, folder: Path) -> "Snapshot":
        learner, _ = load_checkpoint(folder)
        if not learner.tasks:
            raise ValueError(f"{folder} holds no finished task")
        return cls(len(learner.tasks), learner, learner.extract_kv(len(learner.tasks) - 1))
