"""Named device profiles and links a scenario may use without defining them (its own win by name).

The numbers are round approximations, chosen as follows; measure your own device and write a profile.

Profiles: ``cpus`` is a share of *one core of the machine running the simulation* (a CPU cgroup quota),
set to the device's single-core speed relative to a current x86-64 server core, from public single-core
benchmark scores (a Raspberry Pi 4's or a Jetson Nano's Cortex-A72/A57 core scores roughly a quarter of
such a core, a Jetson Orin Nano's Cortex-A78AE and a mid-range phone's big core roughly half, a laptop
about one). A node trains with one torch thread on every preset (``threads``): the node's models are
small, and extra threads on a cgroup-limited share only contend. ``memory_mib`` is what a device would
give one node process: a node takes about 300 MiB resident (docs/performance.md), so every preset leaves
room to learn; a profile below that is how a scenario tests the kernel killing a device.

Links: access links, each direction apart, latency one way per direction. Wi-Fi and LTE are round
numbers in the range of published median measurements of home Wi-Fi and of LTE (tens of Mbit/s down,
a third to a tenth of it up; 40-70 ms round trip on LTE, a few ms on Wi-Fi); 3G is the slow end.
Packet loss on TCP shows up as retransmission delay (see docs/simulation.md for how it is emulated).
"""
from __future__ import annotations

from .scenario import Link, Profile

PROFILES = (
    Profile("server", cpus=None, memory_mib=None, threads=1),
    Profile("laptop", cpus=1.0, memory_mib=4096, threads=1),
    Profile("phone", cpus=0.5, memory_mib=1536, threads=1),
    Profile("jetson-orin-nano", cpus=0.5, memory_mib=4096, threads=1),
    Profile("jetson-nano", cpus=0.25, memory_mib=2048, threads=1),
    Profile("rpi4", cpus=0.25, memory_mib=1024, threads=1),
)
LINKS = (
    Link("loopback"),
    Link("ethernet", up_mbit=1000.0, down_mbit=1000.0, latency_ms=0.1),
    Link("wifi", up_mbit=40.0, down_mbit=100.0, latency_ms=3.0, jitter_ms=1.0),
    Link("lte", up_mbit=8.0, down_mbit=25.0, latency_ms=25.0, jitter_ms=5.0, loss=0.001),
    Link("3g", up_mbit=1.0, down_mbit=4.0, latency_ms=60.0, jitter_ms=15.0, loss=0.005),
)
PRESETS = {"profiles": {p.name: p for p in PROFILES}, "links": {ln.name: ln for ln in LINKS}}
