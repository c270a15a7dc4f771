"""Loading a node's config file (its schema: ``crossback.config.node``) with the command line and the
environment applied, then the checks that need the runtime (addresses, device, TLS files, the strategy).

Precedence: command-line flags, then ``CROSSBACK_*`` environment variables, then the file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from crossback.config.bounds import check_bounds
from crossback.config.errors import ConfigError
from crossback.config.loader import from_mapping, key_paths, read_yaml
from crossback.config.node import ENV_VARS, MOVED, OUTER_GRAD_KINDS, PAYLOAD_KINDS, SECTIONS, NodeConfig, NodeSettings
from crossback.config.run import RUN_SECTIONS, parse_config
from crossback.data.public_set import public_set_for
from crossback.orchestrator_free.identity import address_problem, node_id_problem
from crossback.orchestrator_free.selection import check_combine
from crossback.transfer.registry import make_strategy

from .devices import resolve_device
from .pair_secret import load_pair_secret
from .tls import check_tls


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
    arrivals = sections["node"].task_arrivals
    if len(arrivals) > len(run.tasks):
        raise ConfigError(f"{path}: node.task_arrivals: {len(arrivals)} times for {len(run.tasks)} task(s)")
    if any(not 0 <= t <= 1e9 for t in arrivals) or list(arrivals) != sorted(arrivals):
        raise ConfigError(f"{path}: node.task_arrivals: seconds from 0 to 1e9, in order; got {list(arrivals)}")
    overrides = {}
    for key, var in ENV_VARS.items():
        if environ.get(var):
            overrides[key] = _split_peers(environ[var]) if key == "seed_peers" else environ[var]
    for key, value in (flags or {}).items():
        if value is not None:
            overrides[key] = _split_peers(value) if key == "seed_peers" and isinstance(value, str) else value
    node = sections.pop("node")
    if overrides.get("tls_dir"):
        node = dataclasses.replace(node, tls=dataclasses.replace(node.tls, dir=overrides["tls_dir"]))
    overrides.pop("tls_dir", None)
    if overrides.get("metrics"):
        node = dataclasses.replace(node, metrics=dataclasses.replace(node.metrics, listen=overrides["metrics"]))
    overrides.pop("metrics", None)
    settings = dataclasses.replace(node, **overrides)
    try:
        check_settings(settings)
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


def check_settings(s: NodeSettings) -> None:
    """Rules that can only be checked once flags and environment are applied."""
    if not s.node_id:
        raise ConfigError("node.node_id: required (config, --node-id or CROSSBACK_NODE_ID)")
    if node_id_problem(s.node_id):
        raise ConfigError(f"node.node_id: {node_id_problem(s.node_id)}")
    try:
        check_bounds(s, "node")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if s.failure_timeout <= s.heartbeat_interval:
        raise ConfigError("node.failure_timeout: must exceed node.heartbeat_interval")
    unknown = [k for k in s.serve if k not in PAYLOAD_KINDS]
    if unknown:
        raise ConfigError(f"node.serve: unknown payload kinds {unknown}; choose from {list(PAYLOAD_KINDS)}")
    half = [k for k in OUTER_GRAD_KINDS if k not in s.serve]
    if "outer_grad" in s.serve and half:
        raise ConfigError(f"node.serve: outer_grad travels with the encoder body it is taken at; add {half}")
    if s.rpc_attempts < 1:
        raise ConfigError("node.rpc_attempts: must be at least 1")
    if not _is_host_port(s.listen):  # port 0 picks a free one
        raise ConfigError(f"node.listen: {s.listen!r} is not host:port")
    if s.metrics.enabled and not _is_host_port(s.metrics.listen):
        raise ConfigError(f"node.metrics.listen: {s.metrics.listen!r} is not host:port (e.g. 0.0.0.0:9100)")
    for key, value in (("advertise", s.advertise), *(("seed_peers", s) for s in s.seed_peers)):
        if value is not None and address_problem(value):
            raise ConfigError(f"node.{key}: {address_problem(value)}")
    check_tls(s.tls, s.node_id)
    resolve_device(s.device)


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) < 65536)
