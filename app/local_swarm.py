"""`crossback up`: the demo's swarm as long-running node processes at fixed, known addresses.

Unlike `crossback demo`, the nodes keep serving after their last task until you stop `up` (Ctrl-C or
SIGTERM), so other nodes (a laptop, a Jetson, a second terminal) can join them by address. Node i
listens on HOST:PORT+i and is seeded with every other node's address, so start order does not matter.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import yaml

from crossback.app.demo import launch_node, node_config, node_plan, stop_nodes, wait_for_event
from crossback.config.errors import ConfigError
from crossback.config.node import write_node_config
from crossback.node.addresses import WILDCARD_HOSTS, join_host_port
from crossback.node.metrics_http import scrape_config


def _check_free(host: str, port: int, flag: str = "--port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{flag}: {join_host_port(host, port)} is not free ({exc.strerror or exc})") from None


def run_up(out: Path, stop: threading.Event, nodes: int = 4, seed: int = 0, epochs: int = 30, adapt_epochs: int = 8,
           host: str = "127.0.0.1", port: int = 50051, advertise_host: str | None = None, log=print,
           start_timeout: float = 60.0, metrics_port: int | None = None) -> int:
    """Run until ``stop`` is set; returns 0, or 1 when a node process died on its own. ``metrics_port``:
    node i serves Prometheus metrics on HOST:METRICS_PORT+i, and ``out/prometheus.yml`` scrapes them."""
    if nodes < 2:
        raise ConfigError("--nodes: a swarm needs at least 2")
    for flag, first in (("--port", port), ("--metrics-port", metrics_port)):
        if first is not None and not 1 <= first <= 65535 - nodes:
            raise ConfigError(f"{flag}: {first} leaves no room for {nodes} consecutive ports")
    advertise_host = advertise_host or host
    if advertise_host in WILDCARD_HOSTS:
        raise ConfigError(f"--advertise-host: required when --host is {host!r} (the address other machines dial)")
    out = Path(out)
    plan = node_plan(nodes)
    for i in range(nodes):
        _check_free(host, port + i)
        if metrics_port is not None:
            _check_free(host, metrics_port + i, "--metrics-port")
    addresses = [join_host_port(advertise_host, port + i) for i in range(nodes)]
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    procs = {}
    try:
        for i, entry in enumerate(plan):
            cfg = node_config(entry, seed + i, epochs, adapt_epochs)
            cfg["node"]["advertise"] = addresses[i]
            if metrics_port is not None:
                cfg["node"]["metrics"] = {"listen": join_host_port(host, metrics_port + i)}
            cfg_path = out / "configs" / f"{entry['node_id']}.yaml"
            write_node_config(cfg_path, cfg)
            others = addresses[:i] + addresses[i + 1:]
            procs[entry["node_id"]] = launch_node(cfg_path, out, entry["node_id"], join_host_port(host, port + i),
                                                  others, console=None)
        deadline = time.monotonic() + start_timeout
        for entry, address in zip(plan, addresses):
            wait_for_event(*procs[entry["node_id"]], "node_started", deadline)
            log(f"{entry['node_id']:<8} {entry['modality']:<6} {address:<22} {', '.join(entry['tasks'])}")
        if metrics_port is not None:
            scrape = out / "prometheus.yml"
            targets = {e["node_id"]: join_host_port(advertise_host, metrics_port + i) for i, e in enumerate(plan)}
            scrape.write_text(yaml.safe_dump(scrape_config(targets), sort_keys=False), encoding="utf-8")
            log(f"metrics at http://{targets[plan[0]['node_id']]}/metrics ...; scrape them all with:\n"
                f"  prometheus --config.file={scrape}   (queries: docs/metrics.md)")
        log(f"swarm of {nodes} serving; logs in {out / 'logs'}. Join it with:\n"
            f"  crossback node --config examples/swarm/laptop.yaml --seed-peers {addresses[0]}\n"
            f"Inspect with: crossback peers --target {addresses[0]}   crossback selections {out}\n"
            "Ctrl-C stops every node (finished tasks stay in their checkpoints).")
        while not stop.wait(0.5):
            for node_id, (proc, log_path) in procs.items():
                if proc.poll() is not None:
                    log(f"{node_id} exited with {proc.returncode}; see {log_path}; stopping the swarm")
                    return 1
        return 0
    finally:
        stop_nodes(procs.values())
