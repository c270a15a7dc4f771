"""Every conversion between the wire's protobuf messages and the typed values the rest of crossback uses,
in one module (as Flower keeps its serde): the client, the server and gossip call these, nothing above
the node sees a protobuf message."""
from __future__ import annotations

from crossback.config.selection import ProbeSpec
from crossback.models.prediction import Prediction
from crossback.orchestrator_free.messages import (
    DdvAnswer,
    Member,
    OuterGradSummary,
    PeerInfo,
    TaskMatch,
    TaskMatches,
    TensorOrigin,
)
from crossback.proto.v1 import peer_pb2 as pb

PROTOCOL = pb.PROTOCOL_VERSION_1
KV_SOURCES = {"self": pb.KV_SOURCE_SELF, "inline": pb.KV_SOURCE_INLINE}  # ProbeSpec.kv_source <-> wire enum
KV_SOURCE_NAMES = {enum: name for name, enum in KV_SOURCES.items()}


def info_to_pb(info: PeerInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=info.node_id, address=info.address, modality=info.modality, token_dim=info.token_dim,
        kv_shapes=[pb.TensorShape(name=n, dims=list(s)) for n, s in info.kv_shapes.items()],
        finished_tasks=list(info.finished_tasks), snapshot_version=info.snapshot_version,
        software_version=info.software_version, protocol=info.protocol, payload_kinds=list(info.payload_kinds),
        method=info.method, genesis=info.genesis,
        origins=[pb.TensorOrigin(name=o.name, node_id=o.node_id) for o in info.origins])


def info_from_pb(msg: pb.NodeInfo) -> PeerInfo:
    return PeerInfo(
        node_id=msg.node_id, address=msg.address, modality=msg.modality, token_dim=msg.token_dim,
        kv_shapes={s.name: tuple(s.dims) for s in msg.kv_shapes}, finished_tasks=tuple(msg.finished_tasks),
        snapshot_version=msg.snapshot_version, software_version=msg.software_version, protocol=msg.protocol,
        payload_kinds=tuple(msg.payload_kinds), method=msg.method, genesis=msg.genesis,
        origins=tuple(TensorOrigin(o.name, o.node_id) for o in msg.origins), nbytes=msg.ByteSize())


def probe_spec_to_pb(spec: ProbeSpec) -> pb.ProbeSpec:
    return pb.ProbeSpec(seed=spec.seed, pair_count=spec.pair_count, token_count=spec.token_count,
                        perturbation=spec.perturbation, kv_source=KV_SOURCES[spec.kv_source])


def probe_spec_from_pb(msg: pb.ProbeSpec) -> ProbeSpec:
    """ValueError for an unknown K/V source; the bounds are the caller's to check (``ProbeSpec.validate``)."""
    if msg.kv_source not in KV_SOURCE_NAMES:
        raise ValueError(f"unknown kv_source {msg.kv_source}")
    return ProbeSpec(seed=msg.seed, pair_count=msg.pair_count, token_count=msg.token_count,
                     perturbation=msg.perturbation, kv_source=KV_SOURCE_NAMES[msg.kv_source])


def ddv_answer_from_pb(msg: pb.ProbeResponse) -> DdvAnswer:
    return DdvAnswer(msg.node_id, msg.snapshot_version, tuple(msg.ddv), msg.token_dim, msg.ByteSize())


def task_matches_from_pb(msg: pb.TaskMatchReply) -> TaskMatches:
    return TaskMatches(msg.snapshot_version, tuple(TaskMatch(m.task, m.classes, m.val_accuracy, m.train_samples)
                                                   for m in msg.matches))


def outer_grad_summary_from_pb(msg: pb.OuterGradSummary) -> OuterGradSummary:
    return OuterGradSummary(msg.snapshot_version, msg.sample_count, msg.batch_count, msg.batch_size, msg.outer_loss,
                            msg.align_loss, msg.uniform_loss)


def members_from_pb(msg: pb.PeerList) -> list[Member]:
    return [Member(p.node_id, p.address, p.alive, p.snapshot_version) for p in msg.peers]


def predictions_from_pb(msg: pb.ClassifyReply) -> list[Prediction]:
    return [Prediction(p.label, list(zip(p.top_classes, p.top_probabilities))) for p in msg.predictions]


# ---------------------------------------------------------------- what the server sends

def member_to_pb(member: Member) -> pb.PeerEntry:
    return pb.PeerEntry(node_id=member.node_id, address=member.address, alive=member.alive,
                        snapshot_version=member.snapshot_version)


def peer_list_to_pb(sender: Member, members: list[Member]) -> pb.PeerList:
    return pb.PeerList(protocol=PROTOCOL, sender=member_to_pb(sender), peers=[member_to_pb(m) for m in members])


def probe_reply_to_pb(reachable: bool, snapshot_version: int) -> pb.PeerProbeReply:
    return pb.PeerProbeReply(reachable=reachable, snapshot_version=snapshot_version)


def task_matches_to_pb(matches: TaskMatches) -> pb.TaskMatchReply:
    return pb.TaskMatchReply(snapshot_version=matches.snapshot_version, matches=[
        pb.TaskMatch(task=m.task, classes=m.classes, val_accuracy=m.val_accuracy, train_samples=m.train_samples)
        for m in matches.matches])


def outer_grad_summary_to_pb(summary: OuterGradSummary) -> pb.OuterGradSummary:
    return pb.OuterGradSummary(
        snapshot_version=summary.snapshot_version, sample_count=summary.sample_count,
        batch_count=summary.batch_count, batch_size=summary.batch_size, outer_loss=summary.outer_loss,
        align_loss=summary.align_loss, uniform_loss=summary.uniform_loss)


def outer_grad_stream(summary: pb.OuterGradSummary, body: list, grad: list):
    """The FetchOuterGrad stream: the summary, then the body's chunks, then the gradient's."""
    yield pb.OuterGradChunk(summary=summary)
    for c in body:
        yield pb.OuterGradChunk(encoder=c)
    for c in grad:
        yield pb.OuterGradChunk(outer_grad=c)


def features_summary_to_pb(snapshot_version: int, requested: int, matched: list[int], width: int) -> pb.FeaturesSummary:
    return pb.FeaturesSummary(snapshot_version=snapshot_version, requested=requested, matched=matched, width=width)


def features_stream(summary: pb.FeaturesSummary, chunks: list):
    """A features stream: the summary, then the features tensor's chunks."""
    yield pb.FeaturesChunk(summary=summary)
    for c in chunks:
        yield pb.FeaturesChunk(tensor=c)


def ddv_answer_to_pb(answer: DdvAnswer) -> pb.ProbeResponse:
    return pb.ProbeResponse(node_id=answer.node_id, snapshot_version=answer.snapshot_version, ddv=list(answer.ddv),
                            token_dim=answer.token_dim)


def predictions_to_pb(snapshot_version: int, task: str, predictions: list[Prediction]) -> pb.ClassifyReply:
    return pb.ClassifyReply(snapshot_version=snapshot_version, task=task, predictions=[
        pb.ClassPrediction(label=p.label, top_classes=[c for c, _ in p.top], top_probabilities=[q for _, q in p.top])
        for p in predictions])
