"""How a task borrows (``transfer:``) and the budget every arm finishes a task with (``adaptation:``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .bounds import bounded

# what a task can borrow of a peer (crossback.models.borrowed implements each)
PART_KINDS = ("kv", "latents", "block", "backbone", "encoder", "task")
# mergenet: the matrix it reads and writes, by the payload kind it arrives in (crossback.transfer.mergenet)
MERGENET_MATRICES = ("kv", "latents")
MAX_PAIR_ITEMS = 4096  # items one feature request may name (crossback.transfer.pairs)


@dataclass(frozen=True)
class AdaptationConfig:
    """How every arm finishes a task (the ``adaptation:`` section): the same budget for all of them."""

    epochs: int = bounded(10, ge=0, le=100_000)
    # also retrain the shared weights the task owns, as the paper's CL.train_with_mask does
    own_weights: bool = True
    # before adapting on borrowed parts, refit the head by a linear probe on the features they give
    # (the task's head was learned on its own body; see crossback.models.training.fit_head)
    head_probe: bool = True


@dataclass(frozen=True)
class MergeNetConfig:
    """The ``transfer.mergenet`` section. The paper's settings where it gives them (2 knowledge-transfer
    layers, 8 heads, adapter lr 1e-3 and weight decay 1e-2 with AdamW, T_cycle 2 for its cross-modal
    runs); it does not state the rank or the attention width."""

    matrix: str = bounded("kv", choices=MERGENET_MATRICES)
    rank: int = bounded(8, ge=1, le=4096)
    t_cycle: int = bounded(2, ge=1, le=1_000_000)
    layers: int = bounded(2, ge=1, le=16)
    heads: int = bounded(8, ge=1, le=64)
    dim: int = bounded(64, ge=1, le=4096)
    lr: float = bounded(1e-3, gt=0.0, le=10.0)
    weight_decay: float = bounded(1e-2, ge=0.0, le=10.0)

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"mergenet.dim {self.dim} is not divisible by mergenet.heads {self.heads}")


@dataclass(frozen=True)
class MonaConfig:
    """The ``transfer.mona`` section."""

    # lambda: the paper finds its optimum in [0.3, 0.5]
    trade_off: float = bounded(0.4, ge=0.0, le=1000.0)
    # alpha: the virtual inner step (plain gradient descent) whose effect on the peer's loss stage 1
    # anticipates; the paper does not state it (docs/transfer.md says how this default was chosen)
    inner_lr: float = bounded(1.0, gt=0.0, le=1e6)
    stage1_epochs: int = bounded(5, ge=0, le=100_000)  # the paper: 5 epochs of embedder training suffice
    lr: float | None = bounded(None, gt=0.0, le=10.0)  # stage 1's Adam lr (default: train.lr)
    outer_batches: int = bounded(4, ge=1, le=64)  # ask the peer to average its gradient over at most this


PAIR_KINDS = {"public": "public_features", "shared_ids": "features"}


@dataclass(frozen=True)
class FreqKDConfig:
    """The ``transfer.freqkd`` section."""

    # where paired items come from: the public set every node holds out (data.split.public_fraction),
    # or the ids of items both nodes hold (the teacher must serve ``features``)
    pairs: str = bounded("public", choices=tuple(PAIR_KINDS))
    low_weight: float = bounded(1.0, ge=0.0, le=1e6)  # lambda_1 (the paper's default)
    high_weight: float = bounded(1.0, ge=0.0, le=1e6)  # lambda_2 (the paper's default)
    low_fraction: float = bounded(0.5, gt=0.0, lt=1.0)  # share of the non-DC bins in the low band
    decouple: bool = True  # false: the ablation without the band split
    # fit the shared classifiers by a linear probe before adapting (else they start random)
    probe_classifiers: bool = True
    pair_batch: int = bounded(32, ge=1, le=4096)  # paired samples per step, beside each batch of own items
    max_pairs: int = bounded(1024, ge=1, le=MAX_PAIR_ITEMS)  # items named in one request


@dataclass(frozen=True)
class TransferConfig:
    """The ``transfer:`` section: how a task borrows from the chosen peer."""

    # a name crossback.transfer.registry knows (crossback, mergenet, mona, freqkd, or one registered there);
    # checked when the strategy is made, so a strategy can be added without touching this package
    strategy: str = "crossback"
    # crossback: which of the peer's parts the task runs on (see crossback.models.borrowed). task (the
    # default): a peer's model of the same label set, head included, found by salted class hashes, and
    # where no peer learned the label set the backbone the selection picks; backbone: always the
    # selection's pick; kv (the paper's unit) did not pay in the transfer benchmark
    borrow: str = bounded("task", choices=PART_KINDS)
    mergenet: MergeNetConfig = field(default_factory=MergeNetConfig)
    mona: MonaConfig = field(default_factory=MonaConfig)
    freqkd: FreqKDConfig = field(default_factory=FreqKDConfig)
