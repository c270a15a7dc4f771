"""A node's config file: the run config (data, tasks, model, method, train) plus a ``node:`` section.

Precedence: command-line flags, then ``CROSSBACK_*`` environment variables, then the file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from crossback.orchestrator_free.ddv import ProbeSpecError
from crossback.orchestrator_free.selection import SelectionConfig
from crossback.transfer.registry import STRATEGIES

from .config import ConfigError, from_mapping, parse_config
from .process import NodeConfig, NodeSettings

ENV = {
    "node_id": "CROSSBACK_NODE_ID",
    "listen": "CROSSBACK_LISTEN",
    "advertise": "CROSSBACK_ADVERTISE",
    "seed_peers": "CROSSBACK_SEED_PEERS",  # comma-separated
    "device": "CROSSBACK_DEVICE",
    "state_dir": "CROSSBACK_STATE_DIR",
    "log_dir": "CROSSBACK_LOG_DIR",
}


def _split_peers(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def load_node_config(path: str | Path, flags: dict | None = None, environ: dict | None = None) -> NodeConfig:
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    node_section = data.pop("node", {}) or {}
    transfer_section = data.pop("transfer", {}) or {}
    try:
        settings = from_mapping(NodeSettings, node_section, "node")
        strategy = transfer_section.pop("strategy", "crossback") if isinstance(transfer_section, dict) else None
        selection = from_mapping(SelectionConfig, transfer_section, "transfer")
        if strategy not in STRATEGIES:
            raise ConfigError(f"transfer.strategy: {strategy!r} is not one of {sorted(STRATEGIES)}")
        if selection.keep not in ("selected", "none", "random", "oracle"):
            raise ConfigError(f"transfer.keep: {selection.keep!r} is not selected, none, random or oracle")
        if selection.keep == "oracle" and not selection.oracle:
            raise ConfigError("transfer.keep: oracle needs transfer.oracle: true")
        if selection.scope not in ("cross", "intra"):
            raise ConfigError(f"transfer.scope: {selection.scope!r} is not cross or intra")
        selection.probe.validate()
    except ProbeSpecError as exc:
        raise ConfigError(f"{path}: transfer.probe: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    overrides = {}
    for key, var in ENV.items():
        if environ.get(var):
            overrides[key] = _split_peers(environ[var]) if key == "seed_peers" else environ[var]
    for key, value in (flags or {}).items():
        if value is not None:
            overrides[key] = _split_peers(value) if key == "seed_peers" and isinstance(value, str) else value
    settings = dataclasses.replace(settings, **overrides)
    try:
        settings.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return NodeConfig(settings, parse_config(data, str(path)), selection, strategy)
