"""Kernel-shaped links for the local backend (as root, with iproute2): every device in its own network
namespace, joined to the simulator's bridge by a veth pair, its rates enforced by a tc token bucket
(tbf) on both ends — the host end's egress is the device's downlink, the device end's egress its uplink.

Latency, jitter and loss stay with the relay (``.relay``): netem would do them in the kernel, but it is
missing on many kernels (this machine's and CI's among them), and one mechanism everywhere keeps runs
comparable. The relay's faces listen on the bridge's address, so every byte a device sends or receives
crosses its veth pair and its token buckets.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from crossback.config.scenario import Link

NODE_PORT = 50051  # every device has its own namespace, so every node listens on the same port
METRICS_PORT = 9100
TBF_LATENCY = "400ms"  # how long a packet may wait in a token bucket before it is dropped


def unavailable() -> str | None:
    """Why kernel links cannot be used here, or None."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no {tool} command (iproute2)"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise OSError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(frozen=True)
class DeviceNet:
    device: str
    netns: str
    address: str  # the device's IP on the bridge
    host_if: str  # the veth end on the simulator's side: its egress is the device's downlink
    device_if: str  # the end inside the namespace: its egress is the uplink

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def path(self) -> str:
        """The namespace's file, for setns(2)."""
        return f"/run/netns/{self.netns}"


def forget_dead_runs() -> list[str]:
    """Remove the namespaces and bridges of earlier runs whose simulator died without cleaning up (their
    names carry its process id); what was removed."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.startswith("cb") and "-" in line.split()[0]]
    bridges = [line.split(": ")[1].split("@")[0] for line in
               _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines() if ": cb" in line]
    gone = []
    for name in names + bridges:
        tag = name[2:].split("-")[0]
        if tag.isdigit() and not os.path.exists(f"/proc/{int(tag)}"):
            _run("ip", "netns" if "-" in name else "link", "del", name, check=False)
            gone.append(name)
    return gone


class Namespaces:
    def __init__(self, run_id: int):
        self.tag = f"{run_id % 100000:05d}"
        self.bridge = f"cb{self.tag}"
        self.network = ipaddress.ip_network(f"10.{100 + run_id % 100}.0.0/16")
        self.gateway = str(self.network.network_address + 1)
        self.devices: dict[str, DeviceNet] = {}
        self._count = 0
        forget_dead_runs()
        _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
        try:
            _run("ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except OSError:
            self.close()
            raise

    def add(self, device: str) -> DeviceNet:
        if device in self.devices:
            raise ValueError(f"{device} already has a namespace")
        i = self._count
        self._count += 1
        net = DeviceNet(device, f"cb{self.tag}-{i}", str(self.network.network_address + 2 + i),
                        f"h{self.tag}-{i}", f"d{self.tag}-{i}")
        self.devices[device] = net
        _run("ip", "netns", "add", net.netns)
        _run("ip", "link", "add", net.host_if, "type", "veth", "peer", "name", net.device_if)
        _run("ip", "link", "set", net.device_if, "netns", net.netns)
        _run("ip", "link", "set", net.host_if, "master", self.bridge, "up")
        ns = ("ip", "-n", net.netns)
        _run(*ns, "addr", "add", f"{net.address}/{self.network.prefixlen}", "dev", net.device_if)
        _run(*ns, "link", "set", net.device_if, "up")
        _run(*ns, "link", "set", "lo", "up")
        _run(*ns, "route", "add", "default", "via", self.gateway)
        return net

    def shape(self, device: str, link: Link) -> dict:
        """Set ``link``'s rates on the device's two veth ends (none: the bucket is removed); what was set."""
        net = self.devices[device]
        applied = {}
        for direction, mbit, prefix, iface in (("down", link.down_mbit, (), net.host_if),
                                                ("up", link.up_mbit, ("-n", net.netns), net.device_if)):
            if mbit:
                rate = int(mbit * 1e6)
                burst = max(16 << 10, rate // 8 // 100)  # 10 ms of the rate, at least 16 KiB
                _run("tc", *prefix, "qdisc", "replace", "dev", iface, "root", "tbf", "rate", f"{rate}bit",
                     "burst", str(burst), "latency", TBF_LATENCY)
                applied[direction] = f"tbf {mbit:g} Mbit/s"
            else:
                _run("tc", *prefix, "qdisc", "del", "dev", iface, "root", check=False)
                applied[direction] = "unlimited"
        return applied

    def close(self) -> None:
        """Remove every namespace (their veth pairs go with them) and the bridge."""
        for net in self.devices.values():
            _run("ip", "netns", "del", net.netns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        self.devices.clear()
