"""What a peer tells a selecting node, as typed values: the transport (``crossback.node.serde``) turns
protobuf messages into these, so membership and selection never see the wire format."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorOrigin:
    name: str  # parameter name, as in FetchPayload
    node_id: str  # the node that learned it


@dataclass(frozen=True)
class PeerInfo:
    """A peer's GetInfo answer: who it is, what it learned and what it serves."""

    node_id: str
    address: str
    modality: str = ""
    token_dim: int = 0
    kv_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    finished_tasks: tuple[str, ...] = ()
    snapshot_version: int = 0
    software_version: str = ""
    protocol: int = 0
    payload_kinds: tuple[str, ...] = ()
    method: str = ""
    genesis: str = ""  # "<seed>:<core shape digest>", "" for none (crossback.orchestrator_free.genesis)
    origins: tuple[TensorOrigin, ...] = ()  # tensors another node learned, with that node
    nbytes: int = 0  # size of the answer on the wire


@dataclass(frozen=True)
class DdvAnswer:
    """A peer's DDV for a probe spec, from one published snapshot."""

    node_id: str
    snapshot_version: int
    ddv: tuple[float, ...]
    token_dim: int = 0
    nbytes: int = 0


@dataclass(frozen=True)
class TaskMatch:
    task: int  # the peer's task index (FetchTask names it)
    classes: int
    val_accuracy: float  # the peer's claim, for ranking matches before any model moves
    train_samples: int = 0


@dataclass(frozen=True)
class TaskMatches:
    snapshot_version: int
    matches: tuple[TaskMatch, ...] = ()


@dataclass(frozen=True)
class OuterGradSummary:
    """What a peer's outer-loss gradient (MoNA) averages over, and the loss at its published body."""

    snapshot_version: int
    sample_count: int
    batch_count: int
    batch_size: int
    outer_loss: float
    align_loss: float
    uniform_loss: float


@dataclass(frozen=True)
class Member:
    """One entry of a peer's membership view."""

    node_id: str
    address: str
    alive: bool
    snapshot_version: int = 0
