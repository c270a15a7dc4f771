import subprocess
import sys

import pytest
import yaml

from crossback.config.errors import ConfigError
from crossback.node.events import read_events
from crossback.orchestrator_free.genesis import genesis_id
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
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path),
                           "--state-dir", str(tmp_path / "state"), "--log-dir", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    events = read_events(tmp_path / "logs" / "solo.jsonl")
    names = [e["event"] for e in events]
    assert names.count("task_finished") == 2 and "tasks_done" in names and "peer_joined" not in names
    assert (tmp_path / "state" / "checkpoints" / "task-002" / "learner.json").is_file()
    # a node's state folder is a run folder: crossback evaluate re-scores what the node reported
    ev = subprocess.run([sys.executable, "-m", "crossback.app.cli", "evaluate", str(tmp_path / "state")],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert ev.stdout.count(" ok") == 2 and "MISMATCH" not in ev.stdout


def test_bad_node_config_exits_nonzero_naming_the_key(tmp_path):
    path = write(tmp_path, node_id="x", hearbeat_interval=1)
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "node.hearbeat_interval" in proc.stderr and "heartbeat_interval" in proc.stderr


def _node_cmd(path, tmp_path):
    return [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path),
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


@pytest.mark.parametrize("extra, needle", [
    ({"selection": {"deadline": -1.0}}, "selection.deadline: must be greater than 0.0"),
    ({"selection": {"euc_weight": float("nan")}}, "selection.euc_weight: nan is not a finite number"),
    ({"selection": {"score": "vibes"}}, "selection.score: 'vibes' is not one of"),
    ({"adaptation": {"epochs": -2}}, "adaptation.epochs: must be at least 0"),
    ({"experiment": {"keep": "oracle"}}, "experiment: keep: oracle needs experiment.oracle: true"),
    ({"transfer": {"strategy": "magic"}}, "transfer.strategy: 'magic' is not one of"),
    ({"transfer": {"adapt_epochs": 3}}, "key 'transfer.adapt_epochs' has moved: write it as 'adaptation.epochs'"),
    ({"transfer": {"scope": "intra"}}, "key 'transfer.scope' has moved: write it as 'selection.scope'"),
    ({"node": {**CONFIG["node"], "node_id": "x", "max_message_bytes": 100}}, "node.max_message_bytes: must be at least"),
    ({"node": {**CONFIG["node"], "node_id": "x", "rpc_attempts": 0}}, "node.rpc_attempts: must be at least 1"),
    ({"split": {"train": 0.5}}, "key 'split' is misplaced: it belongs at 'data.split'"),
    ({"scope": "cross"}, "key 'scope' is misplaced: it belongs at 'selection.scope'"),
])
def test_node_sections_are_range_checked_and_name_their_key(tmp_path, extra, needle):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], "node_id": "x"}, **extra}))
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_node_config(path, {}, {})


def test_node_sections_parse_into_their_own_settings(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], "node_id": "x"},
                                    "selection": {"score": "local_loss", "scope": "intra"},
                                    "adaptation": {"epochs": 4}, "experiment": {"oracle": True, "keep": "oracle"}}))
    cfg = load_node_config(path, {}, {})
    assert cfg.selection.score == "local_loss" and cfg.selection.scope == "intra"
    assert cfg.adaptation.epochs == 4 and cfg.adaptation.own_weights is True  # the paper's default
    assert cfg.experiment.keep == "oracle" and cfg.transfer.strategy == "crossback"


@pytest.mark.parametrize("extra, needle", [
    ({"node": {"node_id": "x", "serve": ["kv", "gradients"]}}, "node.serve: unknown payload kinds ['gradients']"),
    ({"node": {"node_id": "x", "serve": ["kv", "outer_grad"]}}, "node.serve: outer_grad travels with the encoder body"),
    ({"node": {"node_id": "x", "outer_grad_batches": 0}}, "node.outer_grad_batches"),
    ({"node": {"node_id": "x", "outer_grad_batch_size": 1}}, "node.outer_grad_batch_size"),
    ({"transfer": {"strategy": "mona", "mona": {"trade_off": -1.0}}}, "transfer.mona.trade_off"),
    ({"transfer": {"mona": {"lambda": 0.4}}}, "transfer.mona.lambda"),
    ({"transfer": {"borrow": "everything"}}, "transfer.borrow"),
    ({"swarm": {"genesis": -1}}, "swarm.genesis"),
    ({"swarm": {"seed": 3}}, "'swarm.seed' is misplaced"),
    ({"selection": {"score": "leep"}}, "selection.score"),
    ({"selection": {"combine": "median"}}, "selection.combine"),
    ({"selection": {"combine": "average"}, "transfer": {"strategy": "mergenet"}},
     "selection.combine: average averages borrowed payloads; transfer.strategy 'mergenet'"),
    ({"data": {**CONFIG["data"], "shots": 0}}, "data.shots"),
])
def test_borrowing_settings_are_checked_and_name_their_key(tmp_path, extra, needle):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], "node_id": "x"}, **extra}))
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_node_config(path, {}, {})


def test_genesis_serve_and_borrow_reach_the_node(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], "node_id": "x", "serve": ["kv", "backbone"]},
                                    "swarm": {"genesis": 4}, "transfer": {"borrow": "block"},
                                    "adaptation": {"head_probe": False}}))
    cfg = load_node_config(path, {}, {})
    assert cfg.node.serve == ("kv", "backbone") and cfg.transfer.borrow == "block" and not cfg.adaptation.head_probe
    assert genesis_id(cfg.swarm.genesis, cfg.run.model).startswith("4:") and cfg.swarm.genesis == 4


def test_a_mona_node_parses_its_strategy_and_what_it_serves(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "node": {**CONFIG["node"], "node_id": "x", "outer_grad_batches": 2,
                                                       "serve": ["kv", "ddv", "encoder", "outer_grad"]},
                                    "transfer": {"strategy": "mona", "mona": {"trade_off": 0.3, "inner_lr": 0.5}}}))
    cfg = load_node_config(path, {}, {})
    assert cfg.node.serve == ("kv", "ddv", "encoder", "outer_grad") and cfg.node.outer_grad_batches == 2
    assert cfg.transfer.mona.trade_off == 0.3 and cfg.transfer.mona.inner_lr == 0.5
