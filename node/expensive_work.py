"""Admission of the RPCs that cost real work, as a handler sees it: a slot from the node's CallLimiter
(``admit``, one share per caller as ``admission.caller_of`` names it: its address or certificate, never
the id it claims), a share of its memory budget (``memory``), a refusal with the status a peer can act
on, a stop once the caller has gone (``still_wanted``), and the heap given back once the node is quiet."""
from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager

import grpc

from .limits import Busy, CallLimiter, TooLarge
from .memory import trim as trim_memory


class ExpensiveWork:
    def __init__(self, limiter: CallLimiter, node_id: str, on_refused=None):
        """``on_refused(by, reason)``: told of each refusal (the node's metrics)."""
        self.limiter, self.node_id, self.on_refused = limiter, node_id, on_refused
        self._trim_lock, self._trim_timer = threading.Lock(), None

    def refuse(self, exc: Busy, context) -> None:
        """A call the limiter did not admit: UNAVAILABLE (retry later), RESOURCE_EXHAUSTED if it never fits."""
        if self.on_refused is not None:
            self.on_refused("expensive_work", "too_large" if isinstance(exc, TooLarge) else "busy")
        if isinstance(exc, TooLarge):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.node_id}: {exc}")
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.node_id} is busy: {exc}")

    @contextmanager
    def admit(self, caller: str, context):
        """A slot for ``caller`` (``admission.caller_of``); a call whose caller left while it waited ends
        before its body runs."""
        try:
            with self.limiter.admit(caller[:80]):
                self.still_wanted(context)()
                yield
        except Busy as exc:
            self.refuse(exc, context)
        finally:
            if self.limiter.in_flight() == 0 and self.limiter.trim_due():  # drained after real work
                self._trim_when_quiet()

    def still_wanted(self, context):
        """A check for long work to call between items and batches: it ends the call (CANCELLED) once
        the caller has cancelled or its deadline has passed, so no CPU goes to an answer nobody reads."""
        def check() -> None:
            remaining = context.time_remaining()
            if context.is_active() and (remaining is None or remaining > 0):
                return
            if self.on_refused is not None:
                self.on_refused("expensive_work", "caller_gone")
            context.abort(grpc.StatusCode.CANCELLED, f"{self.node_id}: the caller has gone or its deadline passed")
        return check

    def over_budget(self, message: str, context) -> None:
        """A request that would cost more than any request may: RESOURCE_EXHAUSTED, retrying cannot help."""
        if self.on_refused is not None:
            self.on_refused("expensive_work", "over_budget")
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.node_id}: {message}")

    @contextmanager
    def memory(self, nbytes: int, what: str, context):
        """Hold ``nbytes`` of the node's memory budget for expensive work (limits.CallLimiter.reserve)."""
        held = ExitStack()
        try:
            held.enter_context(self.limiter.reserve(nbytes, what))
        except Busy as exc:  # only the reservation's refusal: the body's exceptions pass untouched
            self.refuse(exc, context)
        with held:
            yield

    def _trim_when_quiet(self) -> None:
        """Give the heap back a second from now if no expensive call runs then: a trim in the request
        path cost the next calls their pages (a Classify batch of 32 took 2x as long)."""
        def trim_if_idle():
            if self.limiter.in_flight() == 0:
                trim_memory()

        with self._trim_lock:
            if self._trim_timer is None or not self._trim_timer.is_alive():
                self._trim_timer = threading.Timer(1.0, trim_if_idle)
                self._trim_timer.daemon = True
                self._trim_timer.start()
