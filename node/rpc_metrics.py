"""The interceptors that feed a node's metrics: on the server, every RPC answered, by method and status
code, and its time (``RpcMetrics``); on the client, the bytes of every reply received (``FetchedBytes``).

``RpcMetrics`` is the outermost interceptor, so it also sees the calls admission, PeerAuth and the
request rules turn away. Method names outside this node's services count as ``other``: a caller
choosing names cannot add series. The CLI's clients load this module: it imports no metrics machinery.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import grpc

from crossback.orchestrator_free.reasons import STATUS_CODES
from crossback.proto.v1 import peer_pb2 as pb

if TYPE_CHECKING:
    from .metrics import NodeMetrics

OTHER = "other"  # the label value of whatever is not on a fixed list

_PEER = pb.DESCRIPTOR.services_by_name["PeerService"]
METHODS = {f"/{_PEER.full_name}/{m.name}": m.name for m in _PEER.methods} | {
    "/grpc.health.v1.Health/Check": "Health.Check", "/grpc.health.v1.Health/Watch": "Health.Watch"}
_KEPT = ("experimental_thread_pool", "experimental_non_blocking")  # where and how grpc runs a behaviour


def _code(context, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        return "UNKNOWN" if failed else "OK"
    name = getattr(code, "name", "")
    return name if name in STATUS_CODES else OTHER


class RpcMetrics(grpc.ServerInterceptor):
    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = METHODS.get(details.method, OTHER)
        done = self.metrics.handled
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_counted(handler.unary_unary, method, done),
                                                       handler.request_deserializer, handler.response_serializer)
        inner_stream = handler.unary_stream
        if getattr(inner_stream, "experimental_non_blocking", False):  # Health/Watch: counted when it opens
            return grpc.unary_stream_rpc_method_handler(_counted(inner_stream, method, done),
                                                        handler.request_deserializer, handler.response_serializer)

        def stream(request, context):
            started, failed, code = time.perf_counter(), True, None
            try:
                yield from inner_stream(request, context)
                failed = False
            except GeneratorExit:  # the caller went away mid-stream
                code = "CANCELLED"
                raise
            finally:
                done(method, code or _code(context, failed), time.perf_counter() - started)
        return grpc.unary_stream_rpc_method_handler(_keep(inner_stream, stream), handler.request_deserializer,
                                                    handler.response_serializer)


def _counted(inner, method: str, done):
    """``inner`` (a unary behaviour, or a non-blocking stream's opening) counted and timed when it returns."""
    def call(request, context, *args, **kwargs):
        started, failed = time.perf_counter(), True
        try:
            result = inner(request, context, *args, **kwargs)
            failed = False
            return result
        finally:
            done(method, _code(context, failed), time.perf_counter() - started)
    return _keep(inner, call)


def _keep(inner, outer):
    """``outer`` with the attributes grpc reads off ``inner`` (its thread pool, non-blocking)."""
    for name in _KEPT:
        if hasattr(inner, name):
            setattr(outer, name, getattr(inner, name))
    return outer


# what each reply carries, as the serving side's payload log names it (FetchPayload: the kind asked for)
REPLY_KINDS = {"GetInfo": "info", "ExchangePeers": "membership", "ProbePeer": "membership", "FetchKV": "kv",
               "ProbeDDV": "ddv", "FetchOuterGrad": "outer_grad", "FetchPublicFeatures": "public_features",
               "FetchSharedFeatures": "features", "MatchTask": "task_match", "FetchTask": "task",
               "Classify": "classify"}


def _reply_kind(method: str, request) -> str:
    name = METHODS.get(method, OTHER)
    return getattr(request, "kind", OTHER) if name == "FetchPayload" else REPLY_KINDS.get(name, OTHER)


class FetchedBytes(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The client side: ``count(kind, nbytes)`` for every reply message a peer sends this node (its
    serialized size), however the call ends."""

    def __init__(self, count):
        self.count = count

    def intercept_unary_unary(self, continuation, details, request):
        kind, outcome = _reply_kind(details.method, request), continuation(details, request)

        def counted(future):
            if future.exception() is None:
                self.count(kind, future.result().ByteSize())
        outcome.add_done_callback(counted)
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        return _CountedStream(continuation(details, request), _reply_kind(details.method, request), self.count)


class _CountedStream:
    """A response stream (a grpc Call and an iterator) that counts each message as it is read."""

    def __init__(self, call, kind: str, count):
        self._call, self._kind, self._count = call, kind, count

    def __iter__(self):
        return self

    def __next__(self):
        message = next(self._call)
        self._count(self._kind, message.ByteSize())
        return message

    def __getattr__(self, name):
        return getattr(self._call, name)
