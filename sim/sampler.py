"""What each device's node uses, sampled every second beside the timeline: CPU seconds and resident memory
from /proc/PID/stat, and its proportional set size (PSS) from smaps_rollup, which costs about 7 ms of
CPU a node: at most ``PSS_PER_SECOND`` devices a second, staggered. It runs in a thread of its own, so a
slow read of /proc on a busy machine never delays the timeline."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from .relay import raise_priority
from .resources import usage

SAMPLE_EVERY = 1.0  # seconds between resource samples
PSS_PER_SECOND = 8
LIVE = ("running", "paused")


class Sampler:
    def __init__(self, backend, path: Path, now):
        """``backend``: its devices and zygote are read (never changed); ``now``: seconds since the origin."""
        self.backend, self.now = backend, now
        self.peak: dict[str, dict] = {}
        self.zygote: dict | None = None  # the preloaded parent's own PSS, sampled while devices run
        self._rows = open(path, "a", encoding="utf-8", buffering=1)
        self._cpu: dict[int, float] = {}  # pid -> its last CPU seconds
        self._pss_next: dict[str, float] = {}  # device -> when its PSS is read next
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling in the background, take one last sample, close the file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self.sample(self.now())
        self._rows.close()

    def _loop(self) -> None:
        raise_priority()
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample(self.now())

    def sample(self, now: float) -> None:
        # the device states and pids the timeline thread sets are only read here: a device that ended
        # a moment ago reads as gone (usage is None) or is skipped by its state
        devices = [(name, dev.proc.pid, list(dev.pids), dev.state) for name, dev in list(self.backend.devices.items())
                   if dev.proc is not None and dev.state in LIVE]
        zygote = self.backend.zygote
        if zygote is not None and devices:
            pss = zygote.pss_bytes()
            if pss is not None:  # spread over the devices it serves, it is part of what each costs
                self.zygote = {"pid": zygote.proc.pid, "pss_bytes": pss, "devices_running": len(devices)}
        every = max(SAMPLE_EVERY, len(self.backend.devices) / PSS_PER_SECOND)
        order = {name: i for i, name in enumerate(self.backend.devices)}
        for name, pid, pids, state in devices:
            due = now >= self._pss_next.setdefault(name, order[name] / PSS_PER_SECOND)  # staggered
            u = usage(pid, pss=due)
            if u is None:
                continue
            if due:
                self._pss_next[name] = now + every
            self._cpu[pid] = u.cpu_seconds
            cpu = sum(self._cpu.get(p, 0.0) for p in pids)
            row = {"t": round(now, 3), "device": name, "pid": pid, "cpu_seconds": round(cpu, 3),
                   "rss_bytes": u.rss_bytes, "pss_bytes": u.pss_bytes, "state": state}
            self._rows.write(json.dumps(row) + "\n")
            peak = self.peak.setdefault(name, {"rss_bytes": 0, "pss_bytes": 0, "cpu_seconds": 0.0})
            peak["rss_bytes"] = max(peak["rss_bytes"], u.rss_bytes)
            peak["pss_bytes"] = max(peak["pss_bytes"], u.pss_bytes or 0)
            peak["cpu_seconds"] = round(cpu, 3)
