"""Admission for the RPCs that cost a node real work (a forward pass, a tensor stream): a small bounded
pool, so that however many of them arrive, worker threads stay free for Health and ExchangePeers.

At most ``slots`` such calls run at once and at most ``waiting`` more wait for a slot (up to ``wait``
seconds); at most ``per_caller`` are in flight for one caller id. Anything beyond is refused at once
with UNAVAILABLE (the client's retry-with-backoff status): a refused call holds no thread.

Memory: a running call also reserves the bytes it is estimated to hold (a probe's tokens and
activations, a payload's encoded chunks) from a budget of ``memory_mib``; it waits (within ``wait``)
until that much is free, and one that alone exceeds the budget is refused (``TooLarge``).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from crossback.config.node import CallLimits


class Busy(Exception):
    """The call was not admitted; the message says which limit it met."""


class TooLarge(Busy):
    """The call alone would exceed the memory budget: retrying cannot help."""


class CallLimiter:
    def __init__(self, limits: CallLimits = CallLimits()):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.slots)
        self._lock = threading.Lock()
        self._admitted = 0  # running or waiting
        self._per_caller: dict[str, int] = {}
        self._memory = threading.Condition()
        self._reserved = 0  # bytes
        self._churn = 0  # bytes reserved since the heap was last trimmed

    def _enter(self, caller: str) -> None:
        lim = self.limits
        with self._lock:
            if self._per_caller.get(caller, 0) >= lim.per_caller:
                raise Busy(f"caller {caller[:64]!r} already has {lim.per_caller} expensive calls in flight")
            if self._admitted >= lim.slots + lim.waiting:
                raise Busy(f"{self._admitted} expensive calls running or waiting; retry later")
            self._admitted += 1
            self._per_caller[caller] = self._per_caller.get(caller, 0) + 1

    def _leave(self, caller: str) -> None:
        with self._lock:
            self._admitted -= 1
            left = self._per_caller[caller] - 1
            if left:
                self._per_caller[caller] = left
            else:
                del self._per_caller[caller]

    @contextmanager
    def admit(self, caller: str):
        """Hold a slot for the body of the ``with``; raises Busy when the call is not admitted."""
        self._enter(caller)
        try:
            if not self._slots.acquire(timeout=self.limits.wait):
                raise Busy(f"no free slot within {self.limits.wait:g} s; retry later")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._leave(caller)

    @contextmanager
    def reserve(self, nbytes: int, what: str = "this call"):
        """Hold ``nbytes`` of the memory budget for the body of the ``with``; Busy when it is not free
        within ``wait`` seconds, TooLarge when it exceeds the whole budget."""
        budget = self.limits.memory_mib << 20
        if nbytes > budget:
            raise TooLarge(f"{what} needs about {nbytes / 2**20:.0f} MiB, more than the node's budget of "
                           f"{self.limits.memory_mib} MiB for expensive calls")
        with self._memory:
            if not self._memory.wait_for(lambda: self._reserved + nbytes <= budget, timeout=self.limits.wait):
                raise Busy(f"{self._reserved / 2**20:.0f} of {self.limits.memory_mib} MiB held by running calls; "
                           "retry later")
            self._reserved += nbytes
            self._churn += nbytes
        try:
            yield
        finally:
            with self._memory:
                self._reserved -= nbytes
                self._memory.notify_all()

    def trim_due(self, threshold: int = 64 << 20) -> bool:
        """Whether calls reserved ``threshold`` bytes since the last time this said so (trimming the heap
        costs about a millisecond: worth it after a lot of work, not after every small call)."""
        with self._memory:
            if self._churn < threshold:
                return False
            self._churn = 0
            return True

    def reserved(self) -> int:
        with self._memory:
            return self._reserved

    def in_flight(self) -> int:
        with self._lock:
            return self._admitted
