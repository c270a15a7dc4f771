from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossback.config.node import write_node_config
from crossback.data.sources import load_catalog
from crossback.config.data import SplitSpec, TaskSpec
from crossback.data.tasks import build_task
from crossback.config.data import View
from crossback.config.model import ImageAdapterConfig, TextAdapterConfig
from crossback.config.model import PerceiverConfig
from crossback.node.events import read_events


def tiny_config(channels: int = 1, patch: int = 2) -> PerceiverConfig:
    return PerceiverConfig(token_dim=32, num_latents=8, latent_dim=32, depth=1, cross_heads=1, cross_dim_head=16,
                           latent_heads=2, latent_dim_head=16, queries_dim=32,
                           image=ImageAdapterConfig(channels=channels, patch_size=patch),
                           text=TextAdapterConfig(max_length=40))


def wait_for(predicate, timeout: float, what: str = "condition", procs=(), step: float = 0.1):
    """Poll ``predicate`` until truthy and return its value; fail early if a process in ``procs`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"{dead[0].args} exited with {dead[0].returncode} while waiting for {what}"
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout}s")


def tiny_node_config(seed: int, tasks: list[dict], heartbeat: float, failure_timeout: float) -> dict:
    """A node config (run config + node + transfer sections) that learns digits tasks in about a second each."""
    return {
        "seed": seed,
        "data": {"source": "digits", "modality": "image", "image_size": 8},
        "tasks": tasks,
        "model": {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16,
                  "latent_heads": 2, "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}},
        "method": {"name": "packnet"},
        "train": {"epochs": 2, "batch_size": 64},
        "node": {"heartbeat_interval": heartbeat, "failure_timeout": failure_timeout, "rpc_timeout": 2.0},
        "selection": {"probe": {"pair_count": 8, "token_count": 4}},
        "adaptation": {"epochs": 1},
    }


def start_node(root: Path, node_id: str, cfg: dict, seeds: list[str], output=subprocess.DEVNULL) -> subprocess.Popen:
    """A real `crossback node` process on a free loopback port, its state and log under ``root``;
    ``output``: where its console (stdout and stderr) goes."""
    path = root / f"{node_id}.yaml"
    write_node_config(path, cfg)
    args = [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path), "--node-id", node_id,
            "--listen", "127.0.0.1:0", "--state-dir", str(root / "state" / node_id), "--log-dir", str(root / "logs")]
    if seeds:
        args += ["--seed-peers", ",".join(seeds)]
    return subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)


def start_serving(root: Path, procs: dict, node_id: str, cfg: dict, seeds: list[str], timeout: float = 240.0) -> str:
    """Start a node process (kept in ``procs``) and wait until it serves after its last task; its address."""
    procs[node_id] = start_node(root, node_id, cfg, seeds)
    started = wait_for(lambda: node_events(root, node_id, "node_started"), 60, f"{node_id} started", [procs[node_id]])
    wait_for(lambda: node_events(root, node_id, "serving"), timeout, f"{node_id} serving", list(procs.values()))
    return started[0]["address"]


def stop_nodes(procs: dict) -> None:
    """Ask every node process to stop, then wait for each (they shut down in parallel)."""
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        proc.wait(timeout=20)


def start_inprocess_node(folder: Path, node_id: str, tls=None, seeds=(), interval=None, fanout=None,
                         client_factory=None, failure_timeout: float = 30.0, metrics=None, listen="127.0.0.1:0"):
    """A node without a model in this process: a real gRPC server (TLS with ``tls``), its membership and,
    with ``interval``, its gossip loop. ``client_factory(address, expected_id)`` replaces how it dials;
    ``metrics``: a NodeMetrics its server, log and payloads feed. Returns (address, membership, stop)."""
    from crossback.node.events import EventLog
    from crossback.node.server import NodeIdentity, PeerServicer, bind, peer_entries, serve
    from crossback.node.gossip import GossipLoop
    from crossback.orchestrator_free.membership import Membership, ViewSettings
    from crossback.node.transport import CallPolicy, ClientPool, PeerClient

    events = EventLog(node_id, folder / f"{node_id}.jsonl", console=None,
                      listeners=(metrics.observe,) if metrics else ())
    server, port = bind(listen, workers=4, events=events, tls=tls, metrics=metrics)
    address = f"127.0.0.1:{port}"
    membership = Membership(node_id, address, list(seeds), failure_timeout, on_event=events.emit,
                            view=ViewSettings(allow=tls.allow if tls else frozenset(), fanout=fanout))
    servicer = PeerServicer(NodeIdentity(node_id, address, "image", "packnet", 32, {}), lambda: None, membership,
                            events, metrics=metrics)
    if metrics:
        metrics.watch(membership, lambda: None, servicer.limiter)
    serve(server, servicer)
    loop = None
    if interval:
        policy = CallPolicy(timeout=min(1.0, interval * 2), attempts=1)
        factory = client_factory or (lambda a, expected: PeerClient(a, node_id, policy, tls=tls, expected_id=expected))
        loop = GossipLoop(membership, ClientPool(factory), servicer.self_entry, lambda: peer_entries(membership),
                          interval)
        servicer.probe_peer = loop.probe_for
        loop.start()

    def stop():
        if loop:
            loop.stop()
            loop.clients.close()
        server.stop(grace=None)
        events.close()
    return address, membership, stop


def node_events(root: Path, node_id: str, name: str) -> list[dict]:
    """The events called ``name`` in a node's log under ``root``."""
    return [e for e in read_events(root / "logs" / f"{node_id}.jsonl") if e["event"] == name]


@pytest.fixture(scope="session")
def digits_tasks():
    """Three real tasks from scikit-learn's digits, 8x8 grey."""
    catalog = load_catalog("digits")
    view = View("image", image_size=8, channels=1)
    specs = [TaskSpec("a", classes=("0", "1", "2")), TaskSpec("b", classes=("3", "4", "5")),
             TaskSpec("c", classes=("6", "7", "8", "9"))]
    return [build_task(catalog, s, SplitSpec(), view, seed=0)[0] for s in specs]


@pytest.fixture(scope="session")
def emoji_catalog():
    return load_catalog("emoji")


def pytest_collection_modifyitems(config, items):
    """The Docker end-to-end tests take minutes: a run that collects other tests too skips them, unless asked."""
    docker_items = [item for item in items if item.get_closest_marker("docker_e2e")]
    if docker_items and len(docker_items) < len(items) and os.environ.get("CROSSBACK_DOCKER_E2E") != "1":
        skip = pytest.mark.skip(reason="slow Docker end-to-end test: run `pytest tests/test_docker_e2e.py` "
                                       "or set CROSSBACK_DOCKER_E2E=1")
        for item in docker_items:
            item.add_marker(skip)
    if os.environ.get("CROSSBACK_SLOW") != "1":
        slow = pytest.mark.skip(reason="a minute-long end-to-end check: .ci/run runs it (CROSSBACK_SLOW=1 pytest -m slow)")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(slow)

