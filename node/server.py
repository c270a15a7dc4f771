"""The peer service a node serves, from its published snapshot only, plus gRPC health."""
from __future__ import annotations

import functools
import inspect
import math
import random
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crossback.config.errors import StateInUse, WireError
from crossback.config.node import (
    DEFAULT_ENTRIES,
    DEFAULT_MAX_PEERS,
    DEFAULT_PROBE_BUDGET,
    DEFAULT_SERVE,
    OUTER_GRAD_KINDS,
    CallLimits,
)
from crossback.config.selection import ProbeSpecError
from crossback.config.transfer import MAX_PAIR_ITEMS
from crossback.node.gossip import sample_entries
from crossback.node.limits import Busy, CallLimiter
from crossback.node.tls_material import TlsMaterial
from crossback.node.transport import MAX_MESSAGE_BYTES, channel_options
from crossback.node.wire import decode, encode_all
from crossback.orchestrator_free import messages as msg
from crossback.orchestrator_free.ddv import ddv, probe_bytes
from crossback.orchestrator_free.identity import address_problem, node_id_problem
from crossback.orchestrator_free.membership import Membership
from crossback.orchestrator_free.same_task import matching_tasks, request_problem, task_parts
from crossback.proto.v1 import peer_pb2 as pb
from crossback.proto.v1 import peer_pb2_grpc as pb_grpc
from crossback.transfer.pairs import HASH_BYTES, MAX_ITEM_ID, MAX_SET_NAME, SALT_BYTES

from . import serde
from .admission import Admission, AdmissionLimits, caller_of
from .classify import ClassifyService, ItemError, OverBudget, activation_bytes, plan_request
from .events import EventLog, PayloadTally
from .expensive_work import ExpensiveWork
from .features import FeatureService
from .metrics import NodeMetrics
from .outer_grad import OuterGradService
from .request_rules import RequestRules
from .rpc_guard import RpcGuard
from .rpc_metrics import RpcMetrics
from .serde import PROTOCOL
from .snapshot import Snapshot
from .tls import PeerAuth

SERVICE_NAME = "crossback.v1.PeerService"
TENSOR_KINDS = ("kv", "latents", "block", "backbone", "encoder")  # FetchPayload's kinds
MAX_GOSSIP_ENTRIES = 4 * DEFAULT_MAX_PEERS  # a node gossips at most its proven peers


def expensive(handler):
    """Run an RPC handler (unary or streaming) only once the node's CallLimiter admits its caller."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(self, request, context):
            self.rules.check(request, context)  # before it takes a slot
            with self.work.admit(caller_of(context), context):
                yield from handler(self, request, context)
        return stream

    @functools.wraps(handler)
    def unary(self, request, context):
        self.rules.check(request, context)
        with self.work.admit(caller_of(context), context):
            return handler(self, request, context)
    return unary


def tensor_bytes(shapes: dict[str, tuple[int, ...]], copies: int = 2) -> int:
    """Memory a tensor payload holds while it is served: the tensors and their encoded chunks (float32)."""
    return copies * 4 * sum(math.prod(s) for s in shapes.values())


@functools.cache  # importlib.metadata scans every installed distribution: 2.5 ms a GetInfo, before this
def software_version() -> str:
    try:
        return version("crossback")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    address: str
    modality: str
    method: str
    token_dim: int
    kv_shapes: dict[str, tuple[int, int]]
    serve: tuple[str, ...] = DEFAULT_SERVE  # payload kinds this node hands out
    genesis: str = ""  # genesis id (crossback.orchestrator_free.genesis), "" for none
    public_set: str = ""  # the public paired set it holds out (crossback.data.public_set), "" for none


class PeerServicer(pb_grpc.PeerServiceServicer):
    def __init__(self, identity: NodeIdentity, snapshot: Callable[[], Snapshot | None], membership: Membership,
                 events: EventLog, outer_grad: OuterGradService | None = None, limiter: CallLimiter | None = None,
                 probe_budget: int = DEFAULT_PROBE_BUDGET, payloads: PayloadTally | None = None,
                 gossip_entries: int = DEFAULT_ENTRIES, pair_secret: bytes = b"",
                 classifier: ClassifyService | None = None, metrics: NodeMetrics | None = None):
        self.identity, self.snapshot, self.membership, self.events = identity, snapshot, membership, events
        self.gossip_entries, self._rng = gossip_entries, random.Random(identity.node_id)
        # ProbePeer: set to the gossip loop's probe_for once it exists; a few at a time, one per caller
        self.probe_peer: Callable[[str], tuple[bool, int]] | None = None
        # a relay can wait 2 x rpc_timeout on a dead peer: at most 2 hold control threads, none wait behind them
        self.probe_limiter = CallLimiter(CallLimits(slots=2, waiting=0, per_caller=1, wait=2.0))
        self.outer_grad = outer_grad or OuterGradService()
        self.limiter = limiter or CallLimiter()
        self.work = ExpensiveWork(self.limiter, identity.node_id, metrics.refused if metrics else None)
        self.rules = RequestRules(identity.node_id, identity.serve, snapshot)
        self.probe_budget = probe_budget
        # what this node sends, for its log (and its metrics)
        self.payloads = payloads or PayloadTally(events.emit, count=metrics.sent if metrics else None)
        self.features = FeatureService(pair_secret)
        self.classifier = classifier  # None: Classify answers FAILED_PRECONDITION

    def self_member(self) -> msg.Member:
        snap = self.snapshot()
        return msg.Member(self.identity.node_id, self.identity.address, True, snap.version if snap else 0)

    def self_entry(self) -> pb.PeerEntry:
        return serde.member_to_pb(self.self_member())

    # -------------------------------------------------------------- rpcs

    def GetInfo(self, request, context):
        self.rules.check(request, context)
        snap = self.snapshot()
        ident = self.identity
        info = serde.info_to_pb(msg.PeerInfo(
            node_id=ident.node_id, address=ident.address, modality=ident.modality, token_dim=ident.token_dim,
            kv_shapes=dict(ident.kv_shapes), finished_tasks=tuple(snap.finished_tasks if snap else ()),
            snapshot_version=snap.version if snap else 0, software_version=software_version(), protocol=PROTOCOL,
            payload_kinds=tuple(ident.serve), method=ident.method, genesis=ident.genesis,
            origins=tuple(msg.TensorOrigin(n, o) for n, o in sorted((snap.origins() if snap else {}).items()))))
        self.payloads("info", request.caller_id, info.ByteSize())
        return info

    def ExchangePeers(self, request, context):
        self.rules.check(request, context)
        sender = request.sender
        entries = ([sender] if sender.node_id else []) + list(request.peers)
        if len(entries) > MAX_GOSSIP_ENTRIES:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"a peer list of {len(entries)} entries exceeds {MAX_GOSSIP_ENTRIES}")
        for i, entry in enumerate(entries):  # all checked before any is kept
            problem = node_id_problem(entry.node_id) or address_problem(entry.address)
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{'sender' if i == 0 and sender.node_id else 'peer entry'}: {problem}")
        source = caller_of(context)  # a flood from one caller fills only that caller's share
        for i, entry in enumerate(entries):  # claims, not proof: candidates this node will dial itself
            self.membership.learn(entry.node_id, entry.address, source, direct=i == 0 and bool(sender.node_id))
            if not entry.alive:
                self.membership.rumour(entry.node_id)
        view = members_of(self.membership)
        if sender.node_id:  # gossip gets a bounded sample; a bare request (crossback peers) the whole view
            view = sample_entries(view, self.gossip_entries, self._rng)
        reply = serde.peer_list_to_pb(self.self_member(), view)
        self.payloads("membership", sender.node_id, reply.ByteSize())
        return reply

    def ProbePeer(self, request, context):
        self.rules.check(request, context)
        problem = node_id_problem(request.node_id)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node_id: {problem}")
        if self.probe_peer is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.identity.node_id} does not probe for peers")
        try:
            with self.probe_limiter.admit(caller_of(context)):
                reachable, version = self.probe_peer(request.node_id)
        except Busy as exc:
            self.work.refuse(exc, context)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{self.identity.node_id} holds no address for {request.node_id!r}")
        reply = serde.probe_reply_to_pb(reachable, version)
        self.payloads("membership", request.caller_id, reply.ByteSize())
        return reply

    @expensive
    def FetchKV(self, request, context):
        snap = self.rules.published(request, context, "kv")
        with self.work.memory(tensor_bytes({n: tuple(t.shape) for n, t in snap.kv.items()}), "K/V", context):
            chunks = encode_all(snap.kv, snap.version)
            self.payloads("kv", request.caller_id, sum(len(c.data) for c in chunks))
            yield from chunks

    @expensive
    def FetchPayload(self, request, context):
        if request.kind not in TENSOR_KINDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown payload kind {request.kind[:64]!r}; tensor kinds: {', '.join(TENSOR_KINDS)}")
        snap = self.rules.published(request, context, request.kind)
        with self.work.memory(tensor_bytes(snap.part_shapes(request.kind)), f"payload {request.kind}", context):
            chunks = encode_all(snap.parts(request.kind), snap.version)
            self.payloads(request.kind, request.caller_id, sum(len(c.data) for c in chunks))
            yield from chunks

    def _label_set(self, request, context) -> tuple[Snapshot, bytes, list[bytes]]:
        self.rules.serving("task", context)
        salt, hashes = bytes(request.salt), list(request.class_hashes)
        problem = request_problem(salt, hashes)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"label set: {problem}")
        return self.rules.published(request, context), salt, hashes

    def MatchTask(self, request, context):
        self.rules.check(request, context)  # not an expensive call: no decorator checked it
        snap, salt, hashes = self._label_set(request, context)

        reply = serde.task_matches_to_pb(msg.TaskMatches(snap.version, tuple(
            msg.TaskMatch(**m) for m in matching_tasks(snap.learner, salt, hashes))))
        self.payloads("task_match", request.caller_id, reply.ByteSize())
        return reply

    @expensive
    def FetchTask(self, request, context):
        snap, salt, hashes = self._label_set(request, context)
        with self.work.memory(tensor_bytes(snap.part_shapes("task"), copies=3), "a task", context):
            parts = task_parts(snap.learner, request.task, salt, hashes)
            if parts is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{self.identity.node_id} has no task {request.task} "
                                                         f"with that label set in snapshot {snap.version}")
            chunks = encode_all(parts, snap.version)
            self.payloads("task", request.caller_id, sum(len(c.data) for c in chunks))
            yield from chunks

    @expensive
    def FetchOuterGrad(self, request, context):
        snap = self.rules.published(request, context, *OUTER_GRAD_KINDS)
        if snap.data is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.identity.node_id} holds no labelled items for its published task")
        try:  # the body, its gradient, their chunks and the batches' activations
            with self.work.memory(tensor_bytes(snap.part_shapes("encoder"), copies=6), "an outer gradient", context):
                result = self.outer_grad.get(snap, request.max_batches)
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        summary = serde.outer_grad_summary_to_pb(msg.OuterGradSummary(
            snap.version, result.sample_count, result.batch_count, result.batch_size, result.outer_loss,
            result.align_loss, result.uniform_loss))
        held = request.have_body_version == snap.version  # the caller has this body already
        body = [] if held else encode_all(result.body, snap.version)
        grad = encode_all(result.grad, snap.version)
        if body:
            self.payloads("encoder", request.caller_id, sum(len(c.data) for c in body))
        self.payloads("outer_grad", request.caller_id, sum(len(c.data) for c in grad) + summary.ByteSize())
        yield from serde.outer_grad_stream(summary, body, grad)

    @expensive
    def FetchPublicFeatures(self, request, context):
        self.rules.serving("public_features", context)
        ids = list(request.item_ids)
        if len(ids) > MAX_PAIR_ITEMS or any(not 0 < len(i) <= MAX_ITEM_ID for i in ids):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {MAX_PAIR_ITEMS} public item ids of 1-{MAX_ITEM_ID} characters (got {len(ids)})")
        mine = self.identity.public_set
        if request.public_set != mine:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.identity.node_id} holds out public set {mine or '(none)'!r}, not "
                          f"{request.public_set[:MAX_SET_NAME]!r}")
        snap = self.rules.published(request, context)
        if snap.public is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.identity.node_id} holds no public items")
        yield from self._features_stream("public_features", request.caller_id, snap, len(ids),
                                         *self.features.public(snap, ids))

    @expensive
    def FetchSharedFeatures(self, request, context):
        self.rules.serving("features", context)
        hashes = list(request.item_hashes)
        if len(request.salt) != SALT_BYTES or len(hashes) > MAX_PAIR_ITEMS or any(len(h) != HASH_BYTES for h in hashes):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a {SALT_BYTES}-byte salt and at most {MAX_PAIR_ITEMS} hashes of {HASH_BYTES} bytes "
                          f"(got a {len(request.salt)}-byte salt, {len(hashes)} hashes)")
        if not self.features.pair_secret:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.identity.node_id} holds no swarm pair secret to hash item ids under")
        snap = self.rules.published(request, context)
        if snap.data is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"{self.identity.node_id} holds no items for its published task")
        yield from self._features_stream("features", request.caller_id, snap, len(hashes),
                                         *self.features.shared(snap, bytes(request.salt), hashes))

    def _features_stream(self, kind: str, caller: str, snap: Snapshot, requested: int, matched: list[int], feats):
        summary = serde.features_summary_to_pb(snap.version, requested, matched,
                                               int(feats.shape[1]) if feats is not None else 0)
        chunks = encode_all({"features": feats.float()}, snap.version) if feats is not None else []
        self.payloads(kind, caller, summary.ByteSize() + sum(len(c.data) for c in chunks))
        yield from serde.features_stream(summary, chunks)

    @expensive
    def ProbeDDV(self, request, context):
        snap = self.rules.published(request, context, "ddv")
        try:
            spec = serde.probe_spec_from_pb(request.spec)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"probe spec: {exc}")
        try:
            spec.validate()  # each field in its bounds first, then their product against the budget
        except ProbeSpecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"probe spec: {exc}")
        cost = spec.pair_count * spec.token_count * self.identity.token_dim
        if cost > self.probe_budget:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"probe spec: pair_count x token_count x C = {spec.pair_count} x {spec.token_count} x "
                          f"{self.identity.token_dim} = {cost} exceeds this node's budget {self.probe_budget}")
        try:
            spec.validate()
            if spec.kv_source == "inline":  # any wire dtype; the probe runs in float32
                kv = {n: t.float() for n, t in decode(request.kv, expected=self.identity.kv_shapes,
                                                      max_total_bytes=MAX_MESSAGE_BYTES).items()}
            elif request.kv:
                raise WireError("kv tensors sent with kv_source self")
            else:
                kv = snap.kv
        except ProbeSpecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"probe spec: {exc}")
        except WireError as exc:
            context.abort(getattr(grpc.StatusCode, exc.status), f"probe kv: {exc}")
        inline = sum(t.numel() * 4 for t in kv.values()) if spec.kv_source == "inline" else 0
        with self.work.memory(probe_bytes(spec, snap.learner.cfg) + inline, "this probe", context):
            vector = ddv(snap.learner, snap.task, kv, spec)
        if not bool(torch.isfinite(vector).all()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "probe kv: the DDV it gives is not finite")
        reply = serde.ddv_answer_to_pb(msg.DdvAnswer(self.identity.node_id, snap.version, tuple(vector.tolist()),
                                                 self.identity.token_dim))
        self.payloads("ddv", request.caller_id, reply.ByteSize())
        return reply


    @expensive
    def Classify(self, request, context):
        self.rules.serving("classify", context)
        if self.classifier is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.identity.node_id} runs no classifier")
        snap = self.rules.published(request, context)
        names = snap.finished_tasks
        if request.task not in names:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{self.identity.node_id} has no finished task "
                                                     f"{request.task[:64]!r}; its finished tasks: {names}")
        try:  # every header read and the decode's cost known before any pixel is decoded
            plan = plan_request(list(request.images), list(request.texts), self.classifier.view)
        except OverBudget as exc:
            self.work.over_budget(f"classify: {exc}", context)
        except ItemError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"classify: {exc}")
        index = names.index(request.task)
        check = self.work.still_wanted(context)
        try:
            held = plan.held_bytes + activation_bytes(plan.count, snap.learner.cfg, self.classifier.view)
            with self.work.memory(held, "this request", context):
                try:
                    inputs = plan.inputs(check)
                except ItemError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"classify: {exc}")
                predictions = self.classifier.run(snap, index, inputs, max(1, request.top), check)
        finally:
            plan.close()
        reply = serde.predictions_to_pb(snap.version, request.task, predictions)
        self.payloads("classify", request.caller_id, reply.ByteSize())
        return reply


def members_of(membership: Membership) -> list[msg.Member]:
    return [msg.Member(p.node_id, p.address, p.alive, p.snapshot_version) for p in membership.peers()]


def peer_entries(membership: Membership) -> list[pb.PeerEntry]:
    """The view as the gossip loop sends it."""
    return [serde.member_to_pb(m) for m in members_of(membership)]


def bind(listen: str, workers: int = CallLimits().threads, max_message_bytes: int = MAX_MESSAGE_BYTES,
         events: EventLog | None = None, tls: TlsMaterial | None = None,
         admission: AdmissionLimits | None = None, metrics: NodeMetrics | None = None) -> tuple[grpc.Server, int]:
    """A server bound to ``listen`` (``host:0`` picks a free port), not yet serving; returns (server, port).
    Calls run on per-class thread pools (``.admission``): ``workers`` threads for the expensive RPCs,
    others for health checks and gossip that those can never take.
    With ``events``, undecodable requests get INVALID_ARGUMENT and handler failures are logged there.
    With ``tls``, the port speaks mutual TLS only and every call passes ``PeerAuth``.
    With ``metrics``, every call is counted and timed there, refusals included."""
    limits = admission or AdmissionLimits()
    limits = replace(limits, bulk=replace(limits.bulk, workers=workers, queue=max(limits.bulk.queue, 2 * workers)))
    refused = metrics.refused if metrics else None
    gate = Admission(limits, refused)
    interceptors = ([RpcMetrics(metrics)] if metrics else []) + [gate] + ([RpcGuard(events.emit)] if events else []) \
        + ([PeerAuth(tls, refused)] if tls else [])
    # so_reuseport off: a second process on a port already in use fails to bind instead of sharing it
    options = [*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)]
    server = grpc.server(gate.pools["control"], options=options, maximum_concurrent_rpcs=limits.capacity(),
                         interceptors=interceptors)
    server.admission = gate  # closed with the server (stop_server)
    try:
        port = server.add_secure_port(listen, tls.server_credentials()) if tls else server.add_insecure_port(listen)
    except RuntimeError:  # grpcio raises RuntimeError where it cannot bind
        port = 0
    if port == 0:
        raise StateInUse(f"cannot listen on {listen}: the port is in use (or the address is not this machine's)")
    return server, port


def serve(server: grpc.Server, servicer: PeerServicer) -> health.HealthServicer:
    """Start serving the peer service and gRPC health (SERVING) on a bound server."""
    pb_grpc.add_PeerServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health_servicer
