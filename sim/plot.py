"""timeline.png: one row per device — when it was up, down or paused, each task from arrival to finish,
its selections — with partitions shaded."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .analysis import Run, outages, partitions  # noqa: E402

COLOURS = {"crash": "#d62728", "leave": "#7f7f7f", "pause": "#ff7f0e", "exited": "#8c564b", "oom_killed": "#9467bd"}


def plot_timeline(run: Run, report: dict, path: Path) -> None:
    devices = [d.device for d in run.plan.devices]
    end = report["run"].get("seconds") or max((r["t"] for r in run.timeline), default=1.0)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.32 * len(devices)))
    y = {d: i for i, d in enumerate(devices)}
    starts = {}
    for d in run.plan.devices:
        first = [e for e in run.logs[d.device] if e["event"] == "node_started"]
        starts[d.device] = run.t(first[0]) if first else None
        if starts[d.device] is not None:
            ax.barh(y[d.device], end - starts[d.device], left=starts[d.device], color="#e8f0f8", height=0.8)
    for device, spans in outages(run).items():
        for s, e, why in spans:
            ax.barh(y[device], (e or end) - s, left=s, color=COLOURS.get(why, "#333333"), height=0.8, alpha=0.8)
    for t in report["tasks"]:
        if t.get("arrived") is not None and t.get("finished") is not None:
            ax.plot([t["arrived"], t["finished"]], [y[t["device"]]] * 2, color="#1f77b4", lw=3, solid_capstyle="butt")
            mark = "^" if t.get("kept") not in (None, "none") else "|"
            ax.plot(t["finished"], y[t["device"]], marker=mark, color="#2ca02c", ms=7)
    for s in report["selections"]:
        ax.plot(s["t"], y[s["device"]], marker=".", color="black", ms=4)
    for s, e, _, _ in partitions(run):
        ax.axvspan(s, e or end, color="#bcbd22", alpha=0.15)
    ax.set_yticks(range(len(devices)), devices, fontsize=7)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds since the run started")
    ax.set_title(f"{report['run']['scenario']}: tasks (blue, arrival to finish; green ^ borrowed), selections (.), "
                 "crash red / pause orange / leave grey, partitions shaded", fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(report: dict, path: Path) -> None:
    """Every device's mean accuracy over its learned tasks against wall time, and each group's mean."""
    rows = report["accuracy"]
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, group in enumerate(groups):
        colour = colours[gi % len(colours)]
        latest: dict[str, float] = {}
        xs, ys = [], []
        for r in (r for r in rows if r["group"] == group):
            latest[r["device"]] = r["mean_accuracy"]
            xs.append(r["t"])
            ys.append(sum(latest.values()) / len(latest))
        for device in dict.fromkeys(r["device"] for r in rows if r["group"] == group):
            mine = [r for r in rows if r["device"] == device]
            ax.step([r["t"] for r in mine], [r["mean_accuracy"] for r in mine], where="post", color=colour,
                    alpha=0.15, lw=1)
        ax.step(xs, ys, where="post", color=colour, lw=2.5, label=f"{group} (mean over its devices)")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("mean test accuracy over learned tasks")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['run']['scenario']}: accuracy over wall time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
