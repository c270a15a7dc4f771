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
from dataclasses import replace
from pathlib import Path

from crossback.config.scenario import Profile
from crossback.node.launch import die_with_parent

from .backend import Backend
from .netns import METRICS_PORT, NODE_PORT, Namespaces
from .plan import Plan
from .relay import Relay
from .resources import Controllers, DeviceCgroup
from .zygote import NODE_MODULE, Zygote


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_setup(cgroup: DeviceCgroup | None, parent: int, victim: bool = True):
    """In the child, before exec: join the device's cgroup, die with the simulator (PR_SET_PDEATHSIG).
    ``victim``: the node is what the kernel's OOM killer picks first in its device (the device's other
    applications stand for its operating system, which a phone or a board keeps alive first)."""
    def setup() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # the simulator's thread runs raised; a device does not
        if cgroup is not None:
            cgroup.join()
        if victim:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)  # raising it needs no privilege
            os.write(fd, b"1000")
            os.close(fd)
        die_with_parent(parent, signal.SIGKILL)
    return setup


class LocalBackend(Backend):
    name = "local"

    def __init__(self, plan: Plan, out: Path, origin: float, relay: Relay | None = None,
                 nets: Namespaces | None = None, zygote: Zygote | None = None):
        """``nets``: every device in a network namespace of its own, its rates by tc (``.netns``); the relay
        then listens on the bridge and adds latency, jitter and loss. None: every device on loopback.
        ``zygote``: devices are forked from it (``.zygote``; the backend closes it); None: each device is
        a fresh interpreter."""
        super().__init__(plan, out, origin, relay, kernel_rate=nets is not None)
        self.nets, self.zygote = nets, zygote
        self.shaped: dict[str, dict] = {}  # device -> what tc set on its veth ends
        self.controllers = Controllers.detect(f"{plan.name}-{os.getpid()}")
        self.cgroups: dict[str, DeviceCgroup] = {}
        self.oom_seen: dict[str, int] = {}
        self.hogs: list[subprocess.Popen] = []  # pressure events' memory takers
        for d in plan.devices:
            if nets is not None:
                nets.add(d.device)
                self.shaped[d.device] = nets.shape(d.device, d.link)
            if self.controllers.version:
                self.cgroups[d.device] = self.controllers.device_group(d.device, self._charged(d.profile))
        self.write_configs()

    def listen(self, device: str) -> str:
        return f"{self.nets.devices[device].address}:{NODE_PORT}" if self.nets else "127.0.0.1:0"

    def metrics_address(self, device: str) -> str:  # scraped from the host, not through the device's link
        return f"{self.nets.devices[device].address}:{METRICS_PORT}" if self.nets else f"127.0.0.1:{_free_port()}"

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
                "cpu_demand": self.cpu_demand(), "not_applied": {d: m for d, m in missing.items() if m}}

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

    # ------------------------------------------------------------ actions

    def start(self, device: str) -> str:
        note = self.begin_start(device)
        if note is None:
            return "already running"
        dev, cgroup = self.devices[device], self.cgroups.get(device)
        threads = str(dev.plan.profile.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "grpc_proxy": f"http://{dev.faces.proxy}", "PYTHONUNBUFFERED": "1"}
        for var in ("no_grpc_proxy", "no_proxy", "NO_PROXY", "http_proxy", "https_proxy"):
            env.pop(var, None)
        console = self.out / "logs" / f"{device}.console"
        if self.zygote is not None:
            dev.proc = self.zygote.fork(self.node_args(device), env, console, cgroups=cgroup.folders if cgroup else (),
                                        netns=self.nets.devices[device].path() if self.nets else None)
        else:
            prefix = self.nets.devices[device].exec_prefix() if self.nets else []
            with open(console, "a", encoding="utf-8") as err:
                dev.proc = subprocess.Popen([*prefix, sys.executable, "-m", NODE_MODULE, *self.node_args(device)],
                                            env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                            preexec_fn=_child_setup(cgroup, os.getpid()))
        return self.started(device, note)

    def ended_state(self, device: str) -> str:
        cgroup = self.cgroups.get(device)
        kills = cgroup.oom_kills() if cgroup else 0
        seen, self.oom_seen[device] = self.oom_seen.get(device, 0), kills
        return "oom_killed" if kills > seen else "exited"

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
        setup = _child_setup(self.cgroups.get(device), os.getpid(), victim=False)
        self.hogs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, preexec_fn=setup))
        return "ok"

    def stop_all(self) -> None:
        for hog in self.hogs:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
        super().stop_all()

    def close(self) -> None:
        self.stop_all()
        if self.zygote is not None:
            self.zygote.close()
        self.relay.close()
        if self.nets is not None:
            self.nets.close()
        self.controllers.remove()
