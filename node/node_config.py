"""A node's config file: the run config (data, tasks, model, method, train) plus the node's sections.

- ``node:`` the process (identity, addresses, gossip, timeouts, device, folders);
- ``selection:`` whom to borrow from (score, scope, deadline, probe);
- ``transfer:`` how to borrow (the strategy);
- ``adaptation:`` the budget every arm finishes a task with;
- ``experiment:`` comparison settings that are not part of the method (oracle, which arm to keep);
- ``swarm:`` what every node of one swarm agrees on (the genesis seed its network starts from).

Precedence: command-line flags, then ``CROSSBACK_*`` environment variables, then the file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from crossback.data.public_set import public_set_for
from crossback.orchestrator_free.backbone import ExperimentConfig
from crossback.orchestrator_free.genesis import SwarmSettings
from crossback.orchestrator_free.selection import SelectionConfig, check_combine
from crossback.transfer.base import AdaptationConfig
from crossback.transfer.registry import TransferConfig, make_strategy

from .config import RUN_SECTIONS, ConfigError, from_mapping, key_paths, parse_config, read_yaml
from .pair_secret import load_pair_secret
from .process import NodeConfig, NodeSettings

ENV = {
    "node_id": "CROSSBACK_NODE_ID",
    "listen": "CROSSBACK_LISTEN",
    "advertise": "CROSSBACK_ADVERTISE",
    "seed_peers": "CROSSBACK_SEED_PEERS",  # comma-separated
    "device": "CROSSBACK_DEVICE",
    "state_dir": "CROSSBACK_STATE_DIR",
    "log_dir": "CROSSBACK_LOG_DIR",
    "tls_dir": "CROSSBACK_TLS_DIR",  # node.tls.dir
}
SECTIONS = {"node": NodeSettings, "selection": SelectionConfig, "transfer": TransferConfig,
            "adaptation": AdaptationConfig, "experiment": ExperimentConfig, "swarm": SwarmSettings}
# keys of the old mixed ``transfer:`` section, and where they live now
MOVED = {"transfer.adapt_epochs": "adaptation.epochs", "transfer.adapt_own_weights": "adaptation.own_weights",
         **{f"transfer.{k}": f"selection.{k}" for k in ("enabled", "scope", "deadline", "euc_weight", "probe")},
         **{f"transfer.{k}": f"experiment.{k}" for k in ("oracle", "keep")}}


def _split_peers(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def load_node_config(path: str | Path, flags: dict | None = None, environ: dict | None = None) -> NodeConfig:
    path = Path(path)
    environ = os.environ if environ is None else environ
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    homes = key_paths({**RUN_SECTIONS, **SECTIONS})
    sections = {}
    try:
        for name, cls in SECTIONS.items():
            sections[name] = from_mapping(cls, data.pop(name, None) or {}, name, homes, MOVED)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    run = parse_config(data, str(path), path.parent, homes)
    overrides = {}
    for key, var in ENV.items():
        if environ.get(var):
            overrides[key] = _split_peers(environ[var]) if key == "seed_peers" else environ[var]
    for key, value in (flags or {}).items():
        if value is not None:
            overrides[key] = _split_peers(value) if key == "seed_peers" and isinstance(value, str) else value
    node = sections.pop("node")
    if overrides.get("tls_dir"):
        node = dataclasses.replace(node, tls=dataclasses.replace(node.tls, dir=overrides["tls_dir"]))
    overrides.pop("tls_dir", None)
    settings = dataclasses.replace(node, **overrides)
    try:
        settings.validate()
        secret, _ = load_pair_secret(sections["swarm"].pair_secret_file, settings.tls.dir)
        if "features" in settings.serve and not (settings.tls.enabled and secret):
            raise ConfigError("node.serve: features answers only swarm members (node.tls) about item ids "
                              "hashed under the swarm's pair secret (swarm.pair_secret_file, or pair.key in "
                              f"node.tls.dir); this node has {'no TLS' if not settings.tls.enabled else 'no pair secret'}")
        strategy = make_strategy(sections["transfer"], public_set_for(run.data.source, run.data.split), secret)
        check_combine(sections["selection"], strategy)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return NodeConfig(settings, run, **sections, pair_secret=secret)
