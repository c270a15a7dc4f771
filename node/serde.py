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
