"""Membership traffic and failure detection against swarm size: bounded fan-out vs every-peer gossip;
and the failure detector's promise checked on a frozen, a killed and a returning peer under CPU load.

    python benchmarks/perf/gossip.py                       # 4, 16, 32 nodes; fan-out 3 and every peer
    python benchmarks/perf/gossip.py --sizes 4,8 --window 5 --json out.json
    python benchmarks/perf/gossip.py --detection --sizes 4,16 --load 2 --json out.json

Each size runs real gRPC servers, membership and gossip loops of N nodes (the node's own classes; no
model, no torch) on loopback in one process, seeded as a star (every node knows node 0's address).
After the view converges (everyone proven alive by everyone), it counts for ``--window`` seconds the
membership bytes (requests and replies) and messages each node sends per second, and the peer_dead
events for live nodes (false positives); then stops one node and times until every other node calls
it dead. Ratios are against the smallest size, measured in the same run.

``--detection``: the victim is a process of its own (so it can be frozen with SIGSTOP, as a device that
hangs or a laptop that sleeps: its kernel still accepts connections, its calls hang to their deadline);
``--load`` busy processes keep every core loaded meanwhile. Per trial it freezes the victim, times
until each other node calls it dead, resumes it and times until every node holds it alive again; the
last trial kills it. Each time is set against ``node.gossip.detection_bound``, the detector's promise.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masked_step import cpu_name  # noqa: E402

from crossback.node.events import EventLog  # noqa: E402
from crossback.node.server import NodeIdentity, PeerServicer, bind, peer_entries, serve  # noqa: E402
from crossback.node.gossip import GossipLoop, detection_bound  # noqa: E402
from crossback.orchestrator_free.membership import Membership, ViewSettings  # noqa: E402
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
        self.membership = Membership(node_id, self.address, seeds, timeout, on_event=self.tally.event,
                                     view=ViewSettings(fanout=fanout))
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


def _call_seconds(interval: float, timeout: float) -> float:
    """The longest one gossip call takes, as the node sets its gossip CallPolicy (node/process.py)."""
    return 2 * min(timeout, max(0.5, interval)) + interval / 4


def _views_until(nodes: list[SwarmNode], victim: str, alive: bool, since: float, limit: float = 120.0) -> list[float]:
    """Seconds from ``since`` until each node's view holds ``victim`` alive (or not), polled every 50 ms."""
    seen: dict[str, float] = {}
    while len(seen) < len(nodes) and time.monotonic() - since < limit:
        for x in nodes:
            if x.membership.node_id not in seen and (victim in {p.node_id for p in x.membership.alive()}) == alive:
                seen[x.membership.node_id] = time.monotonic() - since
        time.sleep(0.05)
    return sorted(seen.values())


def detection(n: int, fanout: int | None, interval: float, timeout: float, load: int, trials: int,
              folder: Path) -> dict:
    first = SwarmNode("n00", [], fanout, interval, timeout, folder)
    nodes = [first] + [SwarmNode(f"n{i:02d}", [first.address], fanout, interval, timeout, folder) for i in range(1, n - 1)]
    victim = subprocess.Popen([sys.executable, __file__, "--serve-one", "victim", "--seed", first.address,
                               "--fanouts", str(fanout or 0), "--interval", str(interval),
                               "--failure-timeout", str(timeout)], stdout=subprocess.PIPE, text=True)
    hogs: list[subprocess.Popen] = []
    for node in nodes:
        node.start()
    try:
        victim.stdout.readline()  # serving
        if len(_views_until(nodes, "victim", True, time.monotonic())) < len(nodes):
            raise RuntimeError(f"{n} nodes: the victim was not admitted by every node within 120 s")
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        time.sleep(2 * interval)
        bound = detection_bound(n - 1, fanout, interval, _call_seconds(interval, timeout), timeout)
        runs = []
        for trial in range(trials + 1):
            kill = trial == trials
            stopped = time.monotonic()
            victim.send_signal(signal.SIGKILL if kill else signal.SIGSTOP)
            dead = _views_until(nodes, "victim", False, stopped)
            run = {"fault": "kill" if kill else "pause", "detected_by": len(dead), "observers": len(nodes),
                   "first_s": round(dead[0], 2) if dead else None, "last_s": round(dead[-1], 2) if dead else None}
            if not kill:
                resumed = time.monotonic()
                victim.send_signal(signal.SIGCONT)
                back = _views_until(nodes, "victim", True, resumed)
                run["readmitted_last_s"] = round(back[-1], 2) if len(back) == len(nodes) else None
                time.sleep(2 * interval)
            runs.append(run)
        detected = [r["last_s"] for r in runs if r["last_s"] is not None]
        return {"nodes": n, "fanout": fanout or "all", "load_processes": load, "promised_s": round(bound, 2),
                "runs": runs, "worst_s": max(detected) if detected else None,
                "within_promise": all(r["detected_by"] == r["observers"] and r["last_s"] <= bound for r in runs)}
    finally:
        for hog in hogs:
            hog.kill()
        if victim.poll() is None:
            victim.send_signal(signal.SIGCONT)
            victim.kill()
        victim.wait()
        for node in nodes:
            node.stop()


def serve_one(node_id: str, seed: str, fanout: int | None, interval: float, timeout: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        node = SwarmNode(node_id, [seed], fanout, interval, timeout, Path(tmp))
        node.start()
        print(node.address, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        node.stop()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,16,32")
    parser.add_argument("--fanouts", default="3,0", help="fan-outs to compare; 0 = every peer every round")
    parser.add_argument("--interval", type=float, default=1.0, help="node.heartbeat_interval")
    parser.add_argument("--failure-timeout", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of steady state measured")
    parser.add_argument("--json")
    parser.add_argument("--detection", action="store_true", help="the detector's promise under load instead")
    parser.add_argument("--load", type=int, default=2, help="--detection: busy processes running meanwhile")
    parser.add_argument("--trials", type=int, default=3, help="--detection: pauses before the final kill")
    parser.add_argument("--serve-one", metavar="NODE_ID", help=argparse.SUPPRESS)
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    fanouts = [int(x) for x in args.fanouts.split(",")]
    if args.serve_one:
        return serve_one(args.serve_one, args.seed, fanouts[0] or None, args.interval, args.failure_timeout)
    if args.detection:
        return main_detection(args, sizes, fanouts)
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


def main_detection(args, sizes: list[int], fanouts: list[int]) -> int:
    print(f"{cpu_name()} ({os.cpu_count()} cores); heartbeat {args.interval} s, failure_timeout "
          f"{args.failure_timeout} s; {args.load} busy processes meanwhile")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fanout in fanouts:
            for n in sizes:
                row = detection(n, fanout or None, args.interval, args.failure_timeout, args.load, args.trials,
                                Path(tmp))
                rows.append(row)
                for r in row["runs"]:
                    print(f"fanout {row['fanout']:>3} nodes {n:>3}: {r['fault']:<5} dead in every view after "
                          f"{r['first_s']}-{r['last_s']} s (promise {row['promised_s']} s)"
                          + (f", back in every view {r['readmitted_last_s']} s after resuming"
                             if "readmitted_last_s" in r else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": f"{cpu_name()} ({os.cpu_count()} cores)",
                                               "settings": vars(args), "detection": rows}, indent=2))
    return 0 if all(r["within_promise"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
