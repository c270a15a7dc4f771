"""Transfer strategies by the name a node's config uses (``transfer.strategy``)."""
from __future__ import annotations

from dataclasses import dataclass

from crossback.models.bounds import bounded

from .crossback import CrossBackTransfer

STRATEGIES = {"crossback": CrossBackTransfer}


@dataclass(frozen=True)
class TransferConfig:
    """The ``transfer:`` section: how a task borrows from the chosen peer."""

    strategy: str = bounded("crossback", choices=tuple(STRATEGIES))
