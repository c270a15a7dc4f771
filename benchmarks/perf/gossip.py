"""Membership traffic and failure detection against swarm size: bounded fan-out vs every-peer gossip.

    python benchmarks/perf/gossip.py                       # 4, 16, 32 nodes; fan-out 3 and every peer
    python benchmarks/perf/gossip.py --sizes 4,8 --window 5 --json out.json

Each size runs real gRPC servers, membership and gossip loops of N nodes (the node's own classes; no
model, no torch) on loopback in one process, seeded as a star (every node knows node 0's address).
After the view converges (everyone proven alive by everyone), it counts for ``--window`` seconds the
membership bytes (requests and replies) and messages each node sends per second, and the peer_dead
events for live nodes (false positives); then stops one node and times until every other node calls
it dead. Ratios are against the smallest size, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masked_step import cpu_name  # noqa: E402

from crossback.node.events import EventLog  # noqa: E402
from crossback.node.server import NodeIdentity, PeerServicer, bind, peer_entries, serve  # noqa: E402
from crossback.node.gossip import GossipLoop
from crossback.orchestrator_free.membership import Membership  # noqa: E402
from crossback.node.transport import CallPolicy, ClientPool, PeerClient


class Tally:
    """Bytes and messages one node sends (its requests and its replies), and its membership events."""

    def __init__(self):
        self.lock, self.bytes, self.messages, self.events = threading.Lock(), 0, 0, []

    def __call__(self, kind, peer, nbytes):
        with self.lock:
            self.bytes += nbytes
            self.messages += 1

    def event(self, name, **fields):
        with self.lock:
            self.events.append((time.monotonic(), name, fields.get("peer")))

    def flush(self):
        pass


class SwarmNode:
    def __init__(self, node_id: str, seeds: list[str], fanout: int | None, interval: float, timeout: float,
                 folder: Path):
        self.tally = Tally()
        self.server, port = bind("127.0.0.1:0", workers=8)
        self.address = f"127.0.0.1:{port}"
        self.events = EventLog(node_id, folder / f"{node_id}.jsonl", console=None)
        self.membership = Membership(node_id, self.address, seeds, timeout, on_event=self.tally.event, fanout=fanout)
        self.servicer = PeerServicer(NodeIdentity(node_id, self.address, "image", "packnet", 64, {}), lambda: None,
                                     self.membership, self.events, payloads=self.tally)
        serve(self.server, self.servicer)
        policy = CallPolicy(timeout=min(timeout, max(0.5, interval)), attempts=2, backoff_max=interval / 4)
        clients = ClientPool(lambda a, expected: PeerClient(a, node_id, policy, self.tally))
        self.gossip = GossipLoop(self.membership, clients, self.servicer.self_entry,
                                 lambda: peer_entries(self.membership), interval)
        self.servicer.probe_peer = self.gossip.probe_for

    def start(self):
        self.gossip.start()

    def stop(self):
        self.gossip.stop()
        self.gossip.clients.close()
        self.server.stop(grace=None)
        self.events.close()


def run_size(n: int, fanout: int | None, interval: float, timeout: float, window: float, folder: Path) -> dict:
    first = SwarmNode("n00", [], fanout, interval, timeout, folder)
    nodes = [first] + [SwarmNode(f"n{i:02d}", [first.address], fanout, interval, timeout, folder) for i in range(1, n)]
    for node in nodes:
        node.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 120:
            if all(len(node.membership.alive()) == n - 1 for node in nodes):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{n} nodes: the view did not converge within 120 s")
        converged = time.monotonic() - started
        before = [(x.tally.bytes, x.tally.messages) for x in nodes]
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        per_node_bytes = [(x.tally.bytes - b) / elapsed for x, (b, _) in zip(nodes, before)]
        per_node_msgs = [(x.tally.messages - m) / elapsed for x, (_, m) in zip(nodes, before)]
        false_steady = sum(1 for x in nodes for ts, name, _ in x.tally.events if name == "peer_dead" and ts >= t0)
        victim, rest = nodes[-1], nodes[:-1]
        victim.stop()
        killed = time.monotonic()
        detected = {}
        while len(detected) < len(rest) and time.monotonic() - killed < 120:
            for x in rest:
                if x.membership.address not in detected and victim.membership.node_id not in {
                        p.node_id for p in x.membership.alive()}:
                    detected[x.membership.address] = time.monotonic() - killed
            time.sleep(0.05)
        false_after = sum(1 for x in rest for ts, name, peer in x.tally.events
                          if name == "peer_dead" and ts >= killed and peer != victim.membership.node_id)
        return {"nodes": n, "fanout": fanout or "all", "converged_s": round(converged, 2),
                "membership_bytes_per_node_s": statistics.mean(per_node_bytes),
                "messages_per_node_s": statistics.mean(per_node_msgs),
                "detect_first_s": min(detected.values()) if detected else None,
                "detect_all_s": max(detected.values()) if len(detected) == len(rest) else None,
                "false_positives": false_steady + false_after, "window_s": round(elapsed, 2)}
    finally:
        for node in nodes[:-1]:
            node.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,16,32")
    parser.add_argument("--fanouts", default="3,0", help="fan-outs to compare; 0 = every peer every round")
    parser.add_argument("--interval", type=float, default=1.0, help="node.heartbeat_interval")
    parser.add_argument("--failure-timeout", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of steady state measured")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    fanouts = [int(x) for x in args.fanouts.split(",")]
    print(f"{cpu_name()} ({os.cpu_count()} cores); heartbeat {args.interval} s, failure_timeout "
          f"{args.failure_timeout} s, {args.window} s window; one process, loopback")
    print(f"{'fanout':>6} {'nodes':>5} {'bytes/node/s':>13} {'vs smallest':>11} {'msgs/node/s':>12} "
          f"{'converged':>9} {'detect first':>12} {'detect all':>10} {'false +':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fanout in fanouts:
            base = None
            for n in sizes:
                row = run_size(n, fanout or None, args.interval, args.failure_timeout, args.window, Path(tmp))
                base = base or row["membership_bytes_per_node_s"]
                row["bytes_ratio_vs_smallest"] = row["membership_bytes_per_node_s"] / base
                rows.append(row)
                fmt = lambda v: "-" if v is None else f"{v:.1f} s"  # noqa: E731
                print(f"{row['fanout']:>6} {n:>5} {row['membership_bytes_per_node_s']:>13.0f} "
                      f"{row['bytes_ratio_vs_smallest']:>10.2f}x {row['messages_per_node_s']:>12.1f} "
                      f"{row['converged_s']:>8.1f}s {fmt(row['detect_first_s']):>12} {fmt(row['detect_all_s']):>10} "
                      f"{row['false_positives']:>7}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": f"{cpu_name()} ({os.cpu_count()} cores)",
                                               "settings": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
