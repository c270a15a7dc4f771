"""Stopping is quiet: the server stops taking calls and in-flight handlers finish (or are answered
UNAVAILABLE) before the clients they use close; no traceback on SIGINT or SIGTERM."""
from __future__ import annotations

import signal
import threading
import time

import grpc

from conftest import node_events, start_node, tiny_node_config, wait_for

from crossback.node.events import read_events
from crossback.node.transport import CallPolicy, PeerClient

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}]


def start(root, node_id, seeds):
    cfg = tiny_node_config(0, TASKS, 0.2, 3.0)
    cfg["node"]["rpc_timeout"] = 1.5
    console = open(root / f"{node_id}.console", "w")
    return start_node(root, node_id, cfg, seeds, console), console


def test_stopping_a_busy_swarm_prints_no_traceback(tmp_path):
    """a and b get Ctrl-C's SIGINT, c (frozen until then) a SIGTERM."""
    procs = {}
    a, ca = start(tmp_path, "a", [])
    procs["a"] = (a, ca)
    a_addr = wait_for(lambda: node_events(tmp_path, "a", "node_started"), 60, "a started", [a])[0]["address"]
    for name in ("b", "c"):
        procs[name] = start(tmp_path, name, [a_addr])
    addresses = {n: wait_for(lambda n=n: node_events(tmp_path, n, "node_started"), 60, f"{n} started",
                             [procs[n][0]])[0]["address"] for n in "bc"} | {"a": a_addr}
    for n in "abc":
        wait_for(lambda n=n: len({e["peer"] for e in node_events(tmp_path, n, "peer_joined")}) == 2, 60,
                 f"{n} knows both others", [p for p, _ in procs.values()])
    stop_load = threading.Event()

    def load():  # relays that wait on a frozen peer, and plain calls, up to the moment the nodes stop
        clients = {n: PeerClient(addr, "load", CallPolicy(timeout=3.0, attempts=1)) for n, addr in addresses.items()}
        while not stop_load.is_set():
            for n, client in clients.items():
                try:
                    client.probe_peer("c" if n != "c" else "a")
                    client.get_info()
                except (grpc.RpcError, ValueError):
                    pass
        for client in clients.values():
            client.close()

    loaders = [threading.Thread(target=load) for _ in range(3)]
    try:
        procs["c"][0].send_signal(signal.SIGSTOP)  # c freezes: a's and b's probes of it go indirect
        for t in loaders:
            t.start()
        wait_for(lambda: any(e["event"] == "payload_sent" for e in read_events(tmp_path / "logs" / "a.jsonl")), 10)
        time.sleep(1.5)  # relays to the frozen c are in flight now
        for n in "ab":
            procs[n][0].send_signal(signal.SIGINT)
        procs["c"][0].send_signal(signal.SIGCONT)
        procs["c"][0].send_signal(signal.SIGTERM)
        codes = {n: p.wait(timeout=30) for n, (p, _) in procs.items()}
    finally:
        stop_load.set()
        for t in loaders:
            if t.is_alive():
                t.join(10)
        for p, console in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
            console.close()
    assert codes == {"a": 0, "b": 0, "c": 0}
    for n in "abc":
        console = (tmp_path / f"{n}.console").read_text()
        assert "Traceback" not in console and "rpc_failed" not in console, f"{n}:\n{console[-4000:]}"
        assert not [e for e in read_events(tmp_path / "logs" / f"{n}.jsonl") if e["event"] == "rpc_failed"]
        assert node_events(tmp_path, n, "node_stopped")
