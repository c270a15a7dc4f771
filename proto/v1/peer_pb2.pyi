from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_1: _ClassVar[ProtocolVersion]

class KVSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_SOURCE_UNSPECIFIED: _ClassVar[KVSource]
    KV_SOURCE_SELF: _ClassVar[KVSource]
    KV_SOURCE_INLINE: _ClassVar[KVSource]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_1: ProtocolVersion
KV_SOURCE_UNSPECIFIED: KVSource
KV_SOURCE_SELF: KVSource
KV_SOURCE_INLINE: KVSource

class ClassifyRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "task", "images", "texts", "top")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    task: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top: int
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., task: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., texts: _Optional[_Iterable[str]] = ..., top: _Optional[int] = ...) -> None: ...

class ClassPrediction(_message.Message):
    __slots__ = ("label", "top_classes", "top_probabilities")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TOP_CLASSES_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label: str
    top_classes: _containers.RepeatedScalarFieldContainer[str]
    top_probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[str] = ..., top_classes: _Optional[_Iterable[str]] = ..., top_probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyReply(_message.Message):
    __slots__ = ("snapshot_version", "task", "predictions")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    task: str
    predictions: _containers.RepeatedCompositeFieldContainer[ClassPrediction]
    def __init__(self, snapshot_version: _Optional[int] = ..., task: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[ClassPrediction, _Mapping]]] = ...) -> None: ...

class TaskMatchRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version", "salt", "class_hashes")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    CLASS_HASHES_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    salt: bytes
    class_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ..., salt: _Optional[bytes] = ..., class_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TaskMatch(_message.Message):
    __slots__ = ("task", "classes", "val_accuracy", "train_samples")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    task: int
    classes: int
    val_accuracy: float
    train_samples: int
    def __init__(self, task: _Optional[int] = ..., classes: _Optional[int] = ..., val_accuracy: _Optional[float] = ..., train_samples: _Optional[int] = ...) -> None: ...

class TaskMatchReply(_message.Message):
    __slots__ = ("snapshot_version", "matches")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    matches: _containers.RepeatedCompositeFieldContainer[TaskMatch]
    def __init__(self, snapshot_version: _Optional[int] = ..., matches: _Optional[_Iterable[_Union[TaskMatch, _Mapping]]] = ...) -> None: ...

class TaskFetchRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version", "salt", "class_hashes", "task")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    CLASS_HASHES_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    salt: bytes
    class_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    task: int
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ..., salt: _Optional[bytes] = ..., class_hashes: _Optional[_Iterable[bytes]] = ..., task: _Optional[int] = ...) -> None: ...

class PeerProbeRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "node_id")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    node_id: str
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class PeerProbeReply(_message.Message):
    __slots__ = ("reachable", "snapshot_version")
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    reachable: bool
    snapshot_version: int
    def __init__(self, reachable: _Optional[bool] = ..., snapshot_version: _Optional[int] = ...) -> None: ...

class PublicFeaturesRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version", "public_set", "item_ids")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_SET_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    public_set: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ..., public_set: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SharedFeaturesRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version", "salt", "item_hashes")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    ITEM_HASHES_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    salt: bytes
    item_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ..., salt: _Optional[bytes] = ..., item_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FeaturesSummary(_message.Message):
    __slots__ = ("snapshot_version", "requested", "matched", "width")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    requested: int
    matched: _containers.RepeatedScalarFieldContainer[int]
    width: int
    def __init__(self, snapshot_version: _Optional[int] = ..., requested: _Optional[int] = ..., matched: _Optional[_Iterable[int]] = ..., width: _Optional[int] = ...) -> None: ...

class FeaturesChunk(_message.Message):
    __slots__ = ("summary", "tensor")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    summary: FeaturesSummary
    tensor: TensorChunk
    def __init__(self, summary: _Optional[_Union[FeaturesSummary, _Mapping]] = ..., tensor: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class OuterGradRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version", "max_batches", "have_body_version")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_FIELD_NUMBER: _ClassVar[int]
    HAVE_BODY_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    max_batches: int
    have_body_version: int
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ..., max_batches: _Optional[int] = ..., have_body_version: _Optional[int] = ...) -> None: ...

class OuterGradSummary(_message.Message):
    __slots__ = ("snapshot_version", "sample_count", "batch_count", "batch_size", "outer_loss", "align_loss", "uniform_loss")
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTER_LOSS_FIELD_NUMBER: _ClassVar[int]
    ALIGN_LOSS_FIELD_NUMBER: _ClassVar[int]
    UNIFORM_LOSS_FIELD_NUMBER: _ClassVar[int]
    snapshot_version: int
    sample_count: int
    batch_count: int
    batch_size: int
    outer_loss: float
    align_loss: float
    uniform_loss: float
    def __init__(self, snapshot_version: _Optional[int] = ..., sample_count: _Optional[int] = ..., batch_count: _Optional[int] = ..., batch_size: _Optional[int] = ..., outer_loss: _Optional[float] = ..., align_loss: _Optional[float] = ..., uniform_loss: _Optional[float] = ...) -> None: ...

class OuterGradChunk(_message.Message):
    __slots__ = ("summary", "encoder", "outer_grad")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    OUTER_GRAD_FIELD_NUMBER: _ClassVar[int]
    summary: OuterGradSummary
    encoder: TensorChunk
    outer_grad: TensorChunk
    def __init__(self, summary: _Optional[_Union[OuterGradSummary, _Mapping]] = ..., encoder: _Optional[_Union[TensorChunk, _Mapping]] = ..., outer_grad: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ("protocol", "caller_id")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ...) -> None: ...

class TensorShape(_message.Message):
    __slots__ = ("name", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "modality", "token_dim", "kv_shapes", "finished_tasks", "snapshot_version", "software_version", "protocol", "payload_kinds", "method", "genesis", "origins")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_DIM_FIELD_NUMBER: _ClassVar[int]
    KV_SHAPES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TASKS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_KINDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    modality: str
    token_dim: int
    kv_shapes: _containers.RepeatedCompositeFieldContainer[TensorShape]
    finished_tasks: _containers.RepeatedScalarFieldContainer[str]
    snapshot_version: int
    software_version: str
    protocol: ProtocolVersion
    payload_kinds: _containers.RepeatedScalarFieldContainer[str]
    method: str
    genesis: str
    origins: _containers.RepeatedCompositeFieldContainer[TensorOrigin]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., modality: _Optional[str] = ..., token_dim: _Optional[int] = ..., kv_shapes: _Optional[_Iterable[_Union[TensorShape, _Mapping]]] = ..., finished_tasks: _Optional[_Iterable[str]] = ..., snapshot_version: _Optional[int] = ..., software_version: _Optional[str] = ..., protocol: _Optional[_Union[ProtocolVersion, str]] = ..., payload_kinds: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., genesis: _Optional[str] = ..., origins: _Optional[_Iterable[_Union[TensorOrigin, _Mapping]]] = ...) -> None: ...

class TensorOrigin(_message.Message):
    __slots__ = ("name", "node_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    node_id: str
    def __init__(self, name: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class PayloadRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "kind", "min_snapshot_version")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    kind: str
    min_snapshot_version: int
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., kind: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ...) -> None: ...

class PeerEntry(_message.Message):
    __slots__ = ("node_id", "address", "alive", "snapshot_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    alive: bool
    snapshot_version: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., snapshot_version: _Optional[int] = ...) -> None: ...

class PeerList(_message.Message):
    __slots__ = ("protocol", "sender", "peers")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    sender: PeerEntry
    peers: _containers.RepeatedCompositeFieldContainer[PeerEntry]
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., sender: _Optional[_Union[PeerEntry, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[PeerEntry, _Mapping]]] = ...) -> None: ...

class KVRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "min_snapshot_version")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    min_snapshot_version: int
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., min_snapshot_version: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "sha256", "total_bytes", "offset", "data", "snapshot_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: bytes
    total_bytes: int
    offset: int
    data: bytes
    snapshot_version: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., snapshot_version: _Optional[int] = ...) -> None: ...

class ProbeSpec(_message.Message):
    __slots__ = ("seed", "pair_count", "token_count", "perturbation", "kv_source")
    SEED_FIELD_NUMBER: _ClassVar[int]
    PAIR_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    PERTURBATION_FIELD_NUMBER: _ClassVar[int]
    KV_SOURCE_FIELD_NUMBER: _ClassVar[int]
    seed: int
    pair_count: int
    token_count: int
    perturbation: float
    kv_source: KVSource
    def __init__(self, seed: _Optional[int] = ..., pair_count: _Optional[int] = ..., token_count: _Optional[int] = ..., perturbation: _Optional[float] = ..., kv_source: _Optional[_Union[KVSource, str]] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("protocol", "caller_id", "spec", "kv")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    protocol: ProtocolVersion
    caller_id: str
    spec: ProbeSpec
    kv: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    def __init__(self, protocol: _Optional[_Union[ProtocolVersion, str]] = ..., caller_id: _Optional[str] = ..., spec: _Optional[_Union[ProbeSpec, _Mapping]] = ..., kv: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("node_id", "snapshot_version", "ddv", "token_dim")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DDV_FIELD_NUMBER: _ClassVar[int]
    TOKEN_DIM_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    snapshot_version: int
    ddv: _containers.RepeatedScalarFieldContainer[float]
    token_dim: int
    def __init__(self, node_id: _Optional[str] = ..., snapshot_version: _Optional[int] = ..., ddv: _Optional[_Iterable[float]] = ..., token_dim: _Optional[int] = ...) -> None: ...
