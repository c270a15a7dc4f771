import subprocess
import sys

import pytest
import yaml

from crossback.node.config import ConfigError
from crossback.node.events import read_events
from crossback.node.node_config import load_node_config

from test_node_integration import CONFIG


def write(tmp_path, **node):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], **node}}))
    return path


def test_flags_beat_environment_beat_file(tmp_path):
    path = write(tmp_path, node_id="file", listen="127.0.0.1:7000", seed_peers=["h:1"])
    env = {"CROSSBACK_NODE_ID": "env", "CROSSBACK_SEED_PEERS": "h:2, h:3", "CROSSBACK_LISTEN": "0.0.0.0:7001"}
    cfg = load_node_config(path, {"node_id": "flag", "listen": None}, env)
    assert cfg.node.node_id == "flag" and cfg.node.listen == "0.0.0.0:7001" and cfg.node.seed_peers == ("h:2", "h:3")
    assert cfg.run.data.source == "digits"


@pytest.mark.parametrize("node, needle", [
    ({"node_id": "x", "heartbeat": 1}, "unknown key 'node.heartbeat'"),
    ({"node_id": "x", "failure_timeout": 0.1}, "node.failure_timeout"),
    ({"node_id": "x", "listen": "localhost"}, "node.listen"),
    ({"node_id": "x", "device": "tpu"}, "node.device"),
    ({"node_id": "x", "device": "cuda:0"}, "node.device"),
    ({}, "node.node_id"),
])
def test_bad_node_settings_name_their_key(tmp_path, node, needle):
    cfg = {**CONFIG, "node": node}
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if node.get("device") == "cuda:0":
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA exists here")
    with pytest.raises(ConfigError, match=needle):
        load_node_config(path, {}, {})


def test_node_with_unreachable_seeds_runs_its_tasks_alone(tmp_path):
    path = write(tmp_path, node_id="solo", seed_peers=["127.0.0.1:1"], exit_when_done=True)
    proc = subprocess.run([sys.executable, "-m", "crossback.node.cli", "node", "--config", str(path),
                           "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    events = read_events(tmp_path / "logs" / "solo.jsonl")
    names = [e["event"] for e in events]
    assert names.count("task_finished") == 2 and "tasks_done" in names and "peer_joined" not in names
    assert (tmp_path / "state" / "checkpoints" / "task-002" / "learner.json").is_file()


def test_bad_node_config_exits_nonzero_naming_the_key(tmp_path):
    path = write(tmp_path, node_id="x", hearbeat_interval=1)
    proc = subprocess.run([sys.executable, "-m", "crossback.node.cli", "node", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "node.hearbeat_interval" in proc.stderr and "heartbeat_interval" in proc.stderr


def _node_cmd(path, tmp_path):
    return [sys.executable, "-m", "crossback.node.cli", "node", "--config", str(path),
            "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "logs")]


def test_node_killed_mid_task_resumes_and_continues(tmp_path):
    import os
    import signal

    from conftest import wait_for

    cfg = {**CONFIG, "train": {"epochs": 40, "batch_size": 16},
           "node": {**CONFIG["node"], "node_id": "k", "exit_when_done": True}}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "logs" / "k.jsonl"
    proc = subprocess.Popen(_node_cmd(path, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: [e for e in read_events(log) if e["event"] == "task_started" and e["task"] == "b"], 120)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of learning task b
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(read_events(log))
    done = subprocess.run(_node_cmd(path, tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    after = read_events(log)[before:]
    resumed = next(e for e in after if e["event"] == "resumed")
    assert resumed["finished_tasks"] == ["a"]
    assert [e["task"] for e in after if e["event"] == "task_finished"] == ["b"]


def test_sigterm_mid_task_stops_promptly_without_a_partial_checkpoint(tmp_path):
    import signal
    import time

    from conftest import wait_for

    cfg = {**CONFIG, "train": {"epochs": 400, "batch_size": 16}, "node": {**CONFIG["node"], "node_id": "t"}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "logs" / "t.jsonl"
    proc = subprocess.Popen(_node_cmd(path, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: [e for e in read_events(log) if e["event"] == "task_started"], 120)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - sent < 15
    names = [e["event"] for e in read_events(log)]
    assert "task_interrupted" in names and names[-1] == "node_stopped"
    assert not (tmp_path / "state" / "checkpoints").exists() or not any((tmp_path / "state" / "checkpoints").iterdir())
