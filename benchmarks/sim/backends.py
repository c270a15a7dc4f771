"""The same small scenario on each backend, side by side: benchmarks/sim/backends.yaml (four digits devices
on LTE and Wi-Fi, a crash and restart, a pause, a partition) run by `crossback simulate` with the local
backend (devices forked, then spawned), the compose backend (a container each) and, given a Swarm's
manager, the swarm backend (a service each, the cameras on one engine and the phone on another), the same
seed.

For each run: tasks learned and their accuracy, what each selection chose and what it cost, failure
detection delays, CPU seconds and peak memory per device. Same plan, same seed: the differences are
timing (when a node's first task ends relative to its peers' decides which peers have learned something
when it selects) and what each backend measures (a container's memory on vfs shares nothing).

    eval "$(docker/two-engine-swarm.sh up crossback:latest)"   # from the engine that holds the image
    python benchmarks/sim/backends.py --out runs/backends --image crossback:latest \
        --compose-host unix:///tmp/local-docker/docker.sock --swarm-host "$DOCKER_HOST" \
        --json benchmarks/results/sim-backends.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from bench_io import emit, log

from crossback.sim.simulate import simulate

SCENARIO = Path(__file__).with_name("backends.yaml")
RUNS = (("local", "fork"), ("local", "spawn"), ("compose", None), ("swarm", None))
# docker/two-engine-swarm.sh labels its engines engine=a (the manager) and engine=b
PLACE = ["cams=node.labels.engine==b", "phones=node.labels.engine==a"]


def summary(report: dict) -> dict:
    fd = report["failure_detection"]
    return {"seconds": report["run"]["seconds"], "ended": report["run"]["ended"],
            "tasks": {f"{t['device']}/{t['task']}": {"accuracy": t["accuracy"], "kept": t.get("kept"),
                                                     "selected": t.get("selected"), "none": t.get("none")}
                      for t in report["tasks"]},
            "chosen": {f"{s['device']}/{s['task']}": s["chosen"] for s in report["selections"]},
            "selection_seconds_median": round(statistics.median(s["seconds"] for s in report["selections"]), 3),
            "detection": fd["by_cause"], "false_positives": len(fd["false_positives"]),
            "cpu_seconds": round(sum(r["cpu_seconds"] or 0 for r in report["resources"]), 1),
            "peak_pss_mib": {r["device"]: r["peak_pss_mib"] for r in report["resources"]},
            "peak_rss_mib": {r["device"]: r["peak_rss_mib"] for r in report["resources"]},
            "mechanisms": report["run"]["mechanisms"]}


def markdown(rows: list[dict]) -> str:
    keys = sorted(rows[0]["tasks"])
    head = "| | " + " | ".join(r["label"] for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|"]
    for k in keys:
        cells = []
        for r in rows:
            t, chosen = r["tasks"].get(k, {}), r["chosen"].get(k)
            acc = f"{100 * t['accuracy']:.1f} %" if t.get("accuracy") is not None else "n/a"
            cells.append(f"{acc}, kept {t.get('kept')}, chose {chosen}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| selection seconds (median) | " + " | ".join(f"{r['selection_seconds_median']:.2f}" for r in rows) + " |")
    lines.append("| crash detected after (median s) | " + " | ".join(
        str((r["detection"].get("crash") or {}).get("median_delay")) for r in rows) + " |")
    lines.append("| false positives | " + " | ".join(str(r["false_positives"]) for r in rows) + " |")
    lines.append("| CPU seconds, all devices | " + " | ".join(f"{r['cpu_seconds']:.1f}" for r in rows) + " |")
    lines.append("| peak PSS per device, mean MiB | " + " | ".join(
        f"{statistics.fmean(v for v in r['peak_pss_mib'].values() if v):.0f}" for r in rows) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image", default="crossback:latest", help="the compose and swarm backends' image")
    p.add_argument("--compose-host", help="the compose backend's engine (default: DOCKER_HOST)")
    p.add_argument("--swarm-host", help="a Swarm manager made by docker/two-engine-swarm.sh (default: no swarm run)")
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", action="store_true", help="take the runs already in OUT as they are")
    args = p.parse_args()
    rows = []
    hosts = {"compose": args.compose_host or os.environ.get("DOCKER_HOST"), "swarm": args.swarm_host}
    for backend, start in RUNS:
        if backend == "swarm" and not args.swarm_host:
            continue
        if backend in hosts and hosts[backend]:
            os.environ["DOCKER_HOST"] = hosts[backend]
        label = backend if start is None else f"{backend} ({start})"
        out = args.out / label.replace(" (", "-").rstrip(")")
        if args.reuse and (out / "report.json").exists():
            report = json.loads((out / "report.json").read_text())
        else:
            report = simulate(SCENARIO, out, backend=backend, start=start or "fork", image=args.image, log=log,
                              place=PLACE if backend == "swarm" else None)
        rows.append({"label": label, **summary(report)})
    return emit({"scenario": "benchmarks/sim/backends.yaml", "rows": rows, "markdown": markdown(rows)}, args.json)


if __name__ == "__main__":
    sys.exit(main())
