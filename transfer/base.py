"""The transfer-strategy interface: what a strategy needs from a peer and how it finishes a task with it."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from crossback.config.model import TrainOptions
from crossback.config.transfer import AdaptationConfig
from crossback.models.learner import ContinualLearner
from crossback.models.task_data import TaskData

from .pairs import Pairs


class InjectionError(RuntimeError):
    """The borrowed weights did not reach the model (or equal what it already had)."""


@dataclass(frozen=True)
class AdaptOptions(AdaptationConfig):
    """The ``adaptation:`` budget every arm finishes a task with, and the training options it runs with."""

    train: TrainOptions = TrainOptions()

    @classmethod
    def from_config(cls, cfg: AdaptationConfig, train: TrainOptions) -> "AdaptOptions":
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, train=train)


@dataclass(frozen=True)
class Extra:
    """What a strategy's ``extra`` payload kind brought for one candidate (``fetch_extra``)."""

    parts: dict[str, torch.Tensor]  # the borrowed parts the arm runs on (may replace what selection fetched)
    payload: dict[str, torch.Tensor]  # what ``adapt`` receives: the parts plus the extra tensors
    summary: dict  # facts for the selection log (JSON-able)
    snapshot_version: int  # the peer snapshot both came from
    nbytes: int  # tensor bytes that crossed the wire for it


class TransferStrategy(Protocol):
    """Everything selection and the node need of a strategy. ``Strategy`` gives the defaults."""

    name: str
    needs: frozenset[str]  # payload kinds a candidate must serve, e.g. {"kv"}; others are skipped with that reason
    borrow: str  # the payload kind selection fetches from each candidate it ranks or picks
    any_shape: bool  # reads a peer's matrices of any shape: peers with other K/V shapes are candidates
    borrows_parts: bool  # the task runs the peer's tensors (provenance is recorded), not weights of its own
    # the payload is a teacher's features on items both sides hold (``pairs_for`` names them), not tensors
    borrows_features: bool
    # a payload kind fetched after selection, only for the candidates whose arms run (``fetch_extra``);
    # None: what selection fetched is the whole payload
    extra: str | None
    keep_rule: str  # how the task decides between the borrowed arm and none: "accuracy", "sign" or "margin" (decide_keep)
    # first look for a peer that learned this very label set (salted class hashes) and borrow its whole task,
    # judged by ``as_borrowed``; where none did, borrow the way ``fallback`` does
    matches_tasks: bool
    fallback: "TransferStrategy | None"

    def pairs_for(self, data: TaskData) -> Pairs | None:
        """The items to ask every candidate about for this task (feature-borrowing strategies; None: none)."""
        ...

    def as_borrowed(self, learner: ContinualLearner, task: int, data: TaskData, parts: dict, opts: AdaptOptions,
                    split=None) -> tuple[float, float]:
        """(accuracy, loss) of ``task`` run on a matched peer's ``parts`` unchanged (``matches_tasks`` only)."""
        ...

    def fetch_extra(self, client, peer: str, parts: dict[str, torch.Tensor] | None, snapshot_version: int,
                    own: dict[str, tuple[int, ...]]) -> Extra:
        """Fetch the ``extra`` kind from ``client`` (a ``crossback.node.transport.PeerClient``) for a
        candidate whose ``parts`` (from ``snapshot_version``) selection holds; ``own``: our part shapes.
        Raises WireError (malformed) or PeerCallError (the call failed)."""
        ...

    def adapt(self, learner: ContinualLearner, task: int, data: TaskData, payload: dict | None,
              opts: AdaptOptions, generator: torch.Generator) -> dict:
        """Finish ``task`` (already learned locally) with the peer's ``payload`` (None: no peer).
        Changes only that task's stored state; returns facts worth logging."""
        ...


class Strategy:
    """The interface's defaults: a strategy that borrows tensors of our shapes, whole, at selection."""

    name: str
    needs: frozenset[str] = frozenset()
    any_shape = False
    borrows_parts = True
    borrows_features = False
    extra: str | None = None
    keep_rule = "accuracy"
    matches_tasks = False
    fallback: TransferStrategy | None = None

    def pairs_for(self, data: TaskData) -> Pairs | None:
        return None

    def as_borrowed(self, learner: ContinualLearner, task: int, data: TaskData, parts: dict, opts: AdaptOptions,
                    split=None) -> tuple[float, float]:
        raise ValueError(f"transfer strategy {self.name!r} does not borrow whole tasks (matches_tasks is false)")

    def fetch_extra(self, client, peer, parts, snapshot_version, own) -> Extra:
        raise ValueError(f"transfer strategy {self.name!r} has no extra payload kind")
