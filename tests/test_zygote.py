"""Devices forked from a preloaded parent (``crossback.sim.zygote``): the unmodified CLI runs in the child
with its errors and exit code where a spawned node's would be; a forked node serves, shares its parent's
pages, stops, resumes and ends on signals, and dies with the zygote; as root it is in its own network
namespace and cgroup."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from crossback.config.node import write_node_config
from crossback.config.scenario import Profile
from crossback.sim import netns
from crossback.sim.resources import Controllers
from crossback.sim.zygote import Zygote

from conftest import node_events, tiny_node_config, wait_for

TASKS = [{"name": "low", "classes": ["0", "1", "2"]}]


@pytest.fixture
def zygote(tmp_path):
    z = Zygote.start(tmp_path / "zygote.console", env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield z
    z.close()


def node_argv(root: Path, node_id: str, listen: str = "127.0.0.1:0") -> list[str]:
    path = root / f"{node_id}.yaml"
    write_node_config(path, tiny_node_config(0, TASKS, heartbeat=0.5, failure_timeout=5.0))
    return ["node", "--config", str(path), "--node-id", node_id, "--listen", listen,
            "--state-dir", str(root / "state" / node_id), "--log-dir", str(root / "logs")]


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def rollup(pid: int) -> dict[str, int]:
    rows = (line.split() for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return {r[0].rstrip(":"): int(r[1]) for r in rows}


def test_the_cli_runs_in_a_forked_child_with_its_error_and_exit_code_where_a_spawned_ones_would_be(zygote, tmp_path):
    usage = zygote.fork(["no-such-command"], dict(os.environ), tmp_path / "a.console")
    assert usage.wait(30) == 2
    assert "invalid choice: 'no-such-command'" in (tmp_path / "a.console").read_text()
    missing = zygote.fork(["node", "--config", str(tmp_path / "absent.yaml")], dict(os.environ), tmp_path / "b.console")
    assert missing.wait(30) == 2
    assert f"{tmp_path / 'absent.yaml'}: cannot read config" in (tmp_path / "b.console").read_text()
    assert not zygote.signal(usage.pid, signal.SIGTERM)  # reaped: its number is never signalled again
    broken = zygote.fork(["--help"], dict(os.environ), tmp_path / "c.console", netns=str(tmp_path / "no-netns"))
    assert broken.wait(30) == 1  # a setup that fails in the child: its traceback in the device's console
    assert "no-netns" in (tmp_path / "c.console").read_text()


def test_a_forked_node_serves_shares_its_parents_pages_and_obeys_signals(zygote, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = zygote.fork(node_argv(tmp_path, "f0"), env, tmp_path / "f0.console")
    second = zygote.fork(node_argv(tmp_path, "f1"), env, tmp_path / "f1.console")
    procs = [first, second]
    try:
        for node in ("f0", "f1"):
            wait_for(lambda: node_events(tmp_path, node, "serving"), 120, f"{node} serving", procs)
        assert node_events(tmp_path, "f0", "node_started")[0]["pid"] == first.pid  # the forked pid is the node
        memory = rollup(first.pid)
        assert memory["Pss"] < 0.5 * memory["Rss"], memory  # most of what it maps is shared with the zygote
        first.send_signal(signal.SIGSTOP)
        wait_for(lambda: state(first.pid) == "T", 10, "stopped")
        first.send_signal(signal.SIGCONT)
        wait_for(lambda: state(first.pid) != "T", 10, "running again")
        first.terminate()
        assert first.wait(30) == 0  # a clean stop, as a spawned node's
        second.kill()
        assert second.wait(30) == -signal.SIGKILL
        third = zygote.fork(node_argv(tmp_path, "f2"), env, tmp_path / "f2.console")
        procs.append(third)
        with pytest.raises(subprocess.TimeoutExpired):
            third.wait(0.2)
    finally:
        for p in procs:
            p.kill()


def test_forked_devices_die_with_the_zygote(tmp_path):
    zygote = Zygote.start(tmp_path / "zygote.console", env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        node = zygote.fork(node_argv(tmp_path, "orphan"), dict(os.environ), tmp_path / "orphan.console")
        wait_for(lambda: node_events(tmp_path, "orphan", "node_started"), 60, "started", [node])
    finally:
        zygote.close()  # SIGKILL: it has no chance to stop its children itself
    wait_for(lambda: not Path(f"/proc/{node.pid}").exists() or state(node.pid) == "Z", 10, "the device gone")


@pytest.mark.skipif(netns.unavailable() is not None, reason="needs root and iproute2")
def test_as_root_a_forked_device_is_in_its_own_network_namespace_and_cgroup(zygote, tmp_path):
    name = f"cbz-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=15)
    controllers = Controllers.detect(f"test-zygote-{os.getpid()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=15)
        group = controllers.device_group("dev", Profile("p", cpus=0.5, memory_mib=512)) if controllers.version else None
        node = zygote.fork(node_argv(tmp_path, "ns"), dict(os.environ), tmp_path / "ns.console",
                           cgroups=group.folders if group else (), netns=f"/run/netns/{name}")
        try:
            started = wait_for(lambda: node_events(tmp_path, "ns", "node_started"), 60, "started", [node])
            assert os.stat(f"/proc/{node.pid}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
            assert os.stat(f"/proc/{node.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            port = int(started[0]["listen"].rpartition(":")[2])
            inside = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c",
                                     f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)"],
                                    capture_output=True, timeout=30)
            assert inside.returncode == 0, inside.stderr  # it listens inside the namespace
            for folder in group.folders if group else ():
                assert str(node.pid) in (folder / "cgroup.procs").read_text().split()
            assert Path(f"/proc/{node.pid}/oom_score_adj").read_text().strip() == "1000"
        finally:
            node.kill()
            node.wait(30)
    finally:
        controllers.remove()
        subprocess.run(["ip", "netns", "del", name], timeout=15)
