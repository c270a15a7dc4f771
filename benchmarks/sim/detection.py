"""How fast a crashed or paused device is declared dead, and how often a live one is, against the failed
device's link: runs benchmarks/sim/detection.yaml once per seed with `crossback simulate`'s local backend
and pools the reports' failure-detection judgements (every peer_dead against what really happened).

    python benchmarks/sim/detection.py --seeds 2 --out runs/detection \
        --json benchmarks/results/sim-detection.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench_io import emit, seeded_reports

SCENARIO = Path(__file__).with_name("detection.yaml")
LINKS = ("wifi", "lte", "3g", "lossy")


def group(device: str) -> str:
    return device.rsplit("-", 1)[0]


def pool(reports: list[dict]) -> dict:
    delays = defaultdict(list)  # (cause, link) -> delays of every observer that declared the device dead
    coverage = defaultdict(list)  # (cause, link) -> share of the other devices that did, per fault
    false_positives, observers = defaultdict(int), 0
    for report in reports:
        devices = {r["device"] for r in report["resources"]}
        observers = len(devices) - 1
        faults = defaultdict(set)
        for det in report["failure_detection"]["detections"]:
            key = (det["cause"], group(det["peer"]))
            delays[key].append(det["delay"])
            faults[(*key, det["peer"])].add(det["observer"])
        for (cause, link, _), seen in faults.items():
            coverage[(cause, link)].append(len(seen) / observers)
        for fp in report["failure_detection"]["false_positives"]:
            false_positives[(group(fp["observer"]), group(fp["peer"]))] += 1
    rows = []
    for (cause, link), values in sorted(delays.items(), key=lambda kv: (kv[0][0], LINKS.index(kv[0][1])
                                                                        if kv[0][1] in LINKS else 99)):
        rows.append({"cause": cause, "link": link, "detections": len(values),
                     "median_delay": round(statistics.median(values), 2), "max_delay": round(max(values), 2),
                     "observers_detecting": round(statistics.fmean(coverage[(cause, link)]), 3)})
    return {"rows": rows, "false_positives": [{"observer_link": o, "peer_link": p, "count": n}
                                              for (o, p), n in sorted(false_positives.items())],
            "false_positives_total": sum(false_positives.values())}


def markdown(result: dict) -> str:
    lines = ["| fault | failed device's link | detections | delay median s | max s | observers that detected it |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['cause']} | {r['link']} | {r['detections']} | {r['median_delay']:.1f} | {r['max_delay']:.1f} "
                     f"| {100 * r['observers_detecting']:.0f} % |")
    fps = ", ".join(f"{f['observer_link']} -> {f['peer_link']}: {f['count']}" for f in result["false_positives"])
    lines += ["", f"False positives (a live, reachable peer declared dead): {result['false_positives_total']}"
              + (f" ({fps})" if fps else "")]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", action="store_true", help="pool the reports already in OUT/seed-*/ (no new runs)")
    args = p.parse_args()
    started = time.monotonic()
    reports = seeded_reports(SCENARIO, args.out, args.seeds, args.reuse)
    first = reports[0]
    result = {"scenario": "benchmarks/sim/detection.yaml", "seeds": args.seeds,
              "failure_timeout": first["failure_detection"]["failure_timeout"], **pool(reports),
              "fidelity": [f for r in reports for f in r["fidelity"].get("idle", [])],
              "wall_seconds": round(time.monotonic() - started, 1)}
    result["markdown"] = markdown(result)
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
