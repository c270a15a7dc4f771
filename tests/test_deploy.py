"""The README's deployment commands, run as written: `crossback up` starts a local swarm, and the
documented laptop command starts a node that joins it and picks a backbone from its nodes.

Only what cannot be fixed in a shared CI machine is changed: free ports instead of 50051.., the run
folder and the laptop's state/log dirs under tmp, and fewer epochs for the swarm.
"""
from __future__ import annotations

import math
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from crossback.node.events import read_events

from conftest import wait_for

ROOT = Path(__file__).parent.parent
# the README and the pages it links: the deployment commands live in docs/deploy.md
DOCS = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
CLI = [sys.executable, "-m", "crossback.app.cli"]


def documented(prefix: str) -> list[str]:
    lines = re.findall(rf"^    ({re.escape(prefix)}.*)$", DOCS, flags=re.M)
    assert lines, f"the docs have no command starting with {prefix!r}"
    return shlex.split(lines[0])


def free_port_block(n: int) -> int:
    rng = random.Random(os.getpid())
    for _ in range(50):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no block of free loopback ports")


def events(log: Path, name: str) -> list[dict]:
    return [e for e in read_events(log) if e["event"] == name]


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 40) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_documented_laptop_command_joins_a_running_local_swarm(tmp_path):
    up_cmd = documented("crossback up ")
    laptop_cmd = documented("crossback node --config examples/swarm/laptop.yaml")
    seed = laptop_cmd[laptop_cmd.index("--seed-peers") + 1]
    assert seed == "127.0.0.1:50051", "the laptop section's local example seeds the first `crossback up` node"
    port = free_port_block(8)
    metrics_port = port + 4  # the block's second half
    run_dir = tmp_path / "swarm"
    up_args = [a if a != up_cmd[up_cmd.index("--out") + 1] else str(run_dir) for a in up_cmd[1:]]
    up = subprocess.Popen(CLI + up_args + ["--port", str(port), "--epochs", "3", "--adapt-epochs", "1",
                                           "--metrics-port", str(metrics_port)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    laptop = None
    swarm_logs = [run_dir / "logs" / f"{n}.jsonl" for n in ("img-0", "txt-0", "img-1", "txt-1")]
    try:
        for log in swarm_logs:  # a swarm node is a candidate once it has finished a task
            wait_for(lambda log=log: events(log, "task_finished"), 90, f"first task of {log.stem}", [up])
        env = {**os.environ, "CROSSBACK_LISTEN": "0.0.0.0:0", "CROSSBACK_STATE_DIR": str(tmp_path / "laptop" / "state"),
               "CROSSBACK_LOG_DIR": str(tmp_path / "laptop" / "logs"), "OMP_NUM_THREADS": "1"}
        laptop_args = [f"127.0.0.1:{port}" if a == seed else a for a in laptop_cmd[1:]]
        laptop = subprocess.Popen(CLI + laptop_args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        laptop_log = tmp_path / "laptop" / "logs" / "laptop-0.jsonl"

        (started,) = wait_for(lambda: events(laptop_log, "node_started"), 60, "laptop start", [laptop])
        assert started["listen"].startswith("0.0.0.0:")
        assert started["address"] == f"127.0.0.1:{started['listen'].rpartition(':')[2]}"
        assert started["advertised_from"] == f"route to seed 127.0.0.1:{port}"

        swarm_ids = {log.stem for log in swarm_logs}
        wait_for(lambda: {e["peer"] for e in events(laptop_log, "peer_joined")} >= swarm_ids, 30,
                 "laptop learns every swarm node", [laptop])
        for log in swarm_logs:
            wait_for(lambda log=log: any(e["peer"] == "laptop-0" for e in events(log, "peer_joined")), 30,
                     f"{log.stem} learns of laptop-0", [up])

        sel = wait_for(lambda: events(laptop_log, "backbone_selected"), 120, "laptop's first selection", [laptop])[0]
        answered = [c for c in sel["candidates"] if c["error"] is None]
        assert answered and {c["peer"] for c in answered} <= swarm_ids
        assert all(math.isfinite(c["score"]) for c in answered)
        # the documented two-stage rule: the top `shortlist` by the cheap score, the winner by the confirming one
        # (a shortlisted candidate whose backbone then failed to arrive keeps its cheap score and its mark)
        rank = "kv_motion_view"  # examples/swarm/laptop.yaml
        ranked = [c for c in sel["candidates"] if math.isfinite((c.get("scores") or {}).get(rank, math.nan))]
        by_cheap = sorted(ranked, key=lambda c: (-c["scores"][rank], c["peer"]))
        shortlisted = [c for c in ranked if c["shortlisted"]]
        assert sel["rank_score"] == rank and sel["shortlist"] == 2
        assert {c["peer"] for c in shortlisted} == {c["peer"] for c in by_cheap[:2]}
        decided = sel["score_name"]
        best = sorted((c for c in shortlisted if decided in c["scores"] and c["error"] is None),
                      key=lambda c: (-c["scores"][decided], c["peer"]))
        assert sel["chosen"] == best[0]["peer"]
        assert sel["bytes"] > 0

        peers = subprocess.run(CLI + ["peers", "--target", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
        assert peers.returncode == 0 and re.search(r"laptop-0\s+127\.0\.0\.1:\d+\s+alive", peers.stdout), peers.stdout
        # --metrics-port: every node serves /metrics, and the written scrape config names each one
        scrape = yaml.safe_load((run_dir / "prometheus.yml").read_text())
        groups = scrape["scrape_configs"][0]["static_configs"]
        assert [(g["labels"]["node"], g["targets"]) for g in groups] == [
            (log.stem, [f"127.0.0.1:{metrics_port + i}"]) for i, log in enumerate(swarm_logs)]
        for i, log in enumerate(swarm_logs):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics", timeout=10).read().decode()
            assert f'crossback_node_info{{node_id="{log.stem}"' in text and "crossback_tasks_finished_total" in text
    finally:
        if laptop is not None:
            stop(laptop)
        rc = stop(up, signal.SIGINT)
    assert rc == 0, "crossback up did not stop cleanly on Ctrl-C"
    for log in swarm_logs:  # every node of the swarm was stopped, not orphaned
        assert events(log, "node_stopped"), log.stem


def test_up_refuses_a_busy_port_and_a_wildcard_without_advertise_host(tmp_path):
    import threading

    from crossback.config.errors import ConfigError
    from crossback.app.local_swarm import run_up

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"--port: 127\.0\.0\.1:{port} is not free"):
            run_up(tmp_path / "a", threading.Event(), nodes=2, port=port)
    with pytest.raises(ConfigError, match="--advertise-host"):
        run_up(tmp_path / "b", threading.Event(), host="0.0.0.0", port=port)
    assert not (tmp_path / "a" / "logs").exists() and not (tmp_path / "b").exists()  # refused before starting anything
