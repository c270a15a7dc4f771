"""A swarm of real `crossback node` processes on one machine: does it finish, how much memory per node,
how long a selection takes and how many bytes it moves per candidate as the swarm grows.

    python benchmarks/perf/swarm.py --nodes 32            # 32 processes on loopback
    python benchmarks/perf/swarm.py --nodes 8 --json out.json

Every node learns two small tasks of scikit-learn's digits (8x8, a tiny Perceiver), one torch thread,
seeded as a star (all know node 0's address); each selects among the peers alive when its task ends.
Reported: wall time until every node is serving, resident memory per node (at start, after its first
task, while serving), each selection's candidate count, seconds and bytes per candidate (membership
traffic: benchmarks/perf/gossip.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_node import digits_node  # noqa: E402
from masked_step import cpu_name  # noqa: E402

from crossback.config.node import write_node_config  # noqa: E402


def node_config(seed: int, score: str, borrow: str, scale: int = 1, selection: dict | None = None,
                genesis: int | None = None) -> dict:
    """``scale``: see digits_node; ``selection``: more keys of the selection section (shortlist, max_candidates, ...)."""
    return digits_node(seed, scale, 2, 2, "packnet",
                       node={"heartbeat_interval": 1.0, "failure_timeout": 10.0, "rpc_timeout": 10.0, "threads": 1},
                       selection={"probe": {"pair_count": 8, "token_count": 4}, "deadline": 60.0, "score": score,
                                  **(selection or {})},
                       transfer={"borrow": borrow}, adaptation={"epochs": 1},
                       **({"swarm": {"genesis": genesis}} if genesis is not None else {}))


def model_bytes(scale: int) -> int:
    """float32 bytes of one node's whole model (one task's head)."""
    from crossback.models.perceiver import PerceiverClassifier
    from crossback.config.run import parse_config

    run = parse_config({k: v for k, v in node_config(0, "ddv", "kv", scale).items()
                        if k not in ("node", "selection", "transfer", "adaptation")})
    net = PerceiverClassifier(run.model, "image")
    return 4 * sum(p.numel() for p in net.parameters())


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1500.0)
    parser.add_argument("--serve-for", type=float, default=20.0, help="seconds measured once all serve")
    parser.add_argument("--score", default="logme", help="selection.score (logme needs each candidate's parts)")
    parser.add_argument("--borrow", default="backbone", help="transfer.borrow")
    parser.add_argument("--shortlist", help="selection.shortlist (an integer or all; a cheap score's top k confirmed)")
    parser.add_argument("--max-candidates", type=int, default=0, help="selection.max_candidates (0: every alive peer)")
    parser.add_argument("--genesis", type=int, help="swarm.genesis of every node (kv_motion needs one)")
    parser.add_argument("--scale", type=int, default=1, help="multiply the model's widths (model size sweep)")
    parser.add_argument("--late-epochs", type=int, default=40, help="train.epochs of the late receiver")
    parser.add_argument("--json")
    return parser.parse_args(argv)


class Swarm:
    """The node processes of one measurement, their logs and resident memory at each stage."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.root = args, Path(tempfile.mkdtemp(prefix="crossback-swarm-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.rss: dict[str, dict] = {}
        self.started = time.monotonic()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def log(self, name: str) -> list[dict]:
        return read_events(self.root / "logs" / f"{name}.jsonl")

    def start(self, name: str, seeds: list[str], epochs: int = 2) -> None:
        args, cfg = self.args, self.root / f"{name}.yaml"
        extra = {"max_candidates": args.max_candidates}
        if args.shortlist is not None:
            extra["shortlist"] = int(args.shortlist) if args.shortlist.isdigit() else args.shortlist
        config = node_config(len(self.procs), args.score, args.borrow, args.scale, extra, args.genesis)
        config["train"]["epochs"] = epochs
        write_node_config(cfg, config)
        cmd = [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(cfg), "--node-id", name,
               "--listen", "127.0.0.1:0", "--state-dir", str(self.root / "state" / name),
               "--log-dir", str(self.root / "logs")]
        if seeds:
            cmd += ["--seed-peers", ",".join(seeds)]
        self.procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)

    def first_address(self, name: str) -> str:
        while not (first := [e for e in self.log(name) if e["event"] == "node_started"]):
            if time.monotonic() - self.started > 120:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.2)
        return first[0]["address"]

    def until_all_serve(self) -> float:
        """Seconds until every node serves, sampling each one's RSS when it starts and finishes a task."""
        while time.monotonic() - self.started < self.args.timeout:
            done = 0
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
                events = {e["event"] for e in self.log(name)}
                marks = self.rss.setdefault(name, {})
                if "node_started" in events and "start" not in marks:
                    marks["start"] = rss_mib(proc.pid)
                if "task_finished" in events and "after_task" not in marks:
                    marks["after_task"] = rss_mib(proc.pid)
                done += "serving" in events
            if done == len(self.procs):
                return time.monotonic() - self.started
            time.sleep(0.5)
        raise RuntimeError(f"not every node was serving within {self.args.timeout} s")

    def late_receiver(self, names: list[str]) -> None:
        """A late node selects among every one of them: seeded with every address (what is measured is
        selection among N live peers, not how fast gossip shows them; a short --late-epochs on a fast
        machine ended the task before gossip had)."""
        everyone = [next(e["address"] for e in self.log(n) if e["event"] == "node_started") for n in names]
        self.start("rx", everyone, self.args.late_epochs)
        while not any(e["event"] == "serving" for e in self.log("rx")):
            if time.monotonic() - self.started > self.args.timeout or self.procs["rx"].poll() is not None:
                raise RuntimeError("the late receiver did not finish")
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def selection_figures(swarm: Swarm, names: list[str]) -> list[dict]:
    selections = []
    for name in names + ["rx"]:
        for e in swarm.log(name):
            if e["event"] == "backbone_selected":
                scored = [c for c in e["candidates"] if c.get("score") is not None]
                n = max(1, len(e["candidates"]))
                selections.append({"candidates": len(e["candidates"]), "scored": len(scored),
                                   "seconds": e["seconds"], "bytes_per_candidate": e["bytes"] / n})
    return selections


def figures_of(swarm: Swarm, names: list[str], serving_at: float, selections: list[dict]) -> dict:
    args, rss = swarm.args, swarm.rss
    late = [e for e in swarm.log("rx") if e["event"] == "backbone_selected"][-1]
    figures = {
        "machine": f"{cpu_name()} ({os.cpu_count()} cores)", "nodes": args.nodes,
        "all_serving_s": round(serving_at, 1),
        "rss_mib": {k: statistics.mean(v[k] for v in rss.values() if v.get(k)) for k in ("start", "after_task", "serving")},
        "rss_mib_max": max(v.get("serving") or 0 for v in rss.values()),
        "selections": len(selections),
        "selection_seconds_median": statistics.median(s["seconds"] for s in selections),
        "selection_seconds_max": max(s["seconds"] for s in selections),
        "candidates_median": statistics.median(s["candidates"] for s in selections),
        "candidates_max": max(s["candidates"] for s in selections),
        "bytes_per_candidate_median": statistics.median(s["bytes_per_candidate"] for s in selections),
        "late_receiver": {"candidates": len(late["candidates"]), "alive": late.get("alive"),
                          "scored": sum(c.get("score") is not None for c in late["candidates"]),
                          "seconds": late["seconds"], "bytes": late["bytes"], "stages": late.get("stages"),
                          "bytes_per_candidate": late["bytes"] / max(1, len(late["candidates"]))},
        "score": args.score, "borrow": args.borrow, "shortlist": late.get("shortlist"),
        "max_candidates": args.max_candidates, "genesis": args.genesis, "model_bytes": model_bytes(args.scale), "scale": args.scale,
    }
    figures["bytes_per_candidate_vs_model"] = figures["late_receiver"]["bytes_per_candidate"] / figures["model_bytes"]
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    swarm = Swarm(args)
    names = [f"n{i:02d}" for i in range(args.nodes)]
    try:
        swarm.start(names[0], [])
        seed = swarm.first_address(names[0])
        for name in names[1:]:
            swarm.start(name, [seed])
        serving_at = swarm.until_all_serve()
        swarm.late_receiver(names)
        time.sleep(args.serve_for)
        for name, proc in swarm.procs.items():
            if name in swarm.rss:
                swarm.rss[name]["serving"] = rss_mib(proc.pid)
    finally:
        swarm.stop()
    selections = selection_figures(swarm, names)
    figures = figures_of(swarm, names, serving_at, selections)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "per_selection": selections}, indent=2))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
