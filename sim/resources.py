"""A device's resource envelope by cgroups (v1 or v2), and what a process really used, read from /proc.

With root and a writable CPU / memory controller, each device gets its own cgroup: ``cpus`` becomes a CFS
quota (``cpus`` x 100 ms per 100 ms period), ``memory_mib`` the memory limit, at which the kernel kills
the process (recorded as ``oom_kill`` by the controller). Without them, ``Cgroups.missing`` names what
could not be applied, and the run says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crossback.config.scenario import Profile

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@dataclass(frozen=True)
class Controllers:
    version: int  # 1 or 2; 0: none usable
    cpu: Path | None  # the folder device cgroups are made under
    memory: Path | None

    @classmethod
    def detect(cls, name: str, root: Path = ROOT) -> "Controllers":
        """Controllers usable by this process, with a folder ``crossback/<name>`` made under each."""
        if os.geteuid() != 0:
            return cls(0, None, None)
        if (root / "cgroup.controllers").exists():  # v2, unified
            wanted = {"cpu", "memory"} & set((root / "cgroup.controllers").read_text().split())
            base = root / "crossback" / name
            try:
                for folder in (root / "crossback", base):
                    folder.mkdir(exist_ok=True)
                    parent = folder.parent / "cgroup.subtree_control"
                    parent.write_text(" ".join(f"+{c}" for c in sorted(wanted)))
                (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
            except OSError:
                return cls(0, None, None)
            return cls(2, base if "cpu" in wanted else None, base if "memory" in wanted else None)
        found = {}
        for ctl in ("cpu", "memory"):
            mount = root / ctl
            _forget_dead_runs(mount / "crossback")
            if _writable(mount):
                try:
                    (mount / "crossback" / name).mkdir(parents=True, exist_ok=True)
                    found[ctl] = mount / "crossback" / name
                except OSError:
                    pass
        return cls(1 if found else 0, found.get("cpu"), found.get("memory"))

    def missing(self, profile: Profile) -> list[str]:
        """The parts of ``profile`` these controllers cannot apply, with why."""
        why = "not root" if os.geteuid() != 0 else "no writable cgroup controller"
        out = []
        if profile.cpus is not None and self.cpu is None:
            out.append(f"cpus ({why})")
        if profile.memory_mib is not None and self.memory is None:
            out.append(f"memory_mib ({why})")
        return out

    def device_group(self, device: str, profile: Profile) -> "DeviceCgroup":
        """The device's cgroup(s) with ``profile``'s limits written (made once, reused by restarts)."""
        folders = []
        if self.version == 2 and (self.cpu or self.memory):
            folder = (self.cpu or self.memory) / device
            folder.mkdir(exist_ok=True)
            if self.cpu is not None:
                quota = "max" if profile.cpus is None else str(max(1000, round(profile.cpus * PERIOD_US)))
                (folder / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            if self.memory is not None:
                limit = "max" if profile.memory_mib is None else str(profile.memory_mib << 20)
                (folder / "memory.max").write_text(limit)
                _try_write(folder / "memory.swap.max", "0")
            folders.append(folder)
        elif self.version == 1:
            if self.cpu is not None:
                folder = self.cpu / device
                folder.mkdir(exist_ok=True)
                (folder / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                quota = -1 if profile.cpus is None else max(1000, round(profile.cpus * PERIOD_US))
                (folder / "cpu.cfs_quota_us").write_text(str(quota))
                folders.append(folder)
            if self.memory is not None:
                folder = self.memory / device
                folder.mkdir(exist_ok=True)
                limit = -1 if profile.memory_mib is None else profile.memory_mib << 20
                (folder / "memory.limit_in_bytes").write_text(str(limit))
                _try_write(folder / "memory.swappiness", "0")  # over the limit is a kill, not a swap storm
                folders.append(folder)
        return DeviceCgroup(self.version, tuple(folders))

    def remove(self) -> None:
        """Remove the run's folders (their processes must be gone); what cannot go is left."""
        for base in {p for p in (self.cpu, self.memory) if p is not None}:
            for child in sorted(base.glob("*"), reverse=True):
                if child.is_dir():
                    _rmdir(child)
            _rmdir(base)
            _rmdir(base.parent)  # crossback/, once no other run uses it


def _forget_dead_runs(base: Path) -> None:
    """Remove the empty cgroups of earlier runs whose simulator died without cleaning up (``name-PID``)."""
    if not base.is_dir():
        return
    for run in base.iterdir():
        pid = run.name.rpartition("-")[2]
        if run.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for child in [c for c in run.iterdir() if c.is_dir()]:
                _rmdir(child)
            _rmdir(run)


def _try_write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass


def _rmdir(path: Path) -> None:
    try:  # a cgroup folder goes with rmdir once empty; its control files are not real files
        path.rmdir()
    except OSError:
        pass


@dataclass(frozen=True)
class DeviceCgroup:
    version: int
    folders: tuple[Path, ...]

    def join(self) -> None:
        """Move the calling process into the device's cgroup(s): call in the child before exec."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of this device for memory."""
        for folder in self.folders:
            for name in ("memory.events", "memory.oom_control"):
                path = folder / name
                if path.exists():
                    for line in path.read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int
    pss_bytes: int | None


def usage(pid: int, pss: bool = True) -> Usage | None:
    """CPU seconds (user + system), resident and (with ``pss``) proportional set size of ``pid``; None if
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
    if not pss:
        return Usage(cpu, rss, None)
    proportional = None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                proportional = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return Usage(cpu, rss, proportional)
