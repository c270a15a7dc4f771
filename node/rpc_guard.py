"""What every RPC goes through before and after its handler: a request body that does not decode gets
INVALID_ARGUMENT (grpc's default is INTERNAL), and an exception the handler did not turn into a status
is logged with its traceback in the node's event log (``rpc_failed``) before grpc answers UNKNOWN."""
from __future__ import annotations

import traceback

import grpc
from google.protobuf.message import DecodeError

_UNDECODABLE = object()


def _safe(deserializer):
    if deserializer is None:
        return None

    def decode(data: bytes):
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError):
            return _UNDECODABLE
    return decode


def wrap_handler(handler, before, failed=None, deserializer=None):
    """The same unary-request handler (unary or server-streaming response, a non-blocking stream kept
    non-blocking) with ``before(request, context)`` run first and ``failed(context, exc)`` told of an
    exception before it propagates."""
    def report(context, exc):
        if failed is not None:
            failed(context, exc)

    deserializer = deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary(request, context):
            before(request, context)
            try:
                return inner(request, context)
            except Exception as exc:
                report(context, exc)
                raise
        return grpc.unary_unary_rpc_method_handler(unary, deserializer, handler.response_serializer)
    inner_stream = handler.unary_stream
    if getattr(inner_stream, "experimental_non_blocking", False):  # Health/Watch: keeps holding no thread
        def callback_stream(request, context, send_response_callback=None):
            before(request, context)
            try:
                return inner_stream(request, context, send_response_callback=send_response_callback)
            except Exception as exc:
                report(context, exc)
                raise
        callback_stream.experimental_non_blocking = True
        return grpc.unary_stream_rpc_method_handler(callback_stream, deserializer, handler.response_serializer)

    def stream(request, context):
        before(request, context)
        try:
            yield from inner_stream(request, context)
        except Exception as exc:
            report(context, exc)
            raise
    return grpc.unary_stream_rpc_method_handler(stream, deserializer, handler.response_serializer)


class RpcGuard(grpc.ServerInterceptor):
    def __init__(self, emit):
        self.emit = emit  # EventLog.emit

    def _failed(self, method: str, context, exc: BaseException) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is not None:  # context.abort(...): a status the handler chose, not a failure
            return
        self.emit("rpc_failed", method=method, error=f"{type(exc).__name__}: {str(exc)[:500]}",
                  traceback="".join(traceback.format_exception(exc))[-8000:])

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = details.method

        def refuse_undecodable(request, context):
            if request is _UNDECODABLE:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request body does not decode")

        return wrap_handler(handler, refuse_undecodable, lambda context, exc: self._failed(method, context, exc),
                            _safe(handler.request_deserializer))
