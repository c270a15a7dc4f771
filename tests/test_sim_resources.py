"""Device profiles by cgroups: limits written where the kernel reads them, a process in its device's
cgroup, the kernel's OOM kill counted; without root, every part named that could not be applied."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crossback.config.scenario import Profile
from crossback.sim.local import _child_setup
from crossback.sim.resources import Controllers, usage

SMALL = Profile("small", cpus=0.25, memory_mib=160)


def test_without_cgroups_every_part_of_a_profile_is_named():
    none = Controllers(0, None, None)
    missing = none.missing(SMALL)
    assert [m.split(" ")[0] for m in missing] == ["cpus", "memory_mib"]
    assert all("not root" in m or "no writable cgroup" in m for m in missing)
    assert none.missing(Profile("free")) == []


@pytest.fixture
def controllers():
    c = Controllers.detect(f"test-{os.getpid()}")
    if c.cpu is None or c.memory is None:
        pytest.skip("needs root and writable CPU and memory cgroup controllers")
    yield c
    c.remove()


def test_a_device_cgroup_holds_its_limits_and_its_process(controllers):
    group = controllers.device_group("dev-0", SMALL)
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True, preexec_fn=_child_setup(group, os.getpid(), victim=False))
    try:
        assert proc.stdout.readline().strip() == "up"  # running its own program, not still in exec
        for folder in group.folders:
            assert str(proc.pid) in (folder / "cgroup.procs").read_text().split()
        if controllers.version == 1:
            assert (controllers.cpu / "dev-0" / "cpu.cfs_quota_us").read_text().strip() == "25000"
            assert int((controllers.memory / "dev-0" / "memory.limit_in_bytes").read_text()) == 160 << 20
        else:
            assert (controllers.cpu / "dev-0" / "cpu.max").read_text().split() == ["25000", "100000"]
        u = usage(proc.pid)
        assert u is not None and u.rss_bytes > 0 and u.cpu_seconds >= 0
    finally:
        proc.kill()
        proc.wait()


def test_the_kernel_kills_a_process_over_its_devices_memory_and_it_is_counted(controllers):
    group = controllers.device_group("dev-1", SMALL)
    hog = "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n"
    done = subprocess.run([sys.executable, "-c", hog], preexec_fn=_child_setup(group, os.getpid()), timeout=120)
    assert done.returncode == -9
    assert group.oom_kills() >= 1


def test_the_sampler_reads_every_devices_cpu_and_rss_each_second_and_pss_of_at_most_eight(tmp_path):
    import json
    from types import SimpleNamespace

    from crossback.sim.sampler import PSS_PER_SECOND, Sampler

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(20)]
    try:
        devices = {f"d{i}": SimpleNamespace(proc=p, pids=[p.pid], state="running") for i, p in enumerate(procs)}
        devices["d19"].state = "crashed"  # not sampled: it is not running
        sampler = Sampler(SimpleNamespace(devices=devices, zygote=None), tmp_path / "r.jsonl", lambda: 4.0)
        for second in range(4):
            sampler.sample(float(second))
        sampler.stop()
        rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    by_t = {}
    for r in rows:
        by_t.setdefault(r["t"], []).append(r)
    assert all(len(by_t[float(t)]) == 19 for t in range(4))  # every live device, every second
    assert all(r["rss_bytes"] > 0 and r["device"] != "d19" for r in rows)
    with_pss = {t: sorted(r["device"] for r in rs if r["pss_bytes"]) for t, rs in by_t.items()}
    assert all(len(v) <= PSS_PER_SECOND for t, v in with_pss.items() if t < 4)  # the last sample: stop's own
    assert {d for t in (0.0, 1.0, 2.0, 3.0) for d in with_pss[t]} == {f"d{i}" for i in range(19)}  # each, staggered
    assert sampler.peak["d0"]["pss_bytes"] > 0
