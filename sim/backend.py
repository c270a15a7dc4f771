"""What every backend shares: each device's faces on the relay, its node config, its state through the
timeline, and the stop / kill / pause logic over a process-like handle. A backend (``.local``,
``.compose``) says where a device's node runs, how it is started and frozen, and what limits it."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from crossback.config.node import write_node_config
from crossback.node.metrics_http import scrape_config

from .plan import DevicePlan, Plan, merge
from .relay import DeviceFaces, Relay

STOP_GRACE = 15.0  # seconds a SIGTERMed node has to stop before it is killed


class DeviceProcess(Protocol):
    """The part of ``subprocess.Popen``'s interface a backend's device handle offers."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def wait_for_end(handle: DeviceProcess, timeout: float | None, pause, what: str) -> int:
    """``Popen.wait`` for a handle that is only polled: ``pause()`` between polls (it may read news of
    ended processes itself); TimeoutExpired naming ``what`` past ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (code := handle.poll()) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(what, timeout)
        pause()
    return code


@dataclass
class Device:
    plan: DevicePlan
    faces: DeviceFaces
    config: Path
    log: Path
    proc: DeviceProcess | None = None
    state: str = "planned"  # planned | running | paused | left | crashed | exited | oom_killed
    starts: int = 0
    pids: list = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Backend:
    name = "?"
    nets = None  # the local backend's network namespaces, where it uses them (links are then measured from one)
    zygote = None  # the local backend's preloaded parent, where devices are forked

    def __init__(self, plan: Plan, out: Path, origin: float, relay: Relay | None = None, kernel_rate: bool = False):
        """``origin``: the Unix time the run started (task arrivals count from it plus a device's join).
        ``kernel_rate``: something other than the relay enforces the links' rates."""
        self.plan, self.out, self.origin = plan, Path(out), origin
        self.relay = relay or Relay(seed=plan.seed)
        self.devices: dict[str, Device] = {}
        self.stopping: dict[str, float] = {}  # device -> when its SIGTERMed node is killed
        for folder in ("configs", "logs", "state"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        for d in plan.devices:
            faces = self.relay.add_device(d.device, d.link, kernel_rate=kernel_rate)
            self.devices[d.device] = Device(d, faces, self.out / "configs" / f"{d.device}.yaml",
                                            self.out / "logs" / f"{d.device}.jsonl")

    # ------------------------------------------------------------ what a backend decides

    def listen(self, device: str) -> str:
        """Where the device's node listens (host:port; port 0: any)."""
        raise NotImplementedError

    def metrics_address(self, device: str) -> str:
        """Where the device's node serves /metrics, reached from this machine outside its link."""
        raise NotImplementedError

    def start(self, device: str) -> str:
        raise NotImplementedError

    def ended_state(self, device: str) -> str:
        """Why a device's node ended on its own: ``exited`` or ``oom_killed``."""
        return "exited"

    def mechanisms(self) -> dict:
        raise NotImplementedError

    def pressure(self, device: str, mib: int, seconds: float) -> str:
        return f"not applied ({self.name} backend)"

    def cpu_demand(self) -> dict:
        """The cores the devices' profiles ask for (a profile without ``cpus``: one) against the cores
        of this machine. Past 1, busy devices get less than their profile and their time runs slower
        than the wall clock that timeouts and arrivals keep."""
        asked = sum(d.plan.profile.cpus or 1.0 for d in self.devices.values())
        cores = os.cpu_count() or 1
        return {"profile_cores": round(asked, 2), "machine_cores": cores, "oversubscription": round(asked / cores, 2)}

    # ------------------------------------------------------------ configs

    def write_configs(self) -> None:
        """Every device's node config, and a Prometheus config that scrapes them all."""
        self.metrics = {d: self.metrics_address(d) for d in self.devices}
        for dev in self.devices.values():
            write_node_config(dev.config, self.node_config(dev))
        scrape = scrape_config(self.metrics)
        (self.out / "prometheus.yml").write_text(yaml.safe_dump(scrape, sort_keys=False), encoding="utf-8")

    def node_config(self, dev: Device) -> dict:
        seeds = [self.devices[s].faces.inbound for s in dev.plan.seeds]
        return merge(dev.plan.config, {"node": {
            "node_id": dev.plan.device, "advertise": dev.faces.inbound, "listen": self.listen(dev.plan.device),
            "seed_peers": seeds, "threads": dev.plan.profile.threads,
            "metrics": {"listen": self.metrics[dev.plan.device]},
            "task_arrivals": list(dev.plan.arrivals), "arrival_origin": round(self.origin + dev.plan.join, 3)}})

    def node_args(self, device: str) -> list[str]:
        """The `crossback` arguments of the device's node."""
        dev = self.devices[device]
        return ["node", "--config", str(dev.config), "--state-dir", str(self.out / "state" / device),
                "--log-dir", str(self.out / "logs")]

    def create_devices(self, population: Path, document: dict, specs: dict, create, into: dict) -> None:
        """For a backend whose devices are engine objects made before the run (containers, services):
        ``document`` written to ``population`` for reading and reuse; ``into[device] = create(device, spec)``
        for every device (all removed again if one fails); then the run's clock starts, and the node configs
        that count from it are written."""
        population.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        try:
            for device, spec in specs.items():
                into[device] = create(device, spec)
        except BaseException:
            self.remove_devices()
            raise
        self.origin = time.time()
        self.write_configs()

    def remove_devices(self) -> None:
        """Remove what ``create_devices`` made."""

    # ------------------------------------------------------------ actions

    def begin_start(self, device: str) -> str | None:
        """Before starting ``device``: its old node killed if it is still going after a leave or crash; a
        note for the result, or None when it already runs."""
        dev = self.devices[device]
        note = ""
        if dev.running and dev.state in ("left", "crashed"):  # back before its old node is gone
            dev.proc.kill()
            dev.proc.wait()
            note = " (its old node killed first)" if dev.state == "left" else ""
        if dev.running:
            return None
        self.stopping.pop(device, None)
        return note

    def started(self, device: str, note: str) -> str:
        dev = self.devices[device]
        dev.state, dev.starts = "running", dev.starts + 1
        dev.pids.append(dev.proc.pid)
        return ("started" if dev.starts == 1 else "restarted") + note

    def signal(self, device: str, sig: int, state: str) -> str:
        dev = self.devices[device]
        if not dev.running:
            return f"not running ({dev.state})"
        if sig in (signal.SIGTERM, signal.SIGKILL) and dev.state == "paused":
            self.thaw(device)  # a frozen process would not act on SIGTERM
        dev.proc.send_signal(sig)
        dev.state = state
        return "ok"

    def leave(self, device: str) -> str:
        """SIGTERM; the node stops at its next epoch boundary (``poll`` kills it past ``STOP_GRACE``)."""
        result = self.signal(device, signal.SIGTERM, "left")
        if result == "ok":
            self.stopping[device] = time.monotonic() + STOP_GRACE
        return result

    def crash(self, device: str) -> str:
        return self.signal(device, signal.SIGKILL, "crashed")

    def pause(self, device: str) -> str:
        return self.signal(device, signal.SIGSTOP, "paused")

    def thaw(self, device: str) -> None:
        """Undo ``pause`` on a running device's node."""
        self.devices[device].proc.send_signal(signal.SIGCONT)

    def resume(self, device: str) -> str:
        dev = self.devices[device]
        if dev.state != "paused":
            return f"not paused ({dev.state})"
        if not dev.running:
            return f"not running ({dev.state})"
        self.thaw(device)
        dev.state = "running"
        return "ok"

    def set_link(self, device: str, link) -> str:
        self.relay.set_link(device, link)
        return "ok"

    def poll(self) -> list[tuple[str, str, int]]:
        """Devices whose node ended on its own since the last poll: (device, state, exit code)."""
        ended = []
        for name, deadline in list(self.stopping.items()):
            proc = self.devices[name].proc
            if proc.poll() is not None:
                del self.stopping[name]
            elif time.monotonic() > deadline:
                proc.kill()
                ended.append((name, "killed after leaving", -9))
                del self.stopping[name]
        for name, dev in self.devices.items():
            if dev.state in ("running", "paused") and dev.proc is not None and dev.proc.poll() is not None:
                dev.state = self.ended_state(name)
                ended.append((name, dev.state, dev.proc.returncode))
        return ended

    def stop_all(self) -> None:
        live = [(name, d) for name, d in self.devices.items() if d.running]
        for name, dev in live:
            if dev.state == "paused":
                self.thaw(name)
            dev.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for _, dev in live:
            try:
                dev.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                dev.proc.kill()
                dev.proc.wait()

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            self.remove_devices()
            self.relay.close()
