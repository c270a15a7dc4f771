"""A node's config file: the run config plus the node's sections.

- ``node:`` the process (identity, addresses, gossip, timeouts, device, folders);
- ``selection:`` whom to borrow from (score, scope, deadline, probe);
- ``transfer:`` how to borrow (the strategy);
- ``adaptation:`` the budget every arm finishes a task with;
- ``experiment:`` comparison settings that are not part of the method (oracle, which arm to keep);
- ``swarm:`` what every node of one swarm agrees on (the genesis seed its network starts from).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .bounds import bounded
from .errors import ConfigError
from .run import RunConfig
from .selection import ExperimentConfig, SelectionConfig, SwarmSettings
from .transfer import AdaptationConfig, TransferConfig

# and MoNA's outer-loss gradient with the encoder body it is taken at (FetchOuterGrad)
# and frequency-decoupled KD's teacher features (FetchPublicFeatures, FetchSharedFeatures)
PAYLOAD_KINDS = ("kv", "ddv", "latents", "block", "backbone", "encoder", "outer_grad", "public_features", "features",
                 "task", "classify")
# a node lends its backbone and its finished tasks by default: they are what borrowing needs to pay (model
# weights, never data). task (MatchTask, FetchTask: a whole task, head included, only to a peer that sends
# the salted hashes of the very same label set) says which classes a node learned, to a peer that can
# guess their names, and how it separates them: a node that keeps that to itself serves [kv, ddv,
# backbone]; one that keeps its body too, [kv, ddv]. Its peers skip it with that reason.
# outer_grad is opt-in: it is computed on the node's own items, and a gradient says something about them
DEFAULT_SERVE = ("kv", "ddv", "backbone", "task")
# features (on items both nodes hold) is opt-in too: it answers about the node's own items.
# public_features answers about public items only, but costs a forward pass over them: opt-in as well.
# classify (the Classify RPC: inference on the caller's raw items) is opt-in: it does work for anyone
# who reaches the port; bind it to a trusted network or run with TLS
OUTER_GRAD_KINDS = ("encoder", "outer_grad")
# ProbeDDV's work grows with pair_count x token_count x C (the probe tokens every forward pass reads);
# this default admits 4x the largest probe the benchmarks use (256 x 16 x 64) and refuses what took
# seconds and gigabytes (512 x 1024 x 64: 32x over it)
DEFAULT_PROBE_BUDGET = 1 << 20
DEFAULT_MAX_PEERS = 256
DEFAULT_FANOUT = 3  # proven peers probed per round (besides suspects, seeds and candidates)
DEFAULT_ENTRIES = 3  # peer entries per gossip message (with fan-out 3: the same message at 4 nodes and at 400)
DEFAULT_INDIRECT = 3  # helpers asked to probe a peer that did not answer us
DEFAULT_BATCHES, DEFAULT_BATCH_SIZE = 4, 64  # node.outer_grad_batches / node.outer_grad_batch_size
CA_CERT, CA_KEY = "ca.pem", "ca.key"  # file names in a `crossback certs` folder


@dataclass(frozen=True)
class CallLimits:
    slots: int = bounded(2, ge=1, le=256)  # expensive calls running at once
    waiting: int = bounded(4, ge=0, le=1024)  # more that may wait for a slot
    per_caller: int = bounded(2, ge=1, le=256)  # in flight per caller: its address, its certificate under TLS
    wait: float = bounded(10.0, gt=0.0, le=600.0)  # seconds a waiting call waits before it is refused
    memory_mib: int = bounded(128, ge=8, le=1 << 20)  # estimated memory the running calls may hold at once

    @property
    def threads(self) -> int:
        """Worker threads these calls can hold at most."""
        return self.slots + self.waiting


@dataclass(frozen=True)
class TlsSettings:
    dir: str = ""  # a `crossback certs` folder: ca.pem, <node_id>.pem and <node_id>.key unless named below
    ca: str = ""  # the swarm CA's certificate
    cert: str = ""  # this node's certificate (its identity must be the node id)
    key: str = ""  # its private key
    allow: tuple[str, ...] = ()  # node ids admitted (this node is always); empty: every swarm member

    @property
    def enabled(self) -> bool:
        return bool(self.dir or self.ca or self.cert or self.key)

    def paths(self, node_id: str) -> dict[str, Path]:
        """The three files by key; ConfigError when one is neither named nor implied by ``dir``."""
        folder = Path(self.dir) if self.dir else None
        defaults = {"ca": CA_CERT, "cert": f"{node_id}.pem", "key": f"{node_id}.key"}
        paths = {}
        for name, default in defaults.items():
            given = getattr(self, name)
            if not given and folder is None:
                raise ConfigError(f"node.tls.{name}: required (or node.tls.dir, the folder crossback certs wrote)")
            paths[name] = Path(given) if given else folder / default
        return paths


@dataclass(frozen=True)
class MetricsSettings:
    # host:port of the Prometheus /metrics endpoint (port 0 picks a free one); empty: off. It answers
    # anyone who reaches it: bind it to the host or a network you scrape from
    listen: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True)
class NodeSettings:
    node_id: str = ""
    listen: str = "127.0.0.1:0"
    advertise: str | None = None  # host:port peers should dial; default: see addresses.advertise_address
    seed_peers: tuple[str, ...] = ()
    device: str = "auto"
    state_dir: str = "state"
    log_dir: str = "logs"
    heartbeat_interval: float = bounded(1.0, gt=0.0, le=3600.0)  # seconds between gossip rounds
    failure_timeout: float = bounded(5.0, gt=0.0, le=86400.0)  # silence after which a peer is dead
    rpc_timeout: float = bounded(5.0, gt=0.0, le=3600.0)
    rpc_attempts: int = bounded(3, ge=1, le=20)
    # a KV chunk is up to 1 MiB, so a smaller limit could not carry one
    max_message_bytes: int = bounded(4 << 20, ge=2 << 20, le=1 << 30)
    exit_when_done: bool = False  # default: keep serving peers after the last task
    threads: int = bounded(0, ge=0, le=4096)  # torch CPU threads; 0 = torch's default
    serve: tuple[str, ...] = DEFAULT_SERVE  # payload kinds handed to peers (server.PAYLOAD_KINDS)
    # FetchOuterGrad (serve: encoder + outer_grad): at most this many batches of this many own items
    outer_grad_batches: int = bounded(DEFAULT_BATCHES, ge=1, le=64)
    outer_grad_batch_size: int = bounded(DEFAULT_BATCH_SIZE, ge=2, le=4096)
    # proven peers this node keeps (and as many candidate addresses); a peer dead this long is forgotten
    max_peers: int = bounded(DEFAULT_MAX_PEERS, ge=1, le=100_000)
    dead_peer_ttl: float = bounded(60.0, gt=0.0, le=86_400.0)
    # per gossip round: proven peers probed (0: every peer), entries per message, indirect-probe helpers
    gossip_fanout: int = bounded(DEFAULT_FANOUT, ge=0, le=100_000)
    gossip_entries: int = bounded(DEFAULT_ENTRIES, ge=1, le=1024)
    indirect_probes: int = bounded(DEFAULT_INDIRECT, ge=0, le=16)
    # ProbeDDV refuses a spec whose pair_count x token_count x C exceeds this
    probe_budget: int = bounded(DEFAULT_PROBE_BUDGET, ge=1, le=1 << 34)
    # the RPCs that cost work (probes, tensor and feature streams) share this bounded pool
    expensive: CallLimits = field(default_factory=CallLimits)
    tls: TlsSettings = field(default_factory=TlsSettings)  # mutual TLS (node/tls.py); unset: plaintext
    metrics: MetricsSettings = field(default_factory=MetricsSettings)  # Prometheus (node/metrics.py); unset: off
    # task i arrives task_arrivals[i] seconds after arrival_origin and is learned no sooner (tasks past
    # the list: as soon as the one before is done); arrival_origin is a Unix time, 0: when this process
    # started. A node restarted with the same origin does not wait again for what has already arrived
    task_arrivals: tuple[float, ...] = ()
    arrival_origin: float = bounded(0.0, ge=0.0, le=1e11)
    # a folder for TensorBoard event files of this node's curves and selections; empty: none (the same
    # values always go to log_dir/<node_id>.metrics.csv)
    tensorboard: str = ""


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSettings
    run: RunConfig = field(repr=False)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    pair_secret: bytes = field(default=b"", repr=False)  # node/pair_secret.py


# environment variables a node reads (CROSSBACK_*), by the node key they set (tls_dir: node.tls.dir)
ENV_VARS = {
    "node_id": "CROSSBACK_NODE_ID",
    "listen": "CROSSBACK_LISTEN",
    "advertise": "CROSSBACK_ADVERTISE",
    "seed_peers": "CROSSBACK_SEED_PEERS",  # comma-separated
    "device": "CROSSBACK_DEVICE",
    "state_dir": "CROSSBACK_STATE_DIR",
    "log_dir": "CROSSBACK_LOG_DIR",
    "tls_dir": "CROSSBACK_TLS_DIR",  # node.tls.dir
    "metrics": "CROSSBACK_METRICS",  # node.metrics.listen
    "tensorboard": "CROSSBACK_TENSORBOARD",
}
NESTED_ENV = {"tls_dir": "tls.dir", "metrics": "metrics.listen"}  # the keys above that set a nested one

# a node's own sections (beside the run config's keys)
SECTIONS = {"node": NodeSettings, "selection": SelectionConfig, "transfer": TransferConfig,
            "adaptation": AdaptationConfig, "experiment": ExperimentConfig, "swarm": SwarmSettings}


# keys of the old mixed ``transfer:`` section, and where they live now
MOVED = {"transfer.adapt_epochs": "adaptation.epochs", "transfer.adapt_own_weights": "adaptation.own_weights",
         **{f"transfer.{k}": f"selection.{k}" for k in ("enabled", "scope", "deadline", "euc_weight", "probe")},
         **{f"transfer.{k}": f"experiment.{k}" for k in ("oracle", "keep")}}


def write_node_config(path: str | Path, mapping: dict[str, Any]) -> Path:
    """Write a node config (plain mappings, as YAML; key order kept) for ``crossback node --config``:
    the one writer the demo, local swarms, benchmarks and tests share. A top-level key a node would
    not read is refused here, before a process is started on it."""
    known = {f.name for f in fields(RunConfig)} | set(SECTIONS)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ConfigError(f"{path}: not node config sections: {unknown} (known: {sorted(known)})")
    path = Path(path)
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path
