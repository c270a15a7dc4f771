"""A simulation's report: report.json (everything), report.md (what a paper needs, as text), CSV tables
(tasks, groups, selections, timeline, resources, detections), timeline.png, and prometheus.yml when the
devices served metrics. ``write_report(RUN)`` recomputes all of it from the run folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from . import analysis
from .plot import plot_accuracy, plot_timeline


def build(run: analysis.Run) -> dict:
    tasks = analysis.task_rows(run)
    selections = analysis.selection_rows(run)
    fd = analysis.failure_detection(run)
    return {
        "format": "crossback.sim.report/1",
        "run": {"scenario": run.plan.name, "seed": run.plan.seed, "devices": len(run.plan.devices),
                "target_accuracy": run.plan.target_accuracy,
                "ended": run.summary.get("ended"), "seconds": run.summary.get("seconds"),
                "plan_digest": run.digest,
                "mechanisms": run.summary.get("mechanisms", {})},
        "fidelity": run.summary.get("fidelity", {}),
        "groups": analysis.group_rows(run, tasks),
        "tasks": tasks,
        "accuracy": analysis.accuracy_curve(run),
        "selections": selections,
        "selections_by_link": analysis.by_link(selections),
        "traffic": analysis.traffic(run),
        "borrowed": analysis.borrow_edges(tasks),
        "failure_detection": fd,
        "resources": analysis.resource_rows(run),
        "timeline": run.timeline,
    }


def _csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})


def write_report(out: Path) -> dict:
    out = Path(out)
    run = analysis.load_run(out)
    report = build(run)
    report["text"] = render(report)
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "report.md").write_text(report["text"] + "\n", encoding="utf-8")
    for name in ("tasks", "groups", "selections", "resources", "timeline", "accuracy"):
        _csv(out / f"{name}.csv", report[name])
    _csv(out / "detections.csv", report["failure_detection"]["detections"]
         + [{**fp, "cause": "false_positive"} for fp in report["failure_detection"]["false_positives"]])
    plot_timeline(run, report, out / "timeline.png")
    plot_accuracy(report, out / "accuracy.png")
    return report


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _gain(d) -> str:
    if not d:
        return "n/a"
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] (n={d['n']})"


def _kb(x) -> str:
    return "n/a" if x is None else f"{x / 1e3:.0f}"


def render(r: dict) -> str:
    """report.md: one section per question a researcher asks of the run."""
    sections = (_header, _links, _groups, _selections, _wire, _borrowed, _detection, _devices, _timeline)
    return "\n".join(line for section in sections for line in section(r)).rstrip("\n")


def _table(title: str, columns: list[str], rows) -> list[str]:
    """A markdown section: its heading, a table of ``rows`` (each a list of cells), a blank line."""
    return [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows), ""]


def _header(r: dict) -> list[str]:
    run = r["run"]
    lines = [f"# Simulation {run['scenario']} (seed {run['seed']}, {run['devices']} devices, "
             f"{_s(run['seconds'])} s, ended: {run['ended']})", ""]
    mech = run.get("mechanisms", {})
    if mech:
        lines += [f"Backend {mech.get('backend')}: rate by {mech.get('rate')}; latency, jitter, loss by the relay; "
                  f"CPU by {mech.get('cpus') or 'nothing (not applied)'}; "
                  f"memory by {mech.get('memory') or 'nothing (not applied)'}"
                  + (f"; every device {mech['start']}." if mech.get("start") else ".")]
        demand = mech.get("cpu_demand") or {}
        if demand.get("oversubscription", 0) > 1:
            lines += [f"- the profiles ask for {demand['profile_cores']:g} cores of this machine's "
                      f"{demand['machine_cores']}: while many devices are busy, each gets less than its profile, "
                      "its work runs slower than the clock its timeouts keep, and timeouts fire that would not "
                      "on the devices themselves"]
        lines += [f"- {group} placed on Swarm nodes where {' and '.join(constraints)}"
                  for group, constraints in (mech.get("placement") or {}).items()]
        lines += [f"- not applied on {device}: {', '.join(missing)}"
                  for device, missing in (mech.get("not_applied") or {}).items()]
        lines.append("")
    return lines


def _links(r: dict) -> list[str]:
    fid = [f for when in ("idle", "loaded") for f in r["fidelity"].get(when) or []]
    if not fid:
        return []
    return _table("Links: configured vs measured", ["link", "when", "RTT ms (set)", "up Mbit/s (set)",
                                                     "down Mbit/s (set)"],
                  ([f["link"], f["when"], f"{f['rtt_ms']['measured']:.1f} ({f['rtt_ms']['configured']:g})",
                    f"{f['up_mbit']['measured']:.2f} ({f['up_mbit']['configured']})",
                    f"{f['down_mbit']['measured']:.2f} ({f['down_mbit']['configured']})"] for f in fid))


def _groups(r: dict) -> list[str]:
    columns = ["group", "devices", "tasks done", "accuracy", "alone (none)", "kept - none, points [95 % CI]",
               "selected - none", "borrowed", "time to finish s", "time to target alone / borrowing s (reached)",
               "borrowing adds s"]
    rows = ([g["group"], g["devices"],
             f"{g['finished']}/{g['tasks']}" + (f" ({g['relearned']} relearned)" if g["relearned"] else ""),
             _pct(g["accuracy"]), _pct(g["none"]), _gain(g["kept_minus_none"]), _gain(g["selected_minus_none"]),
             g["borrowed"], _s(g["time_to_finish"]),
             f"{_s(g['tta_alone'])} ({g['reached_alone']}) / {_s(g['tta_borrowing'])} ({g['reached_borrowing']})",
             _s(g["tta_borrowing_minus_alone"])] for g in r["groups"])
    target = r["run"].get("target_accuracy")
    goal = f"{_pct(target)} % test accuracy" if target is not None else "each task's own accuracy learned alone"
    return _table("Groups", columns, rows)[:-1] + [
        "", "Time to target: from a task's arrival until a device learning alone (local training and "
        "the `none` arm) or borrowing (local training, selection and the selected arm) holds a model at "
        f"the target: {goal}; a task whose arm falls short does not count as reached. `borrowing adds`: "
        "the median, over tasks both reached, of the difference.", ""]


def _selections(r: dict) -> list[str]:
    if not r["selections_by_link"]:
        return []
    return _table("Selections by link", ["link", "selections", "seconds (median, max)", "probe s", "payload s",
                                          "KB (probe + payload)"],
                  ([s["link"], s["selections"], f"{_s(s['seconds'])}, {_s(s['max_seconds'])}",
                    _s(s["probe_seconds"]), _s(s["payload_seconds"]),
                    f"{_kb(s['bytes'])} ({_kb(s['probe_bytes'])} + {_kb(s['payload_bytes'])})"]
                   for s in r["selections_by_link"]))


def _wire(r: dict) -> list[str]:
    wire = r["traffic"]["wire"]
    if not wire:
        return []

    def top(link: str) -> str:
        kinds = sorted(r["traffic"]["sent_by_kind"].get(link, {}).items(), key=lambda kv: -kv[1])[:5]
        return ", ".join(f"{k} {v / 1e6:.2f}" for k, v in kinds)
    return _table("Bytes on the wire by link class",
                  ["link", "up MB", "down MB", "retransmissions", "sent by kind (MB)"],
                  ([link, f"{w['up_bytes'] / 1e6:.2f}", f"{w['down_bytes'] / 1e6:.2f}", w["retransmits"], top(link)]
                   for link, w in sorted(wire.items())))


def _borrowed(r: dict) -> list[str]:
    if not r["borrowed"]:
        return []
    return ["## Who borrowed from whom", "",
            *(f"- {e['receiver']} ({e['task']}) <- {e['donor']} ({e['arm']}, {_gain_pts(e['gain'])})"
              for e in r["borrowed"]), ""]


def _detection(r: dict) -> list[str]:
    fd = r["failure_detection"]
    lines = ["## Failure detection", "",
             f"failure_timeout {fd['failure_timeout']:g} s; {len(fd['detections'])} detection(s), "
             f"{len(fd['false_positives'])} false positive(s)."]
    for cause, v in sorted(fd["by_cause"].items()):
        lines.append(f"- {cause}: {v['n']} detection(s), delay median {_s(v['median_delay'])} s, "
                     f"max {_s(v['max_delay'])} s")
    for rc in fd["reconverged"]:
        lines.append(f"- partition {rc['partition']:.0f}-{rc['heal']:.0f} s: of {rc['pairs']} peers declared dead "
                     f"across the cut, seen again {_s(rc['median_seconds'])} s (median), {_s(rc['seconds'])} s "
                     f"(last) after the heal; {rc['not_reconverged']} not before the end")
    return lines + [""]


def _devices(r: dict) -> list[str]:
    ran_on = (r["run"].get("mechanisms") or {}).get("ran_on")  # the swarm backend: the node of each start
    columns = ["device", "profile", "starts", "CPU s", "peak RSS MiB", "peak PSS MiB", "OOM kills"]
    rows = [[d["device"], d["profile"], d["starts"], _s(d["cpu_seconds"]), _s(d["peak_rss_mib"]),
             _s(d["peak_pss_mib"]), d["oom_killed"]] for d in r["resources"]]
    if ran_on is not None:
        columns.append("ran on")
        for row in rows:
            row.append(", ".join(ran_on.get(row[0], [])) or "-")
    return _table("Devices", columns, rows)


def _timeline(r: dict) -> list[str]:
    events = r["timeline"]
    lines = [f"## Timeline ({len(events)} events as applied)", ""]
    for e in events[:60]:
        who = ",".join(e.get("devices") or []) or " | ".join(",".join(s) for s in e.get("sides") or [])
        late = f" (planned {e['at']:g})" if "at" in e else ""
        lines.append(f"- {e['t']:.1f} s {e['do']} {who[:80]}{late}")
    if len(events) > 60:
        lines.append(f"- ... {len(events) - 60} more in timeline.csv")
    return lines


def _gain_pts(g) -> str:
    return "n/a" if g is None else f"{100 * g:+.1f} points over alone"
