"""What one node process really costs in memory, and what starting it from a preloaded parent saves.

    python benchmarks/perf/node_memory.py --nodes 32 --json benchmarks/results/perf-node_memory.json
    python benchmarks/perf/node_memory.py --nodes 4                                   (a quick look)

``--nodes`` real `crossback node` processes each learn one digits task and serve, started two ways, one
after the other on the same machine: *spawn*, each a fresh interpreter (what the local backend, compose
and a user do today), and *fork*, each forked from one parent that has already imported torch and
crossback (and done nothing else: no torch op has run, no thread was started), so the pages of the
shared libraries and of every imported module stay shared copy-on-write. Once every node serves (and 5 s
more), each process's resident (RSS) and proportional (PSS: a shared page counted once over its
sharers) set size is read from /proc/PID/smaps_rollup; the preloaded parent's own PSS is spread over its
children. RSS counts torch's shared libraries once per process, so only PSS adds up to what N nodes
take from the machine (issue 40's goal: PSS per idle device <= 120 MiB). This measures the approach; the
local backend does not start devices this way yet.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_node import digits_node  # noqa: E402
from masked_step import machine  # noqa: E402

from crossback.config.node import write_node_config  # noqa: E402
from crossback.node.events import read_events  # noqa: E402

FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Dirty")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def node_args(root: Path, i: int) -> list[str]:
    path = root / f"n{i}.yaml"
    write_node_config(path, digits_node(i, tasks=1, node={"threads": 1, "heartbeat_interval": 0.5,
                                                          "failure_timeout": 5.0}))
    return ["node", "--config", str(path), "--node-id", f"n{i}", "--listen", "127.0.0.1:0",
            "--state-dir", str(root / "state" / f"n{i}"), "--log-dir", str(root / "logs")]


def memory_mib(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) / 1024
    return out


def spawn(root: Path, n: int) -> list[int]:
    env = {**os.environ, **ONE_THREAD}
    return [subprocess.Popen([sys.executable, "-m", "crossback.app.cli", *node_args(root, i)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid for i in range(n)]


def fork(root: Path, n: int) -> list[int]:
    """Children of this process, which imports what a node imports first (and nothing runs before)."""
    os.environ.update(ONE_THREAD)
    import crossback.node.process  # noqa: F401  (the node's modules, torch among them)
    from crossback.app.cli import main

    pids = []
    for i in range(n):
        args = node_args(root, i)
        pid = os.fork()
        if pid == 0:  # the node: never returns into the benchmark
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                code = main(args)
            finally:
                os._exit(code or 0)
        pids.append(pid)
    return pids


def serving(root: Path, n: int) -> bool:
    return all(any(e.get("event") == "serving" for e in read_events(root / "logs" / f"n{i}.jsonl")) for i in range(n))


def measure(mode: str, n: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"crossback-memory-{mode}-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        pids = (spawn if mode == "spawn" else fork)(root, n)
        try:
            while not serving(root, n):
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"{mode}: not every one of {n} nodes served within {timeout:.0f} s")
                time.sleep(0.5)
            seconds = time.perf_counter() - started
            time.sleep(5.0)
            rows = [memory_mib(p) for p in pids]
            parent = memory_mib(os.getpid()) if mode == "fork" else None
        finally:
            for p in pids:
                os.kill(p, 15)
            for p in pids:
                os.waitpid(p, 0)
    mean = {k: round(sum(r[k] for r in rows) / n, 1) for k in FIELDS}
    shared = parent["Pss"] / n if parent else 0.0
    return {"mode": mode, "nodes": n, "seconds_to_all_serving": round(seconds, 1), "per_node_mib": mean,
            "max_pss_mib": round(max(r["Pss"] for r in rows), 1),
            "parent_pss_mib": round(parent["Pss"], 1) if parent else None,
            "pss_per_node_mib": round(mean["Pss"] + shared, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for every node to serve")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    # fork first, while this process has run no torch op and started no thread (the spawn run starts none
    # either, but it need not be trusted to)
    rows = [measure("fork", args.nodes, args.timeout), measure("spawn", args.nodes, args.timeout)]
    result = {"machine": machine(), "nodes": args.nodes, "rows": rows,
              "pss_ratio_fork_to_spawn": round(rows[0]["pss_per_node_mib"] / rows[1]["pss_per_node_mib"], 3),
              "start_ratio_fork_to_spawn": round(rows[0]["seconds_to_all_serving"] / rows[1]["seconds_to_all_serving"], 3)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
