"""Serving MoNA's outer-loss gradient: computed on this node's own items, bounded, once per snapshot."""
from __future__ import annotations

import threading

from crossback.config.node import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES
from crossback.transfer.alignment import OuterGradient, outer_gradient

from .snapshot import Snapshot

# batches are drawn in an order seeded by the snapshot version alone, so every caller gets the same answer
ORDER_SALT = 7_919


class OuterGradService:
    """Answers FetchOuterGrad: at most ``max_batches`` batches of ``batch_size`` items per request, and
    each (snapshot, batch count) is computed once however many peers ask (a peer cannot make this node
    do more than ``max_batches`` forward/backward passes per snapshot and batch count)."""

    def __init__(self, max_batches: int = DEFAULT_BATCHES, batch_size: int = DEFAULT_BATCH_SIZE):
        self.max_batches, self.batch_size = max_batches, batch_size
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int], OuterGradient] = {}

    def batches_for(self, requested: int) -> int:
        return self.max_batches if requested <= 0 else min(requested, self.max_batches)

    def get(self, snap: Snapshot, requested: int) -> OuterGradient:
        key = (snap.version, self.batches_for(requested))
        with self._lock:  # one computation at a time; the answer is reused by every later caller
            if key not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k[0] == snap.version}
                self._cache[key] = outer_gradient(snap.learner, snap.task, snap.data, key[1], self.batch_size,
                                                  seed=snap.version * ORDER_SALT)
            return self._cache[key]
