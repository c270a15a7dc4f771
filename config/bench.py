"""The transfer benchmark's config: a regime is a set of donor and receiver nodes on shared data splits.

```yaml
regime: starved                 # a label: symmetric | starved | heterogeneous | your own
seeds: 5                        # default for --seeds
split: {train: 0.5, val: 0.1, test: 0.4, min_items_per_class: 20}   # one item split for every node
model: {...}                    # every node's model unless the node overrides some keys
method: {...}                   # continual-learning method of every node
train: {...}                    # local learning
receiver_epochs: 60             # local epochs of receivers (default: train.epochs)
selection: {...}                # as a node's selection: section (score = the one the node ranks by)
transfer: {strategy: crossback} # as a node's transfer: section
adaptation: {epochs: 10, own_weights: true}   # every arm's budget
control: true                   # add an untrained donor (never learned anything) as a control
average: false                  # add the uniform average of every trained candidate's payload as an arm
bootstrap: {resamples: 10000, confidence: 0.95}
nodes:
  - {name: d-low, role: donor, source: digits, modality: image, tasks: [...]}
  - {name: r-low, role: receiver, source: digits, modality: image, tasks: [...], shots: [2, 5, 10]}
quick: {seeds: 2, train: {epochs: 5}}     # overrides applied by --quick
```

``base: other.yaml`` starts from another bench config and merges this file's keys over it; with
``node_overrides: {node-name: {...}}`` a regime can change a few nodes of its base (e.g. their model).

Roles: a ``donor`` learns its tasks on all its training items and is served as a published snapshot; a
``receiver`` learns its tasks with only ``shots`` items per class (each k a separate run; no shots:
all items) and runs every arm; ``both`` is a receiver whose locally learned snapshot also serves the
others (the symmetric swarm). All nodes split items with the same seed, so no node ever trained on
an item that is in anyone's test split.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .bounds import bounded
from .data import Inputs, SplitSpec, TaskSpec, View
from .errors import ConfigError
from .loader import from_mapping, key_paths, read_yaml
from .model import MethodConfig, PerceiverConfig, TrainOptions
from .selection import SelectionConfig
from .transfer import AdaptationConfig, TransferConfig

ROLES = ("donor", "receiver", "both")


@dataclass(frozen=True, kw_only=True)
class BenchNode(Inputs):
    """One node of a regime: its items (``Inputs``: the keys of a node's ``data:`` section, written flat
    here), its tasks and its role."""

    name: str
    tasks: tuple[TaskSpec, ...]
    role: str = bounded("receiver", choices=ROLES)
    shots: tuple[int, ...] = ()  # receivers: items per class in train and val, one run per value
    model: PerceiverConfig = field(default_factory=PerceiverConfig)

    def __post_init__(self):
        if any(k < 1 for k in self.shots):
            raise ValueError(f"node {self.name!r}: shots must be at least 1, got {list(self.shots)}")
        if self.shots and self.role == "donor":
            raise ValueError(f"node {self.name!r}: a donor learns on all its data; shots are for receivers")

    @property
    def receives(self) -> bool:
        return self.role in ("receiver", "both")

    @property
    def serves(self) -> bool:
        return self.role in ("donor", "both")

    def view(self) -> View:
        return self.view_for(self.model)


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = bounded(10_000, ge=100, le=1_000_000)
    confidence: float = bounded(0.95, gt=0.5, lt=1.0)
    seed: int = bounded(0, ge=0)


@dataclass(frozen=True)
class BenchConfig:
    nodes: tuple[BenchNode, ...]
    regime: str = "custom"
    seeds: int = bounded(5, ge=1, le=1000)
    split: SplitSpec = field(default_factory=SplitSpec)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainOptions = field(default_factory=TrainOptions)
    # local epochs of a receiver's task (default: train.epochs); few items per class need more passes
    receiver_epochs: int | None = bounded(None, ge=1, le=100_000)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    control: bool = True
    # also adapt on the uniform average of every trained candidate's payload (FedAvg / model soup): the
    # baseline a selection must beat to be worth choosing one peer
    average: bool = False
    # every node of one seed initialises from one swarm genesis (crossback.orchestrator_free.genesis);
    # off: each node its own initialisation, as independently started devices have
    genesis: bool = False
    # DDV rank stability: also score every candidate with the probe seed replaced by each of these
    stability_seeds: tuple[int, ...] = ()
    # torch CPU threads: float sums, and so the numbers, depend on the thread count; 1 reproduces anywhere
    threads: int = bounded(1, ge=1, le=4096)
    min_test_items: int = bounded(20, ge=0)  # a receiver task with a smaller test split is reported
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self):
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"nodes: names must be unique, got {names}")
        if not any(n.receives for n in self.nodes):
            raise ValueError("nodes: at least one node must be a receiver (role receiver or both)")
        if not any(n.serves for n in self.nodes) and not self.control:
            raise ValueError("nodes: no donor and no control: nothing to borrow from")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_bench_config(data: dict, source: str = "bench config", quick: bool = False,
                       base_dir: Path | None = None) -> BenchConfig:
    try:
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping at the top level")
        data = dict(data)
        overrides = data.pop("quick", None) or {}
        if quick:
            data = _merge(data, overrides)
        model = data.pop("model", None) or {}
        raw_nodes = data.pop("nodes", None)
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise ConfigError("nodes: expected a non-empty list of nodes")
        nodes = []
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict):
                raise ConfigError(f"nodes[{i}]: expected a mapping")
            raw = {**raw, "model": _merge(model, raw.get("model") or {})}
            if base_dir is not None and raw.get("root") and not Path(raw["root"]).is_absolute():
                raw["root"] = str((base_dir / raw["root"]).resolve())
            nodes.append(raw)
        return from_mapping(BenchConfig, {**data, "nodes": nodes}, "", key_paths({"": BenchConfig}))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _with_base(data, path: Path, depth: int = 0) -> dict:
    """``base: other.yaml`` (relative to this file): that config with this one merged over it; ``node_overrides:
    {name: {...}}`` merges into the base's nodes of that name (lists are replaced, not merged)."""
    if not isinstance(data, dict) or "base" not in data:
        return data
    if depth > 4:
        raise ConfigError(f"{path}: base: chain of more than 4 configs")
    data = dict(data)
    base_path = path.parent / str(data.pop("base"))
    base = _with_base(read_yaml(base_path, "bench config"), base_path, depth + 1)
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path}: expected a mapping at the top level")
    node_over = data.pop("node_overrides", None) or {}
    merged = _merge(base, data)
    names = [n.get("name") for n in merged.get("nodes", []) if isinstance(n, dict)]
    unknown = sorted(set(node_over) - set(names))
    if unknown:
        raise ConfigError(f"{path}: node_overrides: no node named {unknown} in {base_path} (nodes: {names})")
    merged["nodes"] = [_merge(n, node_over.get(n.get("name"), {})) if isinstance(n, dict) else n
                       for n in merged.get("nodes", [])]
    return merged


def load_bench_config(path: str | Path, quick: bool = False) -> tuple[BenchConfig, dict]:
    """(config, the raw mapping it came from, after ``base:``)."""
    path = Path(path)
    data = _with_base(read_yaml(path, "bench config"), path)
    return parse_bench_config(data, str(path), quick, path.parent), data
