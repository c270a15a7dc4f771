"""Which peers one selection probes when the swarm is larger than ``selection.max_candidates``.

A selection probes at most M peers, so its cost is O(M) whatever the swarm's size. The M are the first
of the alive peers in this order:

1. the peer this node chose last time (what worked is tried again);
2. peers not known to be unfit before peers that an earlier probe skipped (another genesis, other K/V
   shapes, a payload kind they do not serve, no finished task: such a peer may have changed, so it is
   only put last, not dropped);
3. peers never probed before peers probed earlier, and among those the least recently probed first
   (the node rotates through the swarm over its tasks);
4. ties by a seeded draw: the first 8 bytes of blake2b("<seed>:<task>:<peer id>"), as an unsigned
   big-endian integer, smallest first.

The history lives in one node's memory (one instance per node; nothing global).
"""
from __future__ import annotations

import hashlib


class ProbeHistory:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._round = 0
        self._last: dict[str, int] = {}  # peer -> the selection round it was last probed in
        self._unfit: set[str] = set()
        self._chosen: str | None = None

    def _draw(self, task: int, peer: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{self.seed}:{task}:{peer}".encode()).digest()[:8], "big")

    def pick(self, peers: list[tuple[str, str]], limit: int, task: int) -> list[tuple[str, str]]:
        """The peers ``(node_id, address)`` to probe, at most ``limit`` (0: all), in the order above."""
        order = sorted(peers, key=lambda p: (p[0] != self._chosen, p[0] in self._unfit, self._last.get(p[0], -1),
                                             self._draw(task, p[0])))
        return order[:limit] if limit else order

    def record(self, probed, chosen: str | None) -> None:
        """Remember one selection: who was probed, who was unfit (skipped by an eligibility rule), whom
        it chose."""
        self._round += 1
        for cand in probed:
            self._last[cand.peer] = self._round
            if cand.failure is not None and cand.failure.skipped:
                self._unfit.add(cand.peer)
            else:
                self._unfit.discard(cand.peer)
        self._chosen = chosen

    def forget(self, alive: set[str]) -> None:
        """Drop what is known of peers no longer alive (the history stays as large as the swarm view)."""
        for peer in [p for p in self._last if p not in alive]:
            self._last.pop(peer, None)
            self._unfit.discard(peer)
