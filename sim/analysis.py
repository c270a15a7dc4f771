"""What a simulation run did, computed from its files alone: the plan, the driver's timeline and resource
samples, and every node's own JSON log (the single source of truth, as for `crossback selections`).

Times are seconds since the run's origin. Nothing here runs anything: ``crossback report`` recomputes
it all from a finished run folder.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from crossback.bench.stats import summary
from crossback.node.events import read_events

from .plan import Plan, plan_from_dict

DOWN = {"crash": "restart", "leave": "join", "pause": "resume", "exited": "restart", "oom_killed": "restart"}
BACK = {"restart", "join", "resume"}
RESAMPLES = 2000


@dataclass
class Run:
    out: Path
    plan: Plan
    digest: str  # the plan's, as plan.json records it
    origin: float
    summary: dict  # run.json
    timeline: list[dict]
    resources: list[dict]
    logs: dict[str, list[dict]]  # device -> its events

    def t(self, record: dict) -> float:
        return round(record["ts"] - self.origin, 3)


def load_run(out: Path) -> Run:
    out = Path(out)
    if not (out / "plan.json").exists():
        raise FileNotFoundError(f"{out} holds no simulation run (plan.json); run crossback simulate first")
    stored = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    plan = plan_from_dict(stored)
    run = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").exists() else {}
    logs = {d.device: read_events(out / "logs" / f"{d.device}.jsonl") for d in plan.devices}
    origin = run.get("origin") or min((e[0]["ts"] for e in logs.values() if e), default=0.0)
    return Run(out, plan, stored["digest"], origin, run, read_events(out / "timeline.jsonl"),
               read_events(out / "resources.jsonl"), logs)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def _last(events: list[dict], name: str, index: int) -> dict | None:
    hits = [e for e in events if e["event"] == name and e.get("index") == index]
    return hits[-1] if hits else None


# ------------------------------------------------------------ tasks and time to accuracy

def task_rows(run: Run) -> list[dict]:
    """One row per planned task of every device: when it arrived, started and finished, the arms'
    accuracies, and the time to reach its target with and without borrowing."""
    rows = []
    for d in run.plan.devices:
        events = run.logs[d.device]
        for i, task in enumerate(d.tasks):
            rows.append(_task_row(run, d, events, i, task["name"]))
    return rows


def _task_row(run: Run, d, events: list[dict], i: int, name: str) -> dict:
    started = [e for e in events if e["event"] == "task_started" and e.get("index") == i]
    finished = [e for e in events if e["event"] == "task_finished" and e.get("index") == i]
    arrived = _last(events, "task_arrived", i)
    planned = d.join + d.arrivals[i] if i < len(d.arrivals) else None
    row = {"device": d.device, "group": d.group, "link": d.link.name, "profile": d.profile.name, "index": i,
           "task": name, "shared": d.shared, "planned_arrival": planned,
           "arrived": round(arrived["due"] - run.origin, 3) if arrived else (
               d.join if i == 0 else run.t(started[0]) if started else None),
           "started": run.t(started[0]) if started else None, "finished": run.t(finished[-1]) if finished else None,
           "attempts": len(started), "relearned": max(0, len(finished) - 1)}
    if not finished:
        return row
    done, sel = _last(events, "transfer_done", i), _last(events, "backbone_selected", i)
    arms = (done or {}).get("arms", {})
    acc = {name: arm.get("test") for name, arm in arms.items()}
    arm_seconds = {name: arm.get("seconds") or 0.0 for name, arm in arms.items()}
    select_seconds = (sel or {}).get("seconds") or 0.0
    local = max(0.0, finished[-1]["seconds"] - select_seconds - sum(arm_seconds.values()))
    wait = row["finished"] - row["arrived"] - finished[-1]["seconds"]  # queueing behind earlier tasks, restarts
    target = run.plan.target_accuracy if run.plan.target_accuracy is not None else acc.get("none")
    row.update({
        "accuracy": finished[-1]["accuracy"], "none": acc.get("none"), "selected": acc.get("selected"),
        "kept": (done or {}).get("kept"), "donor": (arms.get((done or {}).get("kept")) or {}).get("peer"),
        "chosen": (sel or {}).get("chosen"), "time_to_finish": round(row["finished"] - row["arrived"], 3),
        "local_seconds": round(local, 3), "selection_seconds": round(select_seconds, 3),
        "target": target,
        "tta_alone": round(wait + local + arm_seconds.get("none", 0.0), 3)
        if acc.get("none") is not None and target is not None and acc["none"] >= target - 1e-9 else None,
        "tta_borrowing": round(wait + local + select_seconds + arm_seconds.get("selected", 0.0), 3)
        if acc.get("selected") is not None and target is not None and acc["selected"] >= target - 1e-9 else None})
    return row


def group_rows(run: Run, tasks: list[dict]) -> list[dict]:
    """Per device group: tasks done, accuracies, paired gains of borrowing with bootstrap CIs, time to accuracy."""
    out = []
    for group in dict.fromkeys(d.group for d in run.plan.devices):
        rows = [r for r in tasks if r["group"] == group]
        done = [r for r in rows if r.get("accuracy") is not None]
        paired = [r for r in done if r.get("selected") is not None and r.get("none") is not None]
        out.append({
            "group": group, "devices": sum(d.group == group for d in run.plan.devices), "tasks": len(rows),
            "finished": len(done), "relearned": sum(r["relearned"] for r in rows),
            "accuracy": _mean(r["accuracy"] for r in done), "none": _mean(r["none"] for r in done),
            "kept_minus_none": _paired([r["accuracy"] - r["none"] for r in done if r.get("none") is not None]),
            "selected_minus_none": _paired([r["selected"] - r["none"] for r in paired]),
            "borrowed": sum(r.get("kept") not in (None, "none") for r in done),
            "time_to_finish": _median(r.get("time_to_finish") for r in done),
            "tta_alone": _median(r.get("tta_alone") for r in done),
            "tta_borrowing": _median(r.get("tta_borrowing") for r in done),
            "reached_alone": sum(r.get("tta_alone") is not None for r in done),
            "reached_borrowing": sum(r.get("tta_borrowing") is not None for r in done),
            # paired, on the tasks both reached: what borrowing adds to the time to target
            "tta_borrowing_minus_alone": _median(r["tta_borrowing"] - r["tta_alone"] for r in done
                                                 if r.get("tta_borrowing") is not None
                                                 and r.get("tta_alone") is not None)})
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _paired(diffs: list[float]) -> dict | None:
    if not diffs:
        return None
    s = summary(diffs, RESAMPLES, 0.95)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def accuracy_curve(run: Run) -> list[dict]:
    """Accuracy over wall time: after every finished task, the device's mean test accuracy over the tasks
    it has learned (``accuracies`` of ``task_finished``: old tasks re-scored, so forgetting would show)."""
    rows = []
    for d in run.plan.devices:
        for e in run.logs[d.device]:
            if e["event"] == "task_finished" and e.get("accuracies"):
                rows.append({"t": run.t(e), "device": d.device, "group": d.group, "tasks": len(e["accuracies"]),
                             "mean_accuracy": round(sum(e["accuracies"]) / len(e["accuracies"]), 4)})
    return sorted(rows, key=lambda r: (r["t"], r["device"]))


# ------------------------------------------------------------ selections and traffic

def selection_rows(run: Run) -> list[dict]:
    rows = []
    for d in run.plan.devices:
        for e in run.logs[d.device]:
            if e["event"] != "backbone_selected":
                continue
            stages = e.get("stages") or {}
            rows.append({"device": d.device, "group": d.group, "link": _link_at(run, d, run.t(e)),
                         "task": e["task"], "index": e["index"], "t": run.t(e), "alive": e.get("alive"),
                         "probed": e.get("probed"), "candidates": len(e.get("candidates") or []),
                         "chosen": e.get("chosen"), "seconds": e.get("seconds"), "bytes": e.get("bytes"),
                         "probe_seconds": (stages.get("probe") or {}).get("seconds"),
                         "probe_bytes": (stages.get("probe") or {}).get("bytes"),
                         "payload_seconds": (stages.get("payload") or {}).get("seconds"),
                         "payload_bytes": (stages.get("payload") or {}).get("bytes"),
                         "score": e.get("score_name"), "rank_score": e.get("rank_score"),
                         "shortlist": e.get("shortlist")})
    return rows


def _link_at(run: Run, d, t: float) -> str:
    """The link ``d`` had at ``t`` (link events of the timeline change it)."""
    link = d.link.name
    for rec in run.timeline:
        if rec.get("do") == "link" and d.device in rec.get("devices", []) and rec["t"] <= t:
            link = rec["link"]
    return link


def by_link(selections: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in selections:
        if r["candidates"]:
            groups[r["link"]].append(r)
    return [{"link": link, "selections": len(rows), "seconds": _median(r["seconds"] for r in rows),
             "probe_seconds": _median(r["probe_seconds"] for r in rows),
             "payload_seconds": _median(r["payload_seconds"] for r in rows),
             "bytes": _median(r["bytes"] for r in rows), "probe_bytes": _median(r["probe_bytes"] for r in rows),
             "payload_bytes": _median(r["payload_bytes"] for r in rows),
             "max_seconds": max((r["seconds"] or 0) for r in rows)} for link, rows in sorted(groups.items())]


def traffic(run: Run) -> dict:
    """Bytes each device's node logged as sent, per payload kind, and what its link carried on the wire
    (the relay's count, framing included), each summed by link class."""
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d in run.plan.devices:
        for e in run.logs[d.device]:
            if e["event"] in ("payload_sent", "payload_summary"):
                by_kind[d.link.name][e["kind"]] += int(e.get("bytes") or 0)
    wire: dict[str, dict[str, int]] = defaultdict(lambda: {"up_bytes": 0, "down_bytes": 0, "retransmits": 0})
    counters = run.summary.get("links", {})
    for d in run.plan.devices:
        c = counters.get(d.device)
        if c:
            w = wire[d.link.name]
            w["up_bytes"] += c["up_bytes"]
            w["down_bytes"] += c["down_bytes"]
            w["retransmits"] += c["up_retransmits"] + c["down_retransmits"]
    return {"sent_by_kind": {k: dict(v) for k, v in by_kind.items()}, "wire": dict(wire)}


def borrow_edges(tasks: list[dict]) -> list[dict]:
    return [{"receiver": r["device"], "task": r["task"], "donor": r["donor"], "arm": r["kept"],
             "gain": round(r["accuracy"] - r["none"], 4) if r.get("none") is not None else None}
            for r in tasks if r.get("kept") not in (None, "none") and r.get("donor")]


# ------------------------------------------------------------ failure detection

def outages(run: Run) -> dict[str, list[tuple[float, float | None, str]]]:
    """device -> (from, until, why) periods it was down or paused, from the driver's timeline."""
    spans: dict[str, list] = defaultdict(list)
    open_: dict[str, tuple[float, str]] = {}
    for rec in run.timeline:
        for device in rec.get("devices", []):
            if rec["do"] in DOWN and device not in open_:
                open_[device] = (rec["t"], rec["do"])
            elif rec["do"] in BACK and device in open_:
                start, why = open_.pop(device)
                spans[device].append((start, rec["t"], why))
    for device, (start, why) in open_.items():
        spans[device].append((start, None, why))
    return dict(spans)


def partitions(run: Run) -> list[tuple[float, float | None, set, set]]:
    out, active = [], {}
    for rec in run.timeline:
        if rec["do"] == "partition":
            active[json.dumps(rec["sides"])] = rec["t"]
        elif rec["do"] == "heal":
            key = json.dumps(rec["sides"])
            if key in active:
                a, b = rec["sides"]
                out.append((active.pop(key), rec["t"], set(a), set(b)))
    for key, start in active.items():
        a, b = json.loads(key)
        out.append((start, None, set(a), set(b)))
    return out


def _cut(parts, x: str, y: str, lo: float, hi: float) -> float | None:
    """When a partition between ``x`` and ``y`` overlapping [lo, hi] began, or None."""
    for start, end, a, b in parts:
        if ((x in a and y in b) or (x in b and y in a)) and start <= hi and (end is None or end >= lo):
            return start
    return None


def failure_detection(run: Run) -> dict:
    """Every ``peer_dead`` judged against what really happened: a true detection (the peer was down,
    paused or cut off by a partition shortly before) with its delay, or a false positive."""
    downs, parts = outages(run), partitions(run)
    timeout = max((d.config.get("node", {}).get("failure_timeout", 5.0) for d in run.plan.devices), default=5.0)
    slack = timeout + 5.0
    detections, false_positives = [], []
    for d in run.plan.devices:
        for e in run.logs[d.device]:
            if e["event"] != "peer_dead":
                continue
            t, peer = run.t(e), e.get("peer")
            cause = next(((s, why) for s, end, why in downs.get(peer, [])
                          if s <= t and (end is None or end >= t - slack)), None)
            cut = _cut(parts, d.device, peer, t - slack, t)
            if cause is not None:
                detections.append({"observer": d.device, "peer": peer, "cause": cause[1], "t": t,
                                   "delay": round(t - cause[0], 3)})
            elif cut is not None:
                detections.append({"observer": d.device, "peer": peer, "cause": "partition", "t": t,
                                   "delay": round(t - cut, 3)})
            else:
                false_positives.append({"observer": d.device, "peer": peer, "t": t, "reason": e.get("reason")})
    by_cause = defaultdict(list)
    for det in detections:
        by_cause[det["cause"]].append(det["delay"])
    return {"failure_timeout": timeout, "detections": detections, "false_positives": false_positives,
            "by_cause": {c: {"n": len(v), "median_delay": _median(v), "max_delay": max(v)}
                         for c, v in by_cause.items()},
            "reconverged": _reconverged(run, parts, downs)}


def _reconverged(run: Run, parts, downs) -> list[dict]:
    """After each heal: for every pair (observer, peer across the cut) where the observer declared the
    peer dead during the partition and neither was down at the heal, how long until the observer saw the
    peer again (``peer_returned``)."""
    out = []
    for start, end, a, b in parts:
        if end is None:
            continue
        times, missing = [], 0
        for observer, others in [(x, b) for x in a] + [(y, a) for y in b]:
            log = run.logs.get(observer, [])
            cut = {e["peer"] for e in log if e["event"] == "peer_dead" and e.get("peer") in others
                   and start <= run.t(e) <= end}
            for peer in sorted(cut):
                if _down_at(downs, observer, end) or _down_at(downs, peer, end):
                    continue
                back = [run.t(e) for e in log if e["event"] in ("peer_returned", "peer_joined")
                        and e.get("peer") == peer and run.t(e) >= end]
                if back:
                    times.append(back[0] - end)
                else:
                    missing += 1
        out.append({"partition": start, "heal": end, "pairs": len(times) + missing, "not_reconverged": missing,
                    "median_seconds": _median(times), "seconds": round(max(times), 3) if times else None})
    return out


def _down_at(downs, device: str, t: float) -> bool:
    return any(s <= t and (e is None or e >= t) for s, e, _ in downs.get(device, []))


# ------------------------------------------------------------ resources

def resource_rows(run: Run) -> list[dict]:
    peak = run.summary.get("peak", {})
    rows = []
    for d in run.plan.devices:
        p = peak.get(d.device, {})
        ends = [r for r in run.timeline if d.device in r.get("devices", []) and r["do"] in ("exited", "oom_killed")]
        rows.append({"device": d.device, "group": d.group, "profile": d.profile.name, "cpus": d.profile.cpus,
                     "memory_mib": d.profile.memory_mib, "cpu_seconds": p.get("cpu_seconds"),
                     "peak_rss_mib": round(p["rss_bytes"] / 2**20, 1) if p.get("rss_bytes") else None,
                     "peak_pss_mib": round(p["pss_bytes"] / 2**20, 1) if p.get("pss_bytes") else None,
                     "starts": sum(1 for e in run.logs[d.device] if e["event"] == "node_started"),
                     "oom_killed": sum(r["do"] == "oom_killed" for r in ends),
                     "exited": sum(r["do"] == "exited" for r in ends)})
    return rows
