"""How faithfully the local simulation backend realises a device's profile and link.

    python benchmarks/perf/sim_fidelity.py --json benchmarks/results/sim-fidelity.json

CPU: the same training step (the sim's default model: a Perceiver IO learner on 8x8 digits, batch 32, one
torch thread) run for ``--seconds`` in a process of its own, in a device cgroup at each share, each run
between two unlimited ones; the median over ``--repeats`` of measured throughput over the neighbouring
unlimited throughput, against the share (goal: within 15 %).
Nothing else runs meanwhile; on a machine with more demand than cores a device gets less than its share.
Links: every preset link measured through the relay on loopback, calibrated as `crossback simulate`
calibrates it (round trip, rate each way), idle and while two processes keep both cores busy (goal:
within 10 %). Needs root and a CPU cgroup for the CPU part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
from pathlib import Path

from crossback.config.presets import LINKS
from crossback.config.scenario import Profile
from crossback.sim.fidelity import calibrate, measure_link
from crossback.sim.local import _child_setup
from crossback.sim.relay import Relay
from crossback.sim.resources import Controllers

WORKLOAD = """
import sys, time, torch
torch.set_num_threads(1)
from crossback.config.run import parse_config
from crossback.data.prepare import prepare_tasks
from crossback.models.learner import new_learner
from crossback.sim.plan import BASE_CONFIG
cfg = parse_config({"data": {"source": "digits", "image_size": 8}, "model": {**BASE_CONFIG["model"],
                    "image": {"channels": 1, "patch_size": 2}}, "tasks": [{"name": "t", "classes": ["0", "1", "2"]}]})
tasks, _ = prepare_tasks(cfg)
learner = new_learner(cfg)
task = learner.begin_task("t", 3)
weights, scores = learner.trainable()
opt = torch.optim.Adam(weights + scores, lr=1e-3)
x, y = tasks[0].train.inputs[:32], tasks[0].train.labels[:32]
def step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(learner.logits(x, task), y)
    loss.backward()
    opt.step()
for _ in range(20):
    step()
seconds, steps, start = float(sys.argv[1]), 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    step()
    steps += 1
print(steps / (time.perf_counter() - start))
"""


def throughput(seconds: float, cgroup=None) -> float:
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(seconds)], capture_output=True, text=True,
                         preexec_fn=_child_setup(cgroup, os.getpid(), victim=False) if cgroup else None,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def cpu_fidelity(shares: list[float], seconds: float, repeats: int = 3) -> list[dict]:
    controllers = Controllers.detect(f"bench-{os.getpid()}")
    if controllers.cpu is None:
        return [{"skipped": "no writable CPU cgroup (run as root on Linux)"}]
    rows = []
    try:
        for share in shares:
            group = controllers.device_group(f"share-{share}", Profile(f"share-{share}", cpus=share))
            # unlimited, capped, unlimited, ...: each capped run against the mean of the runs beside it,
            # so a drift of the machine's speed during the benchmark does not read as a share error
            free = [throughput(seconds)]
            ratios = []
            for _ in range(repeats):
                got = throughput(seconds, group)
                free.append(throughput(seconds))
                ratios.append(got / ((free[-1] + free[-2]) / 2))
            ratio, expected = statistics.median(ratios), min(1.0, share)
            rows.append({"cpus": share, "ratios": [round(r, 4) for r in ratios], "ratio": round(ratio, 4),
                         "unlimited_steps_per_s": [round(f, 2) for f in free],
                         "error": round(ratio / expected - 1.0, 4)})
            print(f"cpus {share:<5} {ratio:.3f} of unlimited (median of {repeats}: "
                  f"{', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
    finally:
        controllers.remove()
    return rows


def link_fidelity(loaded: bool) -> list[dict]:
    burners = []
    if loaded:
        code = "import time\nend = time.time() + 600\nwhile time.time() < end: pass"
        burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]
    relay = Relay(seed=0)
    try:
        overhead = calibrate(relay)  # as crossback simulate does before every run
        rows = [{"load": "every core busy" if loaded else "idle", "relay_overhead_ms": round(overhead * 1e3, 4)}]
        for link in LINKS:
            m = measure_link(relay, link)
            rows.append({"load": "every core busy" if loaded else "idle", **m})
            print(f"{link.name:<9} {'loaded' if loaded else 'idle':<6} rtt {m['rtt_ms']['measured']:.2f} ms "
                  f"({m['rtt_ms']['configured']}) up {m['up_mbit']['measured']:.2f} ({m['up_mbit']['configured']}) "
                  f"down {m['down_mbit']['measured']:.2f} ({m['down_mbit']['configured']})", flush=True)
        return rows
    finally:
        relay.close()
        for b in burners:
            b.kill()
            b.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--seconds", type=float, default=5.0, help="each CPU measurement")
    p.add_argument("--repeats", type=int, default=3, help="capped runs per share, each between two unlimited ones")
    p.add_argument("--shares", default="0.25,0.5,0.75,1.0")
    args = p.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
              "cpu": cpu_fidelity(shares, args.seconds, args.repeats), "links": link_fidelity(False) + link_fidelity(True)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    threading.stack_size(0)
    sys.exit(main())
