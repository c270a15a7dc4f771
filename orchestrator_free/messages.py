"""What a peer tells a selecting node, as typed values: the transport (``crossback.node.serde``) turns
protobuf messages into these, so membership and selection never see the wire format."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the typed messages stay importable without torch (crossback peers / status)
    from torch import Tensor

    from crossback.config.selection import ProbeSpec

Shapes = dict[str, tuple[int, ...]]


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


@runtime_checkable
class PeerApi(Protocol):
    """What a selecting node asks of one peer: the calls selection and the strategies make, in the typed
    values above (``crossback.node.transport.PeerClient`` is the gRPC one). Every tensor it returns has
    been verified (names, dtypes, shapes, digests); a failed call raises ``config.errors.PeerCallError``,
    a malformed answer ``WireError``."""

    def get_info(self) -> PeerInfo: ...

    def fetch_kv(self, expected: Shapes | None = None, min_version: int = 0) -> tuple[dict[str, Tensor], int]: ...

    def probe_ddv(self, spec: ProbeSpec, inline_kv: dict | None = None) -> DdvAnswer: ...

    def fetch_payload(self, kind: str, expected: Shapes | None = None, min_version: int = 0,
                      max_total_bytes: int = 64 << 20) -> tuple[dict[str, Tensor], int]: ...

    def match_task(self, salt: bytes, hashes: list[bytes], min_version: int = 0) -> tuple[TaskMatches, int]: ...

    def fetch_task(self, salt: bytes, hashes: list[bytes], task: int, min_version: int = 0,
                   max_total_bytes: int = 64 << 20) -> tuple[dict[str, Tensor], int]: ...

    def fetch_outer_grad(self, expected: Shapes | None = None, min_version: int = 0, max_batches: int = 0,
                         held: tuple[int, Shapes] | None = None, max_total_bytes: int = 128 << 20): ...

    def fetch_public_features(self, keys: list[str], public_set: str, min_version: int = 0,
                              max_total_bytes: int = 64 << 20): ...

    def fetch_shared_features(self, hashes: list[bytes], salt: bytes, min_version: int = 0,
                              max_total_bytes: int = 64 << 20): ...


class PeerClients(Protocol):
    """Where a selecting node gets its client for a peer: ``get(address, expected node id)``."""

    def get(self, address: str, expected_id: str | None = None) -> PeerApi: ...
