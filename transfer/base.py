"""The transfer-strategy interface: what a strategy needs from a peer and how it finishes a task with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from crossback.config.transfer import AdaptationConfig
from crossback.models.learner import ContinualLearner
from crossback.models.methods import TaskData
from crossback.config.model import TrainOptions


class InjectionError(RuntimeError):
    """The borrowed weights did not reach the model (or equal what it already had)."""


@dataclass(frozen=True)
class AdaptOptions:
    epochs: int = 10
    train: TrainOptions = TrainOptions()
    own_weights: bool = True  # also retrain the shared weights the task owns
    head_probe: bool = True  # refit the head on borrowed features before adapting

    @classmethod
    def from_config(cls, cfg: AdaptationConfig, train: TrainOptions) -> "AdaptOptions":
        return cls(cfg.epochs, train, cfg.own_weights, cfg.head_probe)


class TransferStrategy(Protocol):
    name: str
    needs: frozenset[str]  # payload kinds it asks a peer for, e.g. {"kv"}
    borrow: str  # the payload kind selection fetches from each candidate
    any_shape: bool  # reads a peer's matrices of any shape: peers with other K/V shapes are candidates
    borrows_parts: bool  # the task runs the peer's tensors (provenance is recorded), not weights of its own
    # a payload kind fetched after selection, only for the candidates whose arms run (mona: outer_grad);
    # None: what selection fetched is the whole payload
    extra: str | None
    keep_rule: str  # how the task decides between the borrowed arm and none: "accuracy" or "sign" (decide_keep)

    def adapt(self, learner: ContinualLearner, task: int, data: TaskData, payload: dict | None,
              opts: AdaptOptions, generator: torch.Generator) -> dict:
        """Finish ``task`` (already learned locally) with the peer's ``payload`` (None: no peer).
        Changes only that task's stored state; returns facts worth logging."""
        ...
