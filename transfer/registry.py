"""Transfer strategies by the name a node's config uses (``transfer.strategy``)."""
from __future__ import annotations

from .crossback import CrossBackTransfer

STRATEGIES = {"crossback": CrossBackTransfer}
