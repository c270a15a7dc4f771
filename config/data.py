"""Data settings: which items a node sees, how they are split and how they become tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

from .bounds import bounded, check_bounds
from .errors import DataError

# the data sources by name (crossback.data.sources implements each; a test keeps the two lists equal)
SOURCES = ("emoji", "digits", "fashion", "glyphs", "folder", "cifar100", "cub200", "oxford102")


@dataclass(frozen=True)
class TaskSpec:
    """A task is a superclass (all of its classes big enough to split) or an explicit class list."""

    name: str
    superclass: str | None = None
    classes: tuple[str, ...] | None = None

    @property
    def group(self) -> str:
        """The superclass a task without a class list stands for: its ``superclass``, else its name
        (``tasks: [animals]`` is the superclass ``animals``)."""
        return self.superclass if self.superclass is not None else self.name


@dataclass(frozen=True)
class SplitSpec:
    train: float = bounded(0.6, gt=0.0, lt=1.0)
    val: float = bounded(0.2, gt=0.0, lt=1.0)
    test: float = bounded(0.2, gt=0.0, lt=1.0)
    min_items_per_class: int = bounded(4, ge=3)  # one item per split at least
    max_items_per_class: int | None = bounded(None, ge=3)
    # hold this fraction of the items out of every task: the public paired set (crossback.data.public_set)
    public_fraction: float = bounded(0.0, ge=0.0, lt=1.0)
    public_salt: str = "crossback-public-v1"

    def __post_init__(self):
        try:
            check_bounds(self, "split")
        except ValueError as exc:
            raise DataError(str(exc)) from None
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise DataError(f"split fractions must sum to 1, got {self.train + self.val + self.test}")


@dataclass(frozen=True)
class ItemPartition:
    """This node holds part ``index`` of ``parts`` of every class's train and val items, parts disjoint:
    equal parts, or with ``alpha`` Dirichlet(alpha) shares drawn per class (the federated label-skew
    convention: small alpha, few classes per node). The test split is whole on every node."""

    parts: int = bounded(1, ge=1, le=100_000)
    index: int = bounded(0, ge=0, lt=100_000)
    alpha: float | None = bounded(None, gt=0.0, le=1e6)
    seed: int = bounded(0, ge=0, lt=2**31)

    def __post_init__(self):
        if self.index >= self.parts:
            raise DataError(f"partition.index {self.index} must be below partition.parts {self.parts}")


@dataclass(frozen=True)
class View:
    """How items become tensors: which modality, image size and channels, text length."""

    modality: str
    image_size: int = 32
    channels: int = 3
    text_max_length: int = 64
    text_encoder: str = "bytes"  # bytes | minilm (crossback.models.text_encoders)
    image_encoder: str = "patches"  # patches | efficientnet (crossback.models.image_encoders)


MODALITIES = ("image", "text")


@dataclass(frozen=True)
class Inputs:
    """Where a node's items come from and at what size: a node's ``data:`` section and a benchmark
    node (``crossback.config.bench.BenchNode``) both start with these keys."""

    source: str = bounded("emoji", choices=SOURCES)
    root: str | None = None  # a relative root is resolved against the config file's folder
    modality: str = bounded("image", choices=MODALITIES)
    image_size: int = bounded(32, ge=1, le=65536)

    def view_for(self, model) -> View:
        """How these items become tensors for ``model`` (a ``crossback.config.model.PerceiverConfig``)."""
        return View(self.modality, self.image_size, model.image.channels, model.text.max_length,
                    model.text.encoder, model.image.encoder)


@dataclass(frozen=True)
class DataConfig(Inputs):
    split: SplitSpec = field(default_factory=SplitSpec)
    # seed of the item split (default: the run's seed); nodes that compare test accuracies, or whose
    # donors must never have trained on a receiver's test items, share one
    split_seed: int | None = bounded(None, ge=0, lt=2**31)
    # keep only this many items per class in train and in val (a data-starved device); test is untouched
    shots: int | None = bounded(None, ge=1, le=1_000_000)
    # one part of every class's train and val items (applied before shots); unset: all of them
    partition: ItemPartition | None = None
