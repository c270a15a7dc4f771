"""The checks every peer request passes before a handler does any work: protocol version, the caller's
id, what this node serves, and that it has a published snapshot recent enough. Each failure aborts the
call with the status a peer can act on."""
from __future__ import annotations

from typing import Callable

import grpc

from crossback.orchestrator_free.identity import node_id_problem

from .serde import PROTOCOL
from .snapshot import Snapshot


class RequestRules:
    def __init__(self, node_id: str, serve: tuple[str, ...], snapshot: Callable[[], Snapshot | None]):
        self.node_id, self.serve, self._snapshot = node_id, serve, snapshot

    def check(self, request, context) -> None:
        """Protocol version, and the caller's id (if the message has one) before it is used or logged."""
        self.protocol(request.protocol, context)
        caller = getattr(request, "caller_id", "")
        if caller and node_id_problem(caller):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"caller_id: {node_id_problem(caller)}")

    def protocol(self, protocol: int, context) -> None:
        if protocol != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"unsupported protocol version {protocol}; {self.node_id} speaks {PROTOCOL}")

    def snapshot(self, context) -> Snapshot:
        snap = self._snapshot()
        if snap is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.node_id} has no finished task yet")
        return snap

    def serving(self, kind: str, context) -> None:
        if kind not in self.serve:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"{self.node_id} does not serve payload kind {kind!r} (serves {list(self.serve)})")

    def published(self, request, context, *kinds: str) -> Snapshot:
        """The preamble of a request for the published snapshot: this node serves every one of ``kinds``,
        it has a snapshot, and (for a request that names one) it is at least ``min_snapshot_version``."""
        for kind in kinds:
            self.serving(kind, context)
        snap = self.snapshot(context)
        if "min_snapshot_version" in request.DESCRIPTOR.fields_by_name:
            self.version(snap, request.min_snapshot_version, context)
        return snap

    def version(self, snap: Snapshot, minimum: int, context) -> None:
        if snap.version < minimum:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"snapshot {snap.version} is older than the requested {minimum}")
