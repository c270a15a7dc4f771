"""The immutable view a node serves to peers: a reloaded copy of its last finished checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from torch import Tensor

from crossback.models.borrowed import BORROWED_EVENT, part_names
from crossback.models.learner import ContinualLearner
from crossback.models.persistence import load_checkpoint
from crossback.models.task_data import Split


@dataclass(frozen=True)
class Snapshot:
    version: int  # finished-task count
    learner: ContinualLearner  # a private copy, never trained again
    kv: dict[str, Tensor]  # the last finished task's encoder K and V
    # the last finished task's labelled training items: used here (MoNA's outer gradient), never sent
    data: Split | None = None
    # every item of the public paired set in this node's view (served as teacher features), or None
    public: Split | None = None

    @property
    def task(self) -> int:
        return self.version - 1

    @property
    def finished_tasks(self) -> list[str]:
        return [t.name for t in self.learner.tasks]

    def part_shapes(self, kind: str) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape of payload ``kind``, without copying anything."""
        shapes = self._shapes
        return {n: shapes[n] for n in part_names(kind, shapes)}

    @cached_property
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        return self.learner.part_shapes(self.task)

    def parts(self, kind: str) -> dict[str, Tensor]:
        """Payload ``kind`` as the last finished task runs it (see crossback.models.borrowed)."""
        return self.learner.extract_parts(part_names(kind, self.learner.part_shapes(self.task)), self.task)

    def origins(self) -> dict[str, str]:
        """Tensor name -> the node that learned it, for the tensors the last task borrowed."""
        events = [e for e in self.learner.tasks[self.task].events if e.get("event") == BORROWED_EVENT]
        return dict(events[-1]["origins"]) if events else {}

    @classmethod
    def from_checkpoint(cls, folder: Path, data: Split | None = None, public: Split | None = None) -> "Snapshot":
        learner, _ = load_checkpoint(folder)
        if not learner.tasks:
            raise ValueError(f"{folder} holds no finished task")
        return cls(len(learner.tasks), learner, learner.extract_kv(len(learner.tasks) - 1), data, public)
