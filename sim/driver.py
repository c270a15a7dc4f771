"""The driver: applies a plan's timeline to a backend at its times, follows every device's own log, and
records what really happened (``timeline.jsonl``), what each device used (``resources.jsonl``) and how
the links measured (``fidelity.json``). Times are seconds since the run's origin."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .fidelity import measure_link
from .backend import Backend
from .plan import Plan, PlannedEvent
from .relay import raise_priority
from .sampler import Sampler

TICK = 0.1  # seconds between looks at the timeline, the logs and the processes
LOADED_FIDELITY_AFTER = 20.0  # seconds into the run the links are measured again, under the devices' load


def measure_links(relay, plan: Plan, when: str, log=print, nets=None) -> list[dict]:
    """Every link the plan uses, measured through probe faces on ``relay`` (``.fidelity``); ``nets``: from
    a probe namespace behind token buckets, as the devices are."""
    links = {d.link.name: d.link for d in plan.devices}
    links.update({ev.link: plan.links[ev.link] for ev in plan.events if ev.link})
    out = []
    for link in links.values():
        result = measure_link(relay, link, name=f"probe-{when}-{link.name}", nets=nets)
        out.append({"when": when, **result})
        log(f"link {link.name:<10} ({when}) rtt {result['rtt_ms']['measured']:.1f} ms "
            f"(set {result['rtt_ms']['configured']:g}); up {result['up_mbit']['measured']:.2f} Mbit/s "
            f"(set {result['up_mbit']['configured']}); down {result['down_mbit']['measured']:.2f} "
            f"(set {result['down_mbit']['configured']})")
    return out


class LogTail:
    """The new complete lines of a node's JSON log since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


class Driver:
    def __init__(self, plan: Plan, backend: Backend, out: Path, log=print, fidelity: bool = True,
                 idle_fidelity: list | None = None):
        """``idle_fidelity``: the links as measured before the run (``measure_links``), for run.json."""
        self.plan, self.backend, self.out, self.log, self.fidelity = plan, backend, Path(out), log, fidelity
        self.idle_fidelity = idle_fidelity
        self.origin = backend.origin
        self.tails = {d: LogTail(dev.log) for d, dev in backend.devices.items()}
        self.done: set[str] = set()
        self.finished: dict[str, int] = {}
        self._timeline = open(self.out / "timeline.jsonl", "a", encoding="utf-8", buffering=1)
        self.sampler = Sampler(backend, self.out / "resources.jsonl", self.now)

    def now(self) -> float:
        return time.time() - self.origin

    def record(self, entry: dict) -> None:
        self._timeline.write(json.dumps({"t": round(self.now(), 3), **entry}) + "\n")

    # ------------------------------------------------------------ the run

    def run(self) -> dict:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        raise_priority()  # the timeline is applied on time however busy the devices keep the machine
        try:
            return self._run()
        finally:
            os.setpriority(os.PRIO_PROCESS, 0, before)

    def _run(self) -> dict:
        fidelity = {"idle": self.idle_fidelity} if self.idle_fidelity is not None else {}
        events, i = list(self.plan.events), 0
        loaded_at = LOADED_FIDELITY_AFTER
        self.sampler.start()
        ended, loaded, settled = "duration", None, None
        try:
            while True:
                now = self.now()
                while i < len(events) and events[i].at <= now:
                    self.apply(events[i])
                    i += 1
                self._follow_logs()
                for device, state, code in self.backend.poll():
                    self.record({"do": state, "devices": [device], "code": code, "source": "process"})
                    self.log(f"{now:7.1f}s {device} {state} (exit code {code})")
                if self.fidelity and loaded_at is not None and now >= loaded_at:  # beside the timeline
                    loaded = threading.Thread(target=lambda: fidelity.update(
                        loaded=measure_links(self.backend.relay, self.plan, "loaded", self.log, self.backend.nets)),
                                              name="sim-fidelity", daemon=True)
                    loaded.start()
                    loaded_at = None
                if now >= self.plan.duration:
                    break
                if self.plan.until == "done" and i == len(events) and self._all_done():
                    settled = settled if settled is not None else now + self.plan.settle
                    if now >= settled:
                        ended = "done"
                        break
                else:
                    settled = None
                time.sleep(TICK)
        finally:
            if loaded is not None:
                loaded.join(60)
            self.record({"do": "end", "reason": ended})
            self.backend.stop_all()
            self._follow_logs()
            self.sampler.stop()
            self._timeline.close()
        summary = {"origin": self.origin, "ended": ended, "seconds": round(self.now(), 3),
                   "relay_overhead_ms": round(self.backend.relay.overhead * 1e3, 4),
                   "mechanisms": self.backend.mechanisms(), "links": self.backend.relay.counters(),
                   "peak": self.sampler.peak, "fidelity": fidelity,
                   **({"zygote": self.sampler.zygote} if self.sampler.zygote else {})}
        (self.out / "run.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def _all_done(self) -> bool:
        for name, dev in self.backend.devices.items():
            if name not in self.done and dev.state in ("running", "paused", "planned"):
                return False
        return True

    def _follow_logs(self) -> None:
        for device, tail in self.tails.items():
            dev = self.backend.devices[device]
            for rec in tail.read():
                event = rec.get("event")
                if event == "node_started" and dev.proc is not None and rec.get("pid") == dev.proc.pid:
                    host, _, port = str(rec.get("listen", "")).rpartition(":")
                    if port.isdigit():
                        self.backend.relay.set_target(device, host or "127.0.0.1", int(port))
                elif event == "tasks_done" and rec.get("finished", 0) >= len(dev.plan.tasks):
                    self.done.add(device)
                elif event == "task_finished":
                    self.finished[device] = self.finished.get(device, 0) + 1

    # ------------------------------------------------------------ one event

    def apply(self, ev: PlannedEvent) -> None:
        b = self.backend
        if ev.do in ("partition", "heal"):
            getattr(b.relay, ev.do)(*ev.sides)
            result = {"sides": [list(s) for s in ev.sides]}
        elif ev.do == "pressure":
            result = {d: b.pressure(d, ev.mib, ev.duration) for d in ev.devices}
        elif ev.do == "link":
            result = {d: b.set_link(d, self.plan.links[ev.link]) for d in ev.devices}
        else:
            act = {"join": b.start, "restart": b.start, "leave": b.leave, "crash": b.crash, "pause": b.pause,
                   "resume": b.resume}[ev.do]
            result = {d: act(d) for d in ev.devices}
        self.record({"do": ev.do, "at": ev.at, "devices": list(ev.devices), "sides": [list(s) for s in ev.sides],
                     **({"link": ev.link} if ev.link else {}), **({"mib": ev.mib} if ev.mib else {}),
                     "source": ev.source, "result": result})
        what = ev.link if ev.do == "link" else " | ".join(",".join(s) for s in ev.sides) if ev.sides else ""
        self.log(f"{self.now():7.1f}s {ev.do:<9} {','.join(ev.devices)[:60]} {what} ({ev.source})")
