"""Transfer strategies by the name a node's config uses (``transfer.strategy``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from crossback.models.borrowed import PART_KINDS
from crossback.models.bounds import bounded

from .crossback import CrossBackTransfer, TaskTransfer
from .freqkd import FreqKDConfig, FreqKDTransfer
from .mergenet import MergeNetConfig, MergeNetTransfer
from .mona import MonaConfig, MonaTransfer

STRATEGIES = {"crossback": CrossBackTransfer, "mergenet": MergeNetTransfer, "mona": MonaTransfer, "freqkd": FreqKDTransfer}


@dataclass(frozen=True)
class TransferConfig:
    """The ``transfer:`` section: how a task borrows from the chosen peer."""

    strategy: str = bounded("crossback", choices=tuple(STRATEGIES))
    # crossback: which of the peer's parts the task runs on (see crossback.models.borrowed); backbone is
    # the level at which borrowing paid in the transfer benchmark, kv (the paper's unit) did not; task:
    # a peer's model of the same label set, head included (falls back to backbone where none matches)
    borrow: str = bounded("backbone", choices=PART_KINDS)
    mergenet: MergeNetConfig = field(default_factory=MergeNetConfig)
    mona: MonaConfig = field(default_factory=MonaConfig)
    freqkd: FreqKDConfig = field(default_factory=FreqKDConfig)


def make_strategy(cfg: TransferConfig, public_set: str = "", pair_secret: bytes = b""):
    """The configured strategy; ``public_set``: the name of the public paired set this node holds out
    (crossback.data.public_set), which freqkd with ``pairs: public`` needs; ``pair_secret``: the swarm's
    (crossback.orchestrator_free.pairs), which ``pairs: shared_ids`` needs."""
    if cfg.strategy == "freqkd":
        return FreqKDTransfer(cfg.freqkd, public_set, pair_secret)
    if cfg.strategy == "mergenet":
        return MergeNetTransfer(cfg.mergenet)
    if cfg.strategy == "mona":
        return MonaTransfer(cfg.mona)
    if cfg.borrow == "task":
        return TaskTransfer()
    return CrossBackTransfer(borrow=cfg.borrow)
