"""Calling peers: one place for channels, deadlines, message limits and jittered retries (tenacity)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import grpc
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from crossback.config.errors import PeerCallError
from crossback.models.prediction import Prediction
from crossback.orchestrator_free.messages import DdvAnswer, Member, PeerInfo, TaskMatches
from crossback.proto.v1 import peer_pb2 as pb
from crossback.proto.v1 import peer_pb2_grpc as pb_grpc

from . import serde
from .rpc_metrics import FetchedBytes
from .serde import PROTOCOL
from .tls_material import TlsMaterial, open_channel

if TYPE_CHECKING:  # the DDV and tensor modules need torch; `crossback peers/status` must not load it
    from crossback.config.selection import ProbeSpec

MAX_MESSAGE_BYTES = 4 << 20
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# gRPC waits 1 s, then 1.6x longer after each failed connect, up to 120 s, and fails calls at once
# meanwhile: a peer back after a minute away went unreached for up to 33 s. Capped, a returning peer is
# reached within about 2 s of coming back, for at most one connect attempt per dead peer per 2 s.
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000)]


def channel_options(max_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_bytes), ("grpc.max_receive_message_length", max_bytes)]


@dataclass(frozen=True)
class CallPolicy:
    timeout: float = 5.0  # deadline of every call, seconds
    attempts: int = 3
    backoff_max: float = 1.0


class PeerCallFailed(PeerCallError, grpc.RpcError):
    """A failed call as every layer sees it: ``status`` / ``detail`` (PeerCallError) above the node, and
    ``code()`` / ``details()`` like the grpc.RpcError it came from, for code that speaks gRPC."""

    def __init__(self, cause: grpc.RpcError):
        code = cause.code() if callable(getattr(cause, "code", None)) else grpc.StatusCode.UNKNOWN
        details = cause.details() if callable(getattr(cause, "details", None)) else str(cause)
        super().__init__(details)
        self._code, self._details = code, details or ""

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    @property
    def status(self) -> str:
        return self._code.name

    @property
    def detail(self) -> str:
        return self._details


def _failed(exc: grpc.RpcError) -> PeerCallFailed:
    return exc if isinstance(exc, PeerCallFailed) else PeerCallFailed(exc)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in TRANSIENT


class PeerClient:
    """Typed calls to one peer. ``on_payload(kind, peer, nbytes)`` sees every request this side sends,
    ``on_fetched(kind, nbytes)`` every reply message received (rpc_metrics.FetchedBytes).
    With ``tls`` the channel is mTLS and its handshake checks that the peer's certificate names
    ``expected_id`` (None: any swarm member), see ``.tls``."""

    def __init__(self, address: str, caller_id: str, policy: CallPolicy = CallPolicy(),
                 on_payload: Callable[[str, str, int], None] | None = None, tls: TlsMaterial | None = None,
                 expected_id: str | None = None, on_fetched: Callable[[str, int], None] | None = None):
        self.address, self.caller_id, self.policy = address, caller_id, policy
        self.tls, self.expected_id = tls, expected_id
        self.on_payload = on_payload or (lambda kind, peer, nbytes: None)
        self._channel = open_channel(address, [*channel_options(), *RECONNECT], tls, expected_id)
        channel = grpc.intercept_channel(self._channel, FetchedBytes(on_fetched)) if on_fetched else self._channel
        self._stub = pb_grpc.PeerServiceStub(channel)

    def proves(self, node_id: str) -> bool:
        """Whether an answer from this channel proves that ``node_id`` is at its address. Plaintext: the
        address answered with the id, which is all it can show. TLS: the handshake checked the
        certificate against exactly that id (whether the id is admitted is Membership's ``allow``)."""
        return self.tls is None or node_id == self.expected_id

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn: Callable[[], object]):
        retrying = Retrying(stop=stop_after_attempt(self.policy.attempts),
                            wait=wait_random_exponential(multiplier=0.05, max=self.policy.backoff_max),
                            retry=retry_if_exception(_transient), reraise=True)
        try:
            return retrying(fn)
        except grpc.RpcError as exc:
            raise _failed(exc) from exc

    def get_info(self) -> PeerInfo:
        req = pb.InfoRequest(protocol=PROTOCOL, caller_id=self.caller_id)
        self.on_payload("info_request", self.address, req.ByteSize())
        return serde.info_from_pb(self._call(lambda: self._stub.GetInfo(req, timeout=self.policy.timeout)))

    def exchange_peers(self, peers: pb.PeerList) -> pb.PeerList:
        self.on_payload("membership", self.address, peers.ByteSize())
        return self._call(lambda: self._stub.ExchangePeers(peers, timeout=self.policy.timeout))

    def members(self) -> list[Member]:
        """The peer's membership view (an exchange that offers no entries of ours)."""
        return serde.members_from_pb(self.exchange_peers(pb.PeerList(protocol=PROTOCOL)))

    def probe_peer(self, node_id: str) -> pb.PeerProbeReply:
        """Ask this peer to probe ``node_id`` for us (SWIM's indirect probe); one attempt, no retries."""
        req = pb.PeerProbeRequest(protocol=PROTOCOL, caller_id=self.caller_id, node_id=node_id)
        self.on_payload("membership", self.address, req.ByteSize())
        try:
            return self._stub.ProbePeer(req, timeout=2 * self.policy.timeout)
        except grpc.RpcError as exc:
            raise _failed(exc) from exc

    def match_task(self, salt: bytes, hashes: list[bytes], min_version: int = 0) -> tuple[TaskMatches, int]:
        """(the peer's tasks with exactly this label set, the reply's size in bytes); see same_task."""
        req = pb.TaskMatchRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version,
                                  salt=salt, class_hashes=hashes)
        self.on_payload("task_request", self.address, req.ByteSize())
        reply = self._call(lambda: self._stub.MatchTask(req, timeout=self.policy.timeout))
        return serde.task_matches_from_pb(reply), reply.ByteSize()

    def fetch_task(self, salt: bytes, hashes: list[bytes], task: int, min_version: int = 0,
                   max_total_bytes: int = 64 << 20):
        """(the matched task's tensors, snapshot_version), verified: its backbone, query and head."""
        req = pb.TaskFetchRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version,
                                  salt=salt, class_hashes=hashes, task=task)
        self.on_payload("task_request", self.address, req.ByteSize())

        return self._call(lambda: self._tensor_stream(self._stub.FetchTask, req, None, max_total_bytes))

    def fetch_kv(self, expected: dict[str, tuple[int, ...]] | None = None, min_version: int = 0):
        """(tensors, snapshot_version) of the peer's published KV, verified."""
        req = pb.KVRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version)
        self.on_payload("kv_request", self.address, req.ByteSize())

        from crossback.node.wire import decode

        def fetch():
            chunks = list(self._stub.FetchKV(req, timeout=self.policy.timeout))
            versions = {c.snapshot_version for c in chunks}
            return decode(chunks, expected), (versions.pop() if len(versions) == 1 else -1)

        return self._call(fetch)

    def fetch_payload(self, kind: str, expected: dict[str, tuple[int, ...]] | None = None, min_version: int = 0,
                      max_total_bytes: int = 64 << 20):
        """(tensors by parameter name, snapshot_version) of the peer's payload ``kind``, verified."""
        req = pb.PayloadRequest(protocol=PROTOCOL, caller_id=self.caller_id, kind=kind, min_snapshot_version=min_version)
        self.on_payload(f"{kind}_request", self.address, req.ByteSize())

        return self._call(lambda: self._tensor_stream(self._stub.FetchPayload, req, expected, max_total_bytes))

    def _tensor_stream(self, rpc, req, expected, max_total_bytes: int):
        """(tensors, snapshot_version; -1 if the chunks disagree) of one streamed TensorChunk reply, decoded
        as the chunks arrive: the size limit holds before the stream is in memory."""
        from crossback.node.wire import decode

        versions = set()

        def chunks():
            for c in rpc(req, timeout=self.policy.timeout):
                versions.add(c.snapshot_version)
                yield c

        tensors = decode(chunks(), expected, max_total_bytes)
        return tensors, (versions.pop() if len(versions) == 1 else -1)

    def fetch_outer_grad(self, expected: dict[str, tuple[int, ...]] | None = None, min_version: int = 0,
                         max_batches: int = 0, held: tuple[int, dict[str, tuple[int, ...]]] | None = None,
                         max_total_bytes: int = 128 << 20):
        """(encoder body, its outer-loss gradient, summary, snapshot_version) from the peer's FetchOuterGrad,
        each tensor verified. ``held``: (version, {name: shape}) of a body we already have: the peer
        leaves it out if its snapshot is still that version (the body returned is then empty) and the
        gradient must have those names and shapes; otherwise the gradient must match the body sent."""
        from crossback.config.errors import WireError
        from crossback.node.wire import decode

        req = pb.OuterGradRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version,
                                  max_batches=max_batches, have_body_version=held[0] if held else 0)
        self.on_payload("outer_grad_request", self.address, req.ByteSize())

        def fetch():
            summaries, body, grad, received = [], [], [], 0
            for msg in self._stub.FetchOuterGrad(req, timeout=self.policy.timeout):
                item = msg.WhichOneof("item")
                if item == "summary":
                    summaries.append(msg.summary)
                    continue
                if item is None:
                    raise WireError("outer-gradient stream: a message with no item")
                chunk = getattr(msg, item)
                received += len(chunk.data)
                if received > max_total_bytes:  # bounded before the stream is held in memory
                    raise WireError(f"outer-gradient stream exceeds {max_total_bytes} bytes", "RESOURCE_EXHAUSTED")
                (body if item == "encoder" else grad).append(chunk)
            if len(summaries) != 1:
                raise WireError(f"outer-gradient stream carried {len(summaries)} summaries, expected 1")
            version = summaries[0].snapshot_version
            omitted = held is not None and not body and version == held[0]
            tensors = {} if omitted else decode(body, expected, max_total_bytes)
            shapes = held[1] if omitted else {n: tuple(t.shape) for n, t in tensors.items()}
            grads = decode(grad, shapes, max_total_bytes)
            versions = {c.snapshot_version for c in body + grad} | {version}
            summary = serde.outer_grad_summary_from_pb(summaries[0])
            return tensors, grads, summary, (versions.pop() if len(versions) == 1 else -1)

        return self._call(fetch)

    def fetch_public_features(self, keys: list[str], public_set: str, min_version: int = 0,
                              max_total_bytes: int = 64 << 20):
        """(features or None, matched positions, snapshot_version) from FetchPublicFeatures: the teacher's
        features of ``keys`` of ``public_set``. The features tensor is verified and bounded; its rows are
        checked by the caller."""
        req = pb.PublicFeaturesRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version,
                                       public_set=public_set, item_ids=keys)
        return self._features("public_features", req, self._stub.FetchPublicFeatures, max_total_bytes)

    def fetch_shared_features(self, hashes: list[bytes], salt: bytes, min_version: int = 0,
                              max_total_bytes: int = 64 << 20):
        """(features or None, matched positions, snapshot_version) from FetchSharedFeatures: the teacher's
        features of the items whose keyed ``hashes`` under ``salt`` it holds (as ``fetch_public_features``)."""
        req = pb.SharedFeaturesRequest(protocol=PROTOCOL, caller_id=self.caller_id, min_snapshot_version=min_version,
                                       salt=salt, item_hashes=hashes)
        return self._features("features", req, self._stub.FetchSharedFeatures, max_total_bytes)

    def _features(self, kind: str, req, call, max_total_bytes: int):
        from crossback.config.errors import WireError
        from crossback.node.wire import decode

        self.on_payload(f"{kind}_request", self.address, req.ByteSize())

        def fetch():
            summaries, chunks = [], []
            for msg in call(req, timeout=self.policy.timeout):
                item = msg.WhichOneof("item")
                if item == "summary":
                    summaries.append(msg.summary)
                elif item == "tensor":
                    chunks.append(msg.tensor)
                    if sum(len(c.data) for c in chunks) > max_total_bytes:
                        raise WireError(f"features stream exceeds {max_total_bytes} bytes", "RESOURCE_EXHAUSTED")
                else:
                    raise WireError("features stream: a message with no item")
            if len(summaries) != 1:
                raise WireError(f"features stream carried {len(summaries)} summaries, expected 1")
            summary = summaries[0]
            matched = list(summary.matched)
            tensors = decode(chunks, {"features": (len(matched), summary.width)} if matched else {}, max_total_bytes)
            versions = {c.snapshot_version for c in chunks} | {summary.snapshot_version}
            return tensors.get("features"), matched, (versions.pop() if len(versions) == 1 else -1)

        return self._call(fetch)

    def classify(self, task: str, images: list[bytes] | None = None, texts: list[str] | None = None,
                 top: int = 1) -> list[Prediction]:
        """The node's predictions for a batch of image files' bytes or strings (the Classify RPC)."""
        req = pb.ClassifyRequest(protocol=PROTOCOL, caller_id=self.caller_id, task=task, images=images or [],
                                 texts=texts or [], top=top)
        self.on_payload("classify_request", self.address, req.ByteSize())
        return serde.predictions_from_pb(self._call(lambda: self._stub.Classify(req, timeout=self.policy.timeout)))

    def probe_ddv(self, spec: ProbeSpec, inline_kv: dict | None = None) -> DdvAnswer:
        req = pb.ProbeRequest(protocol=PROTOCOL, caller_id=self.caller_id, spec=serde.probe_spec_to_pb(spec))
        if inline_kv is not None:
            from crossback.node.wire import encode_all

            req.kv.extend(encode_all(inline_kv))
        self.on_payload("probe_spec" if inline_kv is None else "probe_spec+kv", self.address, req.ByteSize())
        return serde.ddv_answer_from_pb(self._call(lambda: self._stub.ProbeDDV(req, timeout=self.policy.timeout)))


class ClientPool:
    """One client per (peer address, the node id expected there), created on demand, closed together.
    ``factory(address, expected_id)``; the expected id matters only to TLS channels (``PeerClient``).
    At most ``max_clients`` are kept: the least recently used is closed to make room (gossip names
    addresses that come and go)."""

    def __init__(self, factory: Callable[[str, str | None], PeerClient], max_clients: int = 512):
        self._factory, self._max, self._lock = factory, max_clients, threading.Lock()
        self._clients: OrderedDict[tuple[str, str | None], PeerClient] = OrderedDict()
        self._closed = False

    def get(self, address: str, expected_id: str | None = None) -> PeerClient:
        """ValueError once the pool is closed (as a closed channel raises): the node is stopping."""
        with self._lock:
            if self._closed:
                raise ValueError("the client pool is closed")
            key = (address, expected_id)
            if key in self._clients:
                self._clients.move_to_end(key)
                return self._clients[key]
            while len(self._clients) >= self._max:
                self._clients.popitem(last=False)[1].close()
            client = self._clients[key] = self._factory(address, expected_id)
            return client

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for client in self._clients.values():
                client.close()
            self._clients.clear()
