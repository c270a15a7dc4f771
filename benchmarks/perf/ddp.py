"""One node trained by 1 process and by N ranks (`crossback node --nproc N`), side by side in one run:
seconds per task, their ratio, and how far the accuracies and weights of the two runs are apart.

    python benchmarks/perf/ddp.py                       # 1 vs 2 ranks, CPU, packnet, model scale 1 and 4
    python benchmarks/perf/ddp.py --nproc 4 --device cuda --scales 4,8 --json out.json

Both arms get the same cores: the single process uses all of them as torch threads, each rank gets
cores / N (on CPU). Every node learns three digits tasks alone (selection off), so only training and
the per-task learner broadcast differ.
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
from masked_step import cpu_name  # noqa: E402

from crossback.config.node import write_node_config  # noqa: E402


def node_config(method: str, scale: int, epochs: int, threads: int, device: str) -> dict:
    return digits_node(0, scale, 3, epochs, method, node={"exit_when_done": True, "threads": threads, "device": device},
                       selection={"enabled": False})


def run(root: Path, name: str, cfg: dict, nproc: int) -> dict:
    path = root / f"{name}.yaml"
    write_node_config(path, cfg)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path), "--node-id", name,
                           "--nproc", str(nproc), "--state-dir", str(root / name), "--log-dir", str(root / "logs")],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in (root / "logs" / f"{name}.jsonl").read_text().splitlines()]
    finished = [e for e in events if e["event"] == "task_finished"]
    return {"wall_s": round(time.perf_counter() - started, 2), "task_s": [e["seconds"] for e in finished],
            "accuracies": finished[-1]["accuracies"], "ranks": finished[-1].get("ranks")}


def weight_gap(a: Path, b: Path) -> float:
    """Largest |a - b| over every float tensor of the two last checkpoints."""
    from safetensors.torch import load_file

    last = lambda p: sorted((p / "checkpoints").glob("task-*"))[-1]  # noqa: E731
    a, b, gap = last(a), last(b), 0.0
    for f in a.glob("*.safetensors"):
        ta, tb = load_file(f), load_file(b / f.name)
        gap = max([gap, *(float((ta[k] - tb[k]).abs().max()) for k in ta if ta[k].is_floating_point())])
    return gap


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--scales", default="1,4", help="model width multipliers, comma-separated")
    parser.add_argument("--method", default="packnet", choices=("packnet", "piggyback", "cpg"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossback-ddp-") as tmp:
        root = Path(tmp)
        for scale in (int(s) for s in args.scales.split(",")):
            one = run(root, f"one-{scale}", node_config(args.method, scale, args.epochs, cores, args.device), 1)
            many = run(root, f"ddp-{scale}", node_config(args.method, scale, args.epochs,
                                                         max(1, cores // args.nproc), args.device), args.nproc)
            rows.append({
                "scale": scale, "one_process": one, f"{args.nproc}_ranks": many,
                "task_seconds_ratio": round(sum(many["task_s"]) / sum(one["task_s"]), 3),
                "accuracy_gap": max(abs(x - y) for x, y in zip(one["accuracies"], many["accuracies"])),
                "weight_gap": weight_gap(root / f"one-{scale}", root / f"ddp-{scale}"),
            })
            r = rows[-1]
            print(f"scale {scale}: 1 process {sum(one['task_s']):.1f} s, {args.nproc} ranks {sum(many['task_s']):.1f} s "
                  f"({r['task_seconds_ratio']:.2f}x), accuracy gap {r['accuracy_gap']:.4f}, weight gap {r['weight_gap']:.1e}, "
                  f"ranks {many['ranks']}", flush=True)
    figures = {"machine": {"cpu": cpu_name(), "cores": cores, "device": args.device}, "method": args.method,
               "epochs": args.epochs, "nproc": args.nproc, "rows": rows}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
