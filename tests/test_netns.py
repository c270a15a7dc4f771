"""Multi-host: nodes in separate Linux network namespaces, each with its own address, joined by veth
pairs to a bridge that lives in a namespace of its own (the test's "switch").

They discover each other (two of them only know the first), select backbones across namespaces,
notice one namespace's cable being pulled at the switch, and take it back when it is plugged in
again; a node started after that, seeded only with the node that was cut off, finds the whole swarm
through it and selects from it. Every node and every CLI query runs inside a namespace; this process
only reads log files. Needs root and iproute2 (skipped otherwise), and deletes everything it created.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from crossback.node.events import read_events

from conftest import tiny_node_config, wait_for

SUBNET = "10.213.0"
PORT = 50051
HEARTBEAT, FAILURE_TIMEOUT = 0.25, 2.0
TASKS = [{"name": "low", "classes": ["0", "1", "2"]}, {"name": "high", "classes": ["7", "8", "9"]}]
PREFIX = "cbt"  # namespaces are named cbt-<pid>-<token>-<role>; see _remove_orphans


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _kill_and_delete(ns: str) -> None:
    pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]
            time.sleep(0.1)
    ip("netns", "del", ns, check=False)


def _remove_orphans() -> None:
    """Namespaces left by an earlier run of this test that was itself killed (its pid is gone)."""
    for ns in _namespaces():
        parts = ns.split("-")
        if len(parts) >= 4 and parts[0] == PREFIX and parts[1].isdigit() and not Path(f"/proc/{parts[1]}").exists():
            _kill_and_delete(ns)


def _can_make_namespaces() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"{PREFIX}-{os.getpid()}-probe-x"
    if ip("netns", "add", probe, check=False).returncode != 0:
        return "ip netns add is not permitted here"
    ip("netns", "del", probe, check=False)
    return None


class Switch:
    """A bridge in its own namespace; hosts are namespaces with one veth each, cabled to the bridge."""

    def __init__(self):
        self.token = uuid.uuid4().hex[:6]
        self.name = self._ns("sw")
        self.created: list[str] = []
        self.hosts: dict[str, tuple[str, str, str]] = {}  # role -> (namespace, address, switch port)

    def _ns(self, role: str) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.token}-{role}"

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.created.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def start(self) -> "Switch":
        self._add_ns(self.name)
        ip("-n", self.name, "link", "add", "br0", "type", "bridge")
        ip("-n", self.name, "link", "set", "br0", "up")
        return self

    def add_host(self, role: str) -> tuple[str, str]:
        ns, port = self._ns(role), f"p{len(self.hosts)}"
        address = f"{SUBNET}.{len(self.hosts) + 1}"
        self._add_ns(ns)
        ip("-n", self.name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.name, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[role] = (ns, address, port)
        return ns, address

    def cable(self, role: str, up: bool) -> None:
        ip("-n", self.name, "link", "set", self.hosts[role][2], "up" if up else "down")

    def close(self) -> None:
        for ns in reversed(self.created):
            _kill_and_delete(ns)


@pytest.fixture
def switch():
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    _remove_orphans()
    sw = Switch()
    try:
        yield sw.start()
    finally:
        sw.close()
        leftovers = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}-{os.getpid()}-{sw.token}")]
        assert not leftovers, f"namespaces left behind: {leftovers}"


class NsNode:
    def __init__(self, switch: Switch, root: Path, role: str, seeds: list[str], seed: int, epochs: int | None = None):
        self.role = role
        self.ns, self.ip = switch.add_host(role)
        self.address = f"{self.ip}:{PORT}"
        self.log = root / "logs" / f"{role}.jsonl"
        cfg = root / f"{role}.yaml"
        config = tiny_node_config(seed, TASKS, HEARTBEAT, FAILURE_TIMEOUT)
        config["node"]["threads"] = 1
        config["selection"]["deadline"] = 20.0
        if epochs is not None:
            config["train"]["epochs"] = epochs
        cfg.write_text(yaml.safe_dump(config))
        args = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "crossback.app.cli", "node", "--config", str(cfg),
                "--node-id", role, "--listen", self.address, "--state-dir", str(root / "state" / role),
                "--log-dir", str(root / "logs")]
        if seeds:
            args += ["--seed-peers", ",".join(seeds)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(root / f"{role}.stderr", "w"))

    def events(self, name: str) -> list[dict]:
        return [e for e in read_events(self.log) if e["event"] == name]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """A crossback CLI command run inside this node's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "crossback.app.cli", *args],
                              capture_output=True, text=True, timeout=30)


def running(nodes: dict) -> list[subprocess.Popen]:
    return [n.proc for n in nodes.values()]


def peers_of(node: NsNode, event: str) -> set[str]:
    return {e["peer"] for e in node.events(event)}


def cross_namespace_selection(node: NsNode, others: set[str]) -> dict:
    for sel in node.events("backbone_selected"):
        answered = [c for c in sel["candidates"] if c["error"] is None]
        if sel["chosen"] in others and answered and all(math.isfinite(c["score"]) for c in answered):
            return sel
    return {}


def test_nodes_in_separate_namespaces_discover_select_and_survive_a_cut_link(switch, tmp_path):
    started = time.monotonic()
    nodes: dict[str, NsNode] = {}
    try:
        a = nodes["a"] = NsNode(switch, tmp_path, "a", [], seed=0)
        wait_for(lambda: a.events("tasks_done"), 60, "a learns its tasks alone", [a.proc])
        b = nodes["b"] = NsNode(switch, tmp_path, "b", [a.address], seed=1)
        c = nodes["c"] = NsNode(switch, tmp_path, "c", [a.address], seed=2)
        assert len({n.ip for n in nodes.values()}) == 3 and len({n.ns for n in nodes.values()}) == 3

        # discovery: b and c only know a, and find each other through it
        for n in nodes.values():
            others = set(nodes) - {n.role}
            wait_for(lambda n=n, others=others: peers_of(n, "peer_joined") >= others, 30, f"{n.role} discovers {others}",
                     running(nodes))
        joined = {e["peer"]: e["address"] for e in b.events("peer_joined")}
        assert joined["c"] == c.address and joined["a"] == a.address

        # selection across namespaces: K/V fetched and DDVs probed over the veth links
        for n in (b, c):
            sel = wait_for(lambda n=n: cross_namespace_selection(n, set(nodes) - {n.role}), 60,
                           f"{n.role} selects a backbone in another namespace", running(nodes))
            assert sel["bytes"] > 0
        for n in nodes.values():
            wait_for(lambda n=n: n.events("tasks_done"), 60, f"{n.role} finishes", running(nodes))

        # pull c's cable at the switch: both sides declare the other dead, nobody crashes
        switch.cable("c", up=False)
        cut = time.monotonic()
        for n, gone in ((a, {"c"}), (b, {"c"}), (c, {"a", "b"})):
            wait_for(lambda n=n, gone=gone: peers_of(n, "peer_dead") >= gone, FAILURE_TIMEOUT + 10,
                     f"{n.role} reports {gone} dead", running(nodes))
        detected = time.monotonic() - cut
        time.sleep(max(0.0, cut + 3 * FAILURE_TIMEOUT - time.monotonic()))  # stay cut over many gossip rounds
        health = c.cli("health", "--target", c.address)
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr  # c still serves its own side

        # plug it back in: everyone comes back
        switch.cable("c", up=True)
        plugged = time.monotonic()
        for n, back in ((a, {"c"}), (b, {"c"}), (c, {"a", "b"})):
            wait_for(lambda n=n, back=back: peers_of(n, "peer_returned") >= back, 60,
                     f"{n.role} sees {back} return", running(nodes))
        recovered = time.monotonic() - plugged
        view = a.cli("peers", "--target", a.address)
        assert view.returncode == 0, view.stderr
        assert all(f"{r} " in view.stdout for r in ("b", "c")) and " dead " not in view.stdout, view.stdout

        # a newcomer seeded only with the node that was cut off finds the swarm and selects from it
        # (it trains long enough for gossip to show it the swarm before its second task's selection; on a
        # fast machine the default epochs ended both tasks first)
        d = nodes["d"] = NsNode(switch, tmp_path, "d", [c.address], seed=3, epochs=20)
        wait_for(lambda: peers_of(d, "peer_joined") >= {"a", "b", "c"}, 30, "d discovers the swarm through c", running(nodes))
        wait_for(lambda: len(d.events("backbone_selected")) == len(TASKS), 90, "d selects on every task", running(nodes))
        sel = d.events("backbone_selected")[-1]
        assert {cand["peer"] for cand in sel["candidates"] if cand["error"] is None} == {"a", "b", "c"}, sel["candidates"]
        assert sel["chosen"] in {"a", "b", "c"}
        for n in nodes.values():
            assert n.proc.poll() is None, f"{n.role} died"
        print(f"\nnetns swarm: cut detected in {detected:.1f}s, recovered in {recovered:.1f}s, whole test {time.monotonic() - started:.1f}s")
    finally:
        for n in nodes.values():
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in nodes.values():
            try:
                n.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
