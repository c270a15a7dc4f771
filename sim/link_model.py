"""One direction of a device's access link, as a queue with a rate, a propagation delay, jitter and loss.

Every connection of a device shares its link's two directions, so a backbone download and a heartbeat
queue behind each other as they would on one radio. A chunk of bytes leaves the queue after everything
before it has been sent at the link's rate, then arrives ``latency`` +- ``jitter`` later; bytes of one
connection never overtake each other (TCP delivers in order). Loss is emulated at the level TCP shows it
to an application: a chunk that would have lost a packet arrives one retransmission timeout late (the
kernel's minimum, 200 ms, or two round trips of this link if more).
"""
from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass

from crossback.config.scenario import Link

MSS = 1448  # bytes of payload per TCP segment on a 1500-byte Ethernet MTU
MIN_RTO = 0.2  # Linux's minimum retransmission timeout, seconds


@dataclass(frozen=True)
class Shape:
    rate: float | None  # bytes per second; None: unlimited
    latency: float  # seconds, one way
    jitter: float  # seconds, half-width of a uniform spread
    loss: float  # share of packets lost

    @classmethod
    def of(cls, link: Link, up: bool, kernel_rate: bool = False) -> "Shape":
        """``link``'s shape one way; ``kernel_rate``: its rate is enforced elsewhere (a token bucket)."""
        mbit = None if kernel_rate else (link.up_mbit if up else link.down_mbit)
        return cls(mbit * 1e6 / 8 if mbit else None, link.latency_ms / 1e3, link.jitter_ms / 1e3, link.loss)

    @property
    def shaped(self) -> bool:
        return bool(self.rate or self.latency or self.jitter or self.loss)


class Direction:
    """The queue of one direction. ``delivery(n, now)``: when ``n`` bytes handed over at ``now`` arrive."""

    def __init__(self, shape: Shape, rng: random.Random):
        self.shape, self._rng, self._free_at = shape, rng, 0.0
        self._lock = threading.Lock()
        self.bytes = 0
        self.retransmits = 0
        self.overhead = 0.0  # seconds the path itself takes one way, left out of the latency added

    def set(self, shape: Shape) -> None:
        with self._lock:
            self.shape = shape

    def delivery(self, nbytes: int, now: float) -> float:
        with self._lock:
            s = self.shape
            start = max(now, self._free_at)
            sent = start + (nbytes / s.rate if s.rate else 0.0)
            self._free_at = sent
            self.bytes += nbytes
            delay = max(0.0, s.latency - self.overhead) + (self._rng.uniform(-s.jitter, s.jitter) if s.jitter else 0.0)
            if s.loss:
                lost = 1.0 - (1.0 - s.loss) ** math.ceil(max(nbytes, 1) / MSS)
                if self._rng.random() < lost:
                    self.retransmits += 1
                    delay += max(MIN_RTO, 4 * s.latency)
            return sent + max(0.0, delay)
