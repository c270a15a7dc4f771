"""Model, continual-learning method and training settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from .bounds import bounded

# implemented in crossback.models (image_encoders, text_encoders, learner); a test keeps the lists equal
IMAGE_ENCODERS = ("patches", "efficientnet")
TEXT_ENCODERS = ("bytes", "minilm")
METHODS = ("packnet", "piggyback", "cpg")


@dataclass(frozen=True)
class ImageAdapterConfig:
    channels: int = bounded(3, ge=1, le=64)
    patch_size: int = bounded(4, ge=1, le=256)
    num_freq_bands: int = bounded(6, ge=1, le=64)
    max_freq: float = bounded(16.0, gt=0.0)
    # patches: pixels, learned patch embedding; efficientnet: frozen EfficientNet-Lite0 features, projected to C
    encoder: str = bounded("patches", choices=IMAGE_ENCODERS)


@dataclass(frozen=True)
class TextAdapterConfig:
    max_length: int = bounded(64, ge=3, le=65536)  # [CLS] + bytes + [SEP] (or MiniLM word pieces)
    # bytes: UTF-8 byte ids, learned embeddings; minilm: frozen MiniLM token embeddings, projected to C
    encoder: str = bounded("bytes", choices=TEXT_ENCODERS)


@dataclass(frozen=True)
class PerceiverConfig:
    token_dim: int = bounded(64, ge=1, le=65536)  # C, the swarm-wide token width
    num_latents: int = bounded(32, ge=1, le=65536)
    latent_dim: int = bounded(64, ge=1, le=65536)
    depth: int = bounded(2, ge=1, le=65536)
    cross_heads: int = bounded(1, ge=1, le=65536)
    cross_dim_head: int = bounded(64, ge=1, le=65536)  # with cross_heads, sets d of the KV contract
    latent_heads: int = bounded(4, ge=1, le=65536)
    latent_dim_head: int = bounded(16, ge=1, le=65536)
    queries_dim: int = bounded(64, ge=1, le=65536)
    image: ImageAdapterConfig = field(default_factory=ImageAdapterConfig)
    text: TextAdapterConfig = field(default_factory=TextAdapterConfig)

    @property
    def kv_dim(self) -> int:
        return self.cross_heads * self.cross_dim_head


@dataclass(frozen=True)
class PickOptions:
    """Piggyback-style real-valued mask scores, binarised at ``threshold``. A new mask starts with every
    score at ``init_score``, so the threshold must lie below it: otherwise the mask starts all-zero and
    masks away everything it covers (a borrowed K/V included)."""

    threshold: float = bounded(5e-3, gt=0.0, lt=1e3)
    init_score: float = bounded(1e-2, gt=0.0, lt=1e3)

    def __post_init__(self):
        if self.threshold >= self.init_score:
            raise ValueError(f"threshold {self.threshold} must be below init_score {self.init_score}: a new mask "
                             "would start all-zero and mask away every weight it covers")


@dataclass(frozen=True)
class PackNetOptions:
    prune_ratio: float = bounded(0.5, ge=0.0, lt=1.0)
    retrain_epochs: int = bounded(5, ge=0, le=100_000)


@dataclass(frozen=True)
class CPGOptions:
    max_sparsity: float = bounded(0.75, ge=0.0, lt=1.0)
    prune_steps: int = bounded(3, ge=1, le=1000)
    step_epochs: int = bounded(3, ge=0, le=100_000)
    tolerance: float = bounded(0.02, ge=0.0, le=1.0)
    accuracy_goal: float | None = bounded(None, gt=0.0, le=1.0)  # validation accuracy below which the network grows
    grow_units: int = bounded(32, ge=1, le=65536)
    max_grow: int = bounded(2, ge=0, le=100)
    grow_epochs: int = bounded(10, ge=0, le=100_000)


@dataclass(frozen=True)
class MethodConfig:
    name: str = bounded("packnet", choices=METHODS)
    packnet: PackNetOptions = field(default_factory=PackNetOptions)
    piggyback: PickOptions = field(default_factory=PickOptions)
    cpg: CPGOptions = field(default_factory=CPGOptions)


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = bounded(20, ge=1, le=100_000)
    batch_size: int = bounded(32, ge=1, le=1_000_000)
    lr: float = bounded(1e-3, gt=0.0, le=10.0)
    mask_lr: float = bounded(5e-4, gt=0.0, le=10.0)
    eval_batch_size: int = bounded(256, ge=1, le=1_000_000)
