"""What a selection costs in seconds and bytes on loopback, Wi-Fi-like and LTE-like links, for the cheap
score alone, the default shortlist and LogME on every backbone; and the time to accuracy with and
without borrowing. Runs benchmarks/sim/selection_cost.yaml once per seed with `crossback simulate`'s
local backend and pools the receivers' selections.

    python benchmarks/sim/selection_cost.py --seeds 3 --out runs/selection-cost \
        --json benchmarks/results/sim-selection-cost.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from crossback.bench.stats import summary
from bench_io import emit, seeded_reports

SCENARIO = Path(__file__).with_name("selection_cost.yaml")
LINKS = ("loopback", "wifi", "lte")
SELECTIONS = {"cheap": "kv_motion alone (only the winner's backbone moves)",
              "shortlist": "kv_motion, shortlist of 2 confirmed by LogME (the default)",
              "logme": "LogME on every candidate's backbone"}


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def pool(reports: list[dict]) -> dict:
    cells = defaultdict(lambda: {"seconds": [], "bytes": [], "probe_seconds": [], "payload_seconds": [],
                                 "payload_bytes": [], "candidates": [], "gain": [], "tta_alone": [],
                                 "tta_borrowing": [], "fidelity": []})
    for report in reports:
        for sel in report["selections"]:
            if not sel["device"].startswith("rx-") or not sel["candidates"]:
                continue
            _, link, kind, _ = sel["device"].split("-")
            cell = cells[(link, kind)]
            for key in ("seconds", "bytes", "probe_seconds", "payload_seconds", "payload_bytes", "candidates"):
                cell[key].append(sel[key])
        for task in report["tasks"]:
            if task["device"].startswith("rx-") and task.get("selected") is not None:
                _, link, kind, _ = task["device"].split("-")
                cells[(link, kind)]["gain"].append(task["selected"] - task["none"])
                cells[(link, kind)]["tta_alone"].append(task.get("tta_alone"))
                cells[(link, kind)]["tta_borrowing"].append(task.get("tta_borrowing"))
    pooled = []
    for kind in SELECTIONS:  # the accuracy does not depend on the link: every receiver of one selection
        gains = [g for (link, k), c in cells.items() if k == kind for g in c["gain"]]
        if gains:
            g = summary(gains, 2000, 0.95)
            pooled.append({"selection": kind, "n": len(gains),
                           "selected_minus_none": {k: round(v, 4) if isinstance(v, float) else v for k, v in g.items()}})
    rows = []
    for link in LINKS:
        for kind in SELECTIONS:
            c = cells.get((link, kind))
            if not c:
                continue
            gain = summary(c["gain"], 2000, 0.95) if c["gain"] else None
            rows.append({"link": link, "selection": kind, "n": len(c["seconds"]),
                         "seconds": _median(c["seconds"]), "seconds_all": c["seconds"],
                         "probe_seconds": _median(c["probe_seconds"]), "payload_seconds": _median(c["payload_seconds"]),
                         "bytes": _median(c["bytes"]), "payload_bytes": _median(c["payload_bytes"]),
                         "candidates": _median(c["candidates"]),
                         "selected_minus_none": {k: round(v, 4) if isinstance(v, float) else v for k, v in gain.items()}
                         if gain else None,
                         "tta_alone": _median(c["tta_alone"]), "tta_borrowing": _median(c["tta_borrowing"])})
    return {"rows": rows, "pooled": pooled}


def markdown(result: dict) -> str:
    lines = ["| link | selection | n | seconds (median) | probe s | payload s | KB moved | selected - none, points [95 % CI] "
             "| time to target alone / borrowing s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        g = r["selected_minus_none"]
        gain = f"{100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]" if g else "n/a"
        lines.append(f"| {r['link']} | {r['selection']} | {r['n']} | {r['seconds']:.2f} | {r['probe_seconds'] or 0:.2f} | "
                     f"{r['payload_seconds'] or 0:.2f} | {r['bytes'] / 1e3:.0f} | {gain} | "
                     f"{r['tta_alone'] if r['tta_alone'] is not None else 'n/a'} / "
                     f"{r['tta_borrowing'] if r['tta_borrowing'] is not None else 'n/a'} |")
    lines += ["", "| selection | receivers (every link) | selected - none, points [95 % CI] | wins / losses |",
              "|---|---|---|---|"]
    for p in result["pooled"]:
        g = p["selected_minus_none"]
        lines.append(f"| {p['selection']} | {p['n']} | {100 * g['mean']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}] "
                     f"| {g['wins']} / {g['losses']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", action="store_true", help="pool the reports already in OUT/seed-*/ (no new runs)")
    args = p.parse_args()
    started = time.monotonic()
    reports = seeded_reports(SCENARIO, args.out, args.seeds, args.reuse)
    result = {"scenario": str(SCENARIO.relative_to(Path.cwd()) if SCENARIO.is_relative_to(Path.cwd()) else SCENARIO),
              "seeds": args.seeds, "selections": SELECTIONS, **pool(reports),
              "fidelity": [f for r in reports for f in r["fidelity"].get("idle", [])],
              "wall_seconds": round(time.monotonic() - started, 1)}
    result["markdown"] = markdown(result)
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
