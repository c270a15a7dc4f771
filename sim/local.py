"""The local backend: every device a real `crossback node` process on this machine.

Each device's traffic goes through its faces on the relay (``.relay``: latency, jitter, loss, partitions,
and rates unless the kernel shapes them: ``.netns``, as root); its CPU share and memory limit are its own
cgroup (``.resources``, as root); its torch threads are set in its node config. The node itself is the
unmodified `crossback node`: it only sees its addresses, a ``grpc_proxy`` and a task list with arrival times.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from crossback.config.node import write_node_config
from crossback.config.scenario import Profile
from crossback.node.launch import die_with_parent
from crossback.node.metrics_http import scrape_config

from .netns import METRICS_PORT, NODE_PORT, Namespaces
from .plan import DevicePlan, Plan, merge
from .relay import DeviceFaces, Relay
from .resources import Controllers, DeviceCgroup
from .zygote import ForkedProcess, Zygote

STOP_GRACE = 15.0  # seconds a SIGTERMed node has to stop before it is killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_setup(cgroup: DeviceCgroup | None, parent: int, victim: bool = True):
    """In the child, before exec: join the device's cgroup, die with the simulator (PR_SET_PDEATHSIG).
    ``victim``: the node is what the kernel's OOM killer picks first in its device (the device's other
    applications stand for its operating system, which a phone or a board keeps alive first)."""
    def setup() -> None:
        if cgroup is not None:
            cgroup.join()
        if victim:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)  # raising it needs no privilege
            os.write(fd, b"1000")
            os.close(fd)
        die_with_parent(parent, signal.SIGKILL)
    return setup


@dataclass
class Device:
    plan: DevicePlan
    faces: DeviceFaces
    config: Path
    log: Path
    cgroup: DeviceCgroup | None
    proc: subprocess.Popen | ForkedProcess | None = None
    state: str = "planned"  # planned | running | paused | left | crashed | exited | oom_killed
    starts: int = 0
    pids: list = field(default_factory=list)
    oom_seen: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalBackend:
    name = "local"

    def __init__(self, plan: Plan, out: Path, origin: float, relay: Relay | None = None,
                 nets: Namespaces | None = None, zygote: Zygote | None = None):
        """``origin``: the Unix time the run started (task arrivals count from it plus a device's join).
        ``nets``: every device in a network namespace of its own, its rates by tc (``.netns``); the relay
        then listens on the bridge and adds latency, jitter and loss. None: every device on loopback.
        ``zygote``: devices are forked from it (``.zygote``; the backend closes it); None: each device is
        a fresh interpreter."""
        self.plan, self.out, self.origin, self.nets, self.zygote = plan, Path(out), origin, nets, zygote
        self.relay = relay or Relay(seed=plan.seed)
        self.shaped: dict[str, dict] = {}  # device -> what tc set on its veth ends
        self.controllers = Controllers.detect(f"{plan.name}-{os.getpid()}")
        self.devices: dict[str, Device] = {}
        self.hogs: list[subprocess.Popen] = []  # pressure events' memory takers
        self.stopping: dict[str, float] = {}  # device -> when its SIGTERMed node is killed
        for folder in ("configs", "logs", "state"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        for d in plan.devices:
            faces = self.relay.add_device(d.device, d.link, kernel_rate=nets is not None)
            if nets is not None:
                nets.add(d.device)
                self.shaped[d.device] = nets.shape(d.device, d.link)
            cgroup = self.controllers.device_group(d.device, self._charged(d.profile)) if self.controllers.version else None
            self.devices[d.device] = Device(d, faces, self.out / "configs" / f"{d.device}.yaml",
                                            self.out / "logs" / f"{d.device}.jsonl", cgroup)
        # metrics are scraped out of band: from the host, not through the device's link
        self.metrics = {d: f"{nets.devices[d].address}:{METRICS_PORT}" if nets else f"127.0.0.1:{_free_port()}"
                        for d in self.devices}
        for dev in self.devices.values():
            write_node_config(dev.config, self._config(dev))
        scrape = scrape_config(self.metrics)
        (self.out / "prometheus.yml").write_text(yaml.safe_dump(scrape, sort_keys=False), encoding="utf-8")

    def mechanisms(self) -> dict:
        """What enforces each part of the plan here, and what could not be applied (per device)."""
        c = self.controllers
        cg = f"cgroup v{c.version}" if c.version else None
        missing = {d: self.controllers.missing(dev.plan.profile) for d, dev in self.devices.items()}
        rate = "tc tbf on both ends of each device's veth pair (its own network namespace)" if self.nets else \
            "relay (userspace, per device and direction, shared by its connections)"
        return {"backend": self.name, "network": "namespaces" if self.nets else "loopback", "rate": rate,
                "latency": "relay", "jitter": "relay (uniform, order kept)",
                "loss": "relay (a chunk that would lose a packet arrives one RTO late)",
                "partition": "relay (blackhole: no answer across until the heal)",
                "cpus": f"{cg} CFS quota" if c.cpu else None,
                "memory": self._memory_mechanism(cg) if c.memory else None,
                "threads": "node.threads and OMP_NUM_THREADS",
                "start": "forked from one preloaded parent (a zygote)" if self.zygote else "a fresh interpreter each",
                "not_applied": {d: m for d, m in missing.items() if m}}

    def _memory_mechanism(self, cg: str) -> str:
        if self.zygote is None:
            return f"{cg} limit"
        return (f"{cg} limit, less the {self.zygote.shared_mib} MiB of the zygote's memory that every forked "
                "device shares (charged to the simulator's cgroup, not the device's)")

    def _charged(self, profile: Profile) -> Profile:
        """The limits the device's cgroup gets. A forked device's pages shared with the zygote stay charged
        to the zygote's cgroup, where a spawned node would hold them in its own: its memory limit is
        lowered by that much, so the kernel kills it where it would kill a spawned one."""
        if self.zygote is None or profile.memory_mib is None:
            return profile
        return replace(profile, memory_mib=max(64, profile.memory_mib - self.zygote.shared_mib))

    def _config(self, dev: Device) -> dict:
        seeds = [self.devices[s].faces.inbound for s in dev.plan.seeds]
        return merge(dev.plan.config, {"node": {
            "node_id": dev.plan.device, "advertise": dev.faces.inbound,
            "listen": f"{self.nets.devices[dev.plan.device].address}:{NODE_PORT}" if self.nets else "127.0.0.1:0",
            "seed_peers": seeds, "threads": dev.plan.profile.threads,
            "metrics": {"listen": self.metrics[dev.plan.device]},
            "task_arrivals": list(dev.plan.arrivals), "arrival_origin": round(self.origin + dev.plan.join, 3)}})

    # ------------------------------------------------------------ actions

    def start(self, device: str) -> str:
        dev = self.devices[device]
        note = ""
        if dev.running and dev.state in ("left", "crashed"):  # back before its old node is gone
            dev.proc.kill()
            dev.proc.wait()
            note = " (its old node killed first)" if dev.state == "left" else ""
        if dev.running:
            return "already running"
        self.stopping.pop(device, None)
        argv = ["node", "--config", str(dev.config), "--state-dir", str(self.out / "state" / device),
                "--log-dir", str(self.out / "logs")]
        threads = str(dev.plan.profile.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "grpc_proxy": f"http://{dev.faces.proxy}", "PYTHONUNBUFFERED": "1"}
        for var in ("no_grpc_proxy", "no_proxy", "NO_PROXY", "http_proxy", "https_proxy"):
            env.pop(var, None)
        console = self.out / "logs" / f"{device}.console"
        if self.zygote is not None:
            dev.proc = self.zygote.fork(argv, env, console, cgroups=dev.cgroup.folders if dev.cgroup else (),
                                        netns=self.nets.devices[device].path() if self.nets else None)
        else:
            prefix = self.nets.devices[device].exec_prefix() if self.nets else []
            with open(console, "a", encoding="utf-8") as err:
                dev.proc = subprocess.Popen([*prefix, sys.executable, "-m", "crossback.app.cli", *argv], env=env,
                                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                            preexec_fn=_child_setup(dev.cgroup, os.getpid()))
        dev.state, dev.starts = "running", dev.starts + 1
        dev.pids.append(dev.proc.pid)
        return ("started" if dev.starts == 1 else "restarted") + note

    def signal(self, device: str, sig: int, state: str) -> str:
        dev = self.devices[device]
        if not dev.running:
            return f"not running ({dev.state})"
        if sig in (signal.SIGTERM, signal.SIGKILL) and dev.state == "paused":
            dev.proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
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
        result = self.signal(device, signal.SIGKILL, "crashed")
        return result

    def pause(self, device: str) -> str:
        return self.signal(device, signal.SIGSTOP, "paused")

    def resume(self, device: str) -> str:
        dev = self.devices[device]
        if dev.state != "paused":
            return f"not paused ({dev.state})"
        return self.signal(device, signal.SIGCONT, "running")

    def set_link(self, device: str, link) -> str:
        self.relay.set_link(device, link)
        if self.nets is not None:
            self.shaped[device] = self.nets.shape(device, link)
        return "ok"

    def pressure(self, device: str, mib: int, seconds: float) -> str:
        """Another application on the device takes ``mib`` MiB for ``seconds``, inside the device's memory
        cgroup; the node is the OOM killer's first pick, so it is what the kernel kills if both do not fit."""
        dev = self.devices[device]
        if dev.plan.profile.memory_mib is None or self.controllers.memory is None:
            return "not applied (no memory limit on this device)"
        code = ("import time\nx = bytearray(%d)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n"
                "time.sleep(%f)\n" % (mib << 20, seconds))
        setup = _child_setup(dev.cgroup, os.getpid(), victim=False)
        self.hogs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, preexec_fn=setup))
        return "ok"

    def poll(self) -> list[tuple[str, str, int]]:
        """Devices whose process ended on its own since the last poll: (device, state, exit code)."""
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
                kills = dev.cgroup.oom_kills() if dev.cgroup else 0
                dev.state = "oom_killed" if kills > dev.oom_seen else "exited"
                dev.oom_seen = kills
                ended.append((name, dev.state, dev.proc.returncode))
        return ended

    def stop_all(self) -> None:
        for hog in self.hogs:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
        live = [d for d in self.devices.values() if d.running]
        for dev in live:
            if dev.state == "paused":
                dev.proc.send_signal(signal.SIGCONT)
            dev.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for dev in live:
            try:
                dev.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                dev.proc.kill()
                dev.proc.wait()

    def close(self) -> None:
        self.stop_all()
        if self.zygote is not None:
            self.zygote.close()
        self.relay.close()
        if self.nets is not None:
            self.nets.close()
        self.controllers.remove()
