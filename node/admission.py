"""Which worker threads an RPC may use, decided before it takes one.

Every call belongs to one class, and each class has a thread pool and a queue bound of its own, so no
class can take another's capacity:

- ``health``: ``grpc.health.v1.Health/Check`` (the compose healthcheck, the CLI's ``health``);
- ``watch``: ``Health/Watch``, served non-blocking (an open stream holds no thread), at most
  ``watch_total`` open streams and ``watch_per_caller`` per caller;
- ``bulk``: the RPCs that cost real work (forward passes, tensor streams), further limited by the
  node's CallLimiter and memory budget;
- ``control``: everything else (GetInfo, ExchangePeers, ProbePeer, MatchTask).

A call whose class has ``queue`` calls waiting for a thread already is refused at once with
UNAVAILABLE (the status clients retry with backoff), on a separate small pool, without waiting anywhere. The server-wide
``maximum_concurrent_rpcs`` (which refuses every method alike) is set above the sum of the class
bounds, so it is never what refuses a health check.

A caller is its certificate's node id under TLS, else its IP address (a claimed id costs nothing).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
BULK_METHODS = frozenset(f"/crossback.v1.PeerService/{m}" for m in (
    "FetchKV", "FetchPayload", "FetchTask", "FetchOuterGrad", "FetchPublicFeatures", "FetchSharedFeatures",
    "ProbeDDV", "Classify"))


@dataclass(frozen=True)
class ClassLimits:
    workers: int
    queue: int  # calls that may wait for a worker; more are refused at once


@dataclass(frozen=True)
class AdmissionLimits:
    health: ClassLimits = ClassLimits(workers=2, queue=256)
    control: ClassLimits = ClassLimits(workers=4, queue=512)
    bulk: ClassLimits = ClassLimits(workers=6, queue=12)
    watch: ClassLimits = ClassLimits(workers=2, queue=512)  # threads only while a stream opens
    watch_total: int = 512  # an open non-blocking stream costs a callback, not a thread
    watch_per_caller: int = 128
    refusers: int = 2

    def capacity(self) -> int:
        """Calls the classes can hold at once (running and queued); the server-wide cap sits above it."""
        return sum(c.workers + c.queue for c in (self.health, self.control, self.bulk, self.watch)) + 1024


class CountingPool(ThreadPoolExecutor):
    """A thread pool that knows how many of its tasks are not finished yet (queued or running)."""

    def __init__(self, workers: int, name: str):
        super().__init__(max_workers=workers, thread_name_prefix=f"rpc-{name}")
        self.workers = workers
        self._pending = 0
        self._count_lock = threading.Lock()

    @property
    def pending(self) -> int:
        with self._count_lock:
            return self._pending

    def _done(self, _future) -> None:
        with self._count_lock:
            self._pending -= 1

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            self._pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future


def caller_of(context) -> str:
    """The certificate's node id (TLS), else the caller's IP address without its port."""
    names = context.auth_context().get("x509_common_name") or []
    if len(names) == 1:
        return "id:" + names[0].decode("utf-8", "replace")[:64]
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return "ip:" + rest.rpartition("]")[0].lstrip("[")
    return "ip:" + rest.rpartition(":")[0] if kind == "ipv4" else "other:" + peer[:64]


class Admission(grpc.ServerInterceptor):
    def __init__(self, limits: AdmissionLimits = AdmissionLimits(), on_refused=None):
        """``on_refused(by, reason)``: told of each refusal (the node's metrics)."""
        self.limits, self.on_refused = limits, on_refused
        self.pools = {name: CountingPool(getattr(limits, name).workers, name)
                      for name in ("health", "control", "bulk", "watch")}
        self._refusers = CountingPool(limits.refusers, "refuse")
        self._watch_lock = threading.Lock()
        self._watching: dict[str, int] = {}

    def close(self) -> None:
        for pool in (*self.pools.values(), self._refusers):
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def class_of(method: str) -> str:
        if method == HEALTH_CHECK:
            return "health"
        if method == HEALTH_WATCH:
            return "watch"
        return "bulk" if method in BULK_METHODS else "control"

    def open_watches(self) -> int:
        with self._watch_lock:
            return sum(self._watching.values())

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        name = self.class_of(details.method)
        pool = self.pools[name]
        if pool.pending >= pool.workers + getattr(self.limits, name).queue:
            self._refused(name)
            return self._refusal(handler, f"{details.method}: {name} calls are at their bound "
                                          f"({pool.pending} running or queued); retry later")
        if name == "watch":
            return self._watch(handler, pool)
        return _on_pool(handler, pool)

    def _refused(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused("admission", reason)

    def _refusal(self, handler, message: str):
        def refuse(request, context, *_callback):
            context.abort(grpc.StatusCode.UNAVAILABLE, message)
        if handler.response_streaming:
            return _with_pool(grpc.unary_stream_rpc_method_handler(
                _non_blocking(refuse), handler.request_deserializer, handler.response_serializer), self._refusers)
        return _with_pool(grpc.unary_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer), self._refusers)

    def _watch(self, handler, pool):
        """A Watch stream, non-blocking when the servicer supports it, counted while it is open."""
        inner = handler.unary_stream
        limits = self.limits

        def watch(request, context, send_response_callback=None):
            caller = caller_of(context)
            with self._watch_lock:
                total = sum(self._watching.values())
                mine = self._watching.get(caller, 0)
                refused = ("open Watch streams are at the node's bound" if total >= limits.watch_total else
                           "this caller has its bound of open Watch streams" if mine >= limits.watch_per_caller
                           else None)
                if refused is None:
                    self._watching[caller] = mine + 1
            if refused:
                self._refused("watch_streams")
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{refused} ({limits.watch_total} in all, "
                                                                  f"{limits.watch_per_caller} per caller)")

            def closed():
                with self._watch_lock:
                    left = self._watching.get(caller, 1) - 1
                    if left > 0:
                        self._watching[caller] = left
                    else:
                        self._watching.pop(caller, None)
            context.add_callback(closed)
            if send_response_callback is None:  # a servicer without the non-blocking form
                return inner(request, context)
            return inner(request, context, send_response_callback=send_response_callback)

        if getattr(inner, "experimental_non_blocking", False):
            watch.experimental_non_blocking = True
        return _with_pool(grpc.unary_stream_rpc_method_handler(
            watch, handler.request_deserializer, handler.response_serializer), pool)


def _non_blocking(fn):
    fn.experimental_non_blocking = True
    return fn


def _with_pool(handler, pool):
    behavior = handler.unary_unary or handler.unary_stream
    behavior.experimental_thread_pool = pool
    return handler


def _on_pool(handler, pool):
    """The same handler, run on ``pool``; the behaviour is wrapped so the attribute does not leak onto
    the servicer's own method."""
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary(request, context):
            return inner(request, context)
        return _with_pool(grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer), pool)
    inner_stream = handler.unary_stream
    if getattr(inner_stream, "experimental_non_blocking", False):
        def callback_stream(request, context, send_response_callback=None):
            return inner_stream(request, context, send_response_callback=send_response_callback)
        callback_stream.experimental_non_blocking = True
        return _with_pool(grpc.unary_stream_rpc_method_handler(
            callback_stream, handler.request_deserializer, handler.response_serializer), pool)

    def stream(request, context):
        return inner_stream(request, context)
    return _with_pool(grpc.unary_stream_rpc_method_handler(
        stream, handler.request_deserializer, handler.response_serializer), pool)
