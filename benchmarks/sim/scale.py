"""How many devices one machine holds: examples/scenarios/scale64.yaml at 16, 32 and 64 devices (its 3:1
mix of cameras and phones) with `crossback simulate`'s local backend, devices forked from a preloaded
parent; and the smallest size once more with every device a fresh interpreter, for the ratio.

For each run: the wall time from the command's start to its written report, when every device served
its node (after its join), tasks learned, selections made and what they cost per link class, failure
detections and false positives, and memory from the run's own samples (resources.jsonl, every second):
PSS per *learning* device (its peak) and per *idle* device (its last sample, once its tasks were done and
it only served peers), each with its share of the preloaded parent's PSS, and the machine's total PSS
at its peak. RSS is beside it: it counts torch's shared libraries once per process.

    python benchmarks/sim/scale.py --out runs/scale --json benchmarks/results/sim-scale.json
    python benchmarks/sim/scale.py --out runs/scale --sizes 16 --spawn 0          (a quick look)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
from bench_io import emit, log  # noqa: E402
from masked_step import machine  # noqa: E402

from crossback.node.events import read_events  # noqa: E402
from crossback.sim.simulate import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "scale64.yaml"
MIB = 2 ** 20


def scaled(devices: int, folder: Path) -> Path:
    """The scenario with ``devices`` devices, three cameras to one phone."""
    sc = yaml.safe_load(SCENARIO.read_text())
    cams, phones = sc["devices"]
    phones["count"] = max(1, devices // 4)
    cams["count"] = devices - phones["count"]
    sc["name"] = f"scale{devices}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scale{devices}.yaml"
    path.write_text(yaml.safe_dump(sc, sort_keys=False), encoding="utf-8")
    return path


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 1) if values else None


def memory(run: Path, zygote_share_mib: float) -> dict:
    """PSS and RSS per learning (peak) and idle (last sample after its tasks were done) device, MiB."""
    samples = [json.loads(line) for line in (run / "resources.jsonl").read_text().splitlines() if line]
    done_at = {}
    for events in (run / "logs").glob("*.jsonl"):
        for e in read_events(events):
            if e.get("event") == "tasks_done":
                done_at[events.stem] = e["ts"]
    origin = json.loads((run / "run.json").read_text())["origin"]
    peak, idle = {}, {}
    for s in samples:  # PSS is read at most 8 devices a second (sim.sampler): None between
        device, rss = s["device"], s["rss_bytes"] / MIB
        pss = s["pss_bytes"] / MIB if s.get("pss_bytes") else None
        p = peak.setdefault(device, {"pss": 0.0, "rss": 0.0})
        p["rss"] = max(p["rss"], rss)
        if pss is None:
            continue
        p["pss"] = max(p["pss"], pss)
        if device in done_at and origin + s["t"] > done_at[device] and s["state"] == "running":
            idle[device] = {"pss": pss, "rss": rss}
    return {"learning_pss_mib": _mean(p["pss"] + zygote_share_mib for p in peak.values()),
            "learning_rss_mib": _mean(p["rss"] for p in peak.values()),
            "idle_pss_mib": _mean(i["pss"] + zygote_share_mib for i in idle.values()),
            "idle_rss_mib": _mean(i["rss"] for i in idle.values()),
            "idle_devices_sampled": len(idle),
            "zygote_share_mib": round(zygote_share_mib, 1),
            # an upper bound on what the devices took at once: each at its own peak
            "sum_of_peak_pss_gib": round(sum(p["pss"] + zygote_share_mib for p in peak.values()) / 1024, 2)}


def started(run: Path, plan: dict) -> float | None:
    """Seconds from a device's planned join until its node listened, the slowest device's."""
    origin = json.loads((run / "run.json").read_text())["origin"]
    waits = []
    for device in plan["devices"]:
        first = [e for e in read_events(run / "logs" / f"{device['device']}.jsonl") if e.get("event") == "node_started"]
        if not first:
            return None
        waits.append(first[0]["ts"] - origin - device["join"])
    return round(max(waits), 1)


def one_run(devices: int, start: str, out: Path, log, reuse: bool = False) -> dict:
    if reuse and (out / "report.json").exists():
        report = json.loads((out / "report.json").read_text())
    else:
        report = simulate(scaled(devices, out.parent / "scenarios"), out, log=log, start=start)
    # from the run folder's first file (the scenario, copied at once) to its report, written last
    wall = (out / "report.json").stat().st_mtime - (out / "scenario.yaml").stat().st_mtime
    run = json.loads((out / "run.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    zygote = run.get("zygote")
    share = zygote["pss_bytes"] / MIB / zygote["devices_running"] if zygote else 0.0
    tasks = report["tasks"]
    selections = report["selections"]
    fd = report["failure_detection"]
    return {"devices": devices, "start": start, "report_seconds": round(wall, 1),
            "run_seconds": report["run"]["seconds"], "ended": report["run"]["ended"],
            "slowest_start_seconds": started(out, plan),
            "tasks_planned": len(tasks), "tasks_learned": sum(t.get("accuracy") is not None for t in tasks),
            "devices_learned_all": sum(all(t.get("accuracy") is not None for t in tasks if t["device"] == d["device"])
                                       for d in plan["devices"]),
            "selections": len(selections), "selections_with_candidates": sum(bool(s["candidates"]) for s in selections),
            "borrowed": len(report["borrowed"]),
            "selections_by_link": report["selections_by_link"],
            "failure_detections": len(fd["detections"]), "false_positives": len(fd["false_positives"]),
            "cpu_seconds": round(sum(r["cpu_seconds"] or 0 for r in report["resources"]), 1),
            "oom_kills": sum(r["oom_killed"] for r in report["resources"]),
            **memory(out, share), "mechanisms": report["run"]["mechanisms"]}


def markdown(result: dict) -> str:
    lines = ["| devices | start | report s | slowest start s | tasks learned | selections (with candidates) | "
             "false positives | PSS idle / learning MiB | RSS idle / learning MiB | sum of peak PSS GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['devices']} | {r['start']} | {r['report_seconds']:.0f} | {r['slowest_start_seconds']} | "
                     f"{r['tasks_learned']} / {r['tasks_planned']} | {r['selections']} ({r['selections_with_candidates']}) | "
                     f"{r['false_positives']} | {r['idle_pss_mib']} / {r['learning_pss_mib']} | "
                     f"{r['idle_rss_mib']} / {r['learning_rss_mib']} | {r['sum_of_peak_pss_gib']} |")
    lines += ["", "| devices | link | selections with candidates | seconds (median) | max s | KB moved (median) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for s in r["selections_by_link"]:
            lines.append(f"| {r['devices']} ({r['start']}) | {s['link']} | {s['selections']} | {s['seconds']:.2f} | "
                         f"{s['max_seconds']:.2f} | {s['bytes'] / 1e3:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16,32,64", help="device counts, comma-separated")
    p.add_argument("--spawn", type=int, default=16, help="also run this size with a fresh interpreter per device "
                   "(0: not)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the runs")
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", action="store_true", help="take the runs already in OUT as they are")
    args = p.parse_args()
    runs = [(int(n), "fork") for n in args.sizes.split(",")] + ([(args.spawn, "spawn")] if args.spawn else [])
    rows = [one_run(n, start, args.out / f"{start}-{n}", log, args.reuse) for n, start in runs]
    result = {"scenario": str(SCENARIO.relative_to(ROOT)), "machine": machine(), "rows": rows}
    fork = {r["devices"]: r for r in rows if r["start"] == "fork"}
    spawn = next((r for r in rows if r["start"] == "spawn"), None)
    if spawn and spawn["devices"] in fork:
        f = fork[spawn["devices"]]
        result["fork_to_spawn"] = {k: round(f[k] / spawn[k], 3) for k in ("idle_pss_mib", "learning_pss_mib",
                                                                          "report_seconds", "cpu_seconds")
                                   if f[k] and spawn[k]}
    result["markdown"] = markdown(result)
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
