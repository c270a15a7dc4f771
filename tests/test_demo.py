"""`crossback demo`: a real 4-process swarm on loopback, end to end, and the privacy contract."""
import csv
import json
import math
import subprocess
import sys

import pytest

from crossback.node.events import read_events

# What may leave a node: the declared payload kinds it serves (K/V, DDV answers, its backbone, its finished
# tasks to a peer of the same label set: the match answer and the task), membership and info, and the small
# requests for them.
ALLOWED_PAYLOADS = {"kv", "ddv", "backbone", "membership", "info", "info_request", "kv_request", "probe_spec",
                    "backbone_request", "task_request", "task_match", "task"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "demo", "--out", str(out), "--nodes", "4",
                           "--epochs", "3", "--adapt-epochs", "1", "--seed", "0", "--timeout", "240",
                           "--tensorboard", str(out / "board")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), proc


def test_summary_reports_the_three_arms(demo):
    out, summary, proc = demo
    assert {n["modality"] for n in summary["nodes"]} == {"image", "text"} and len(summary["nodes"]) == 4
    assert all(len(n["tasks"]) >= 3 for n in summary["nodes"])
    assert summary["compared_tasks"] > 0
    for arm in ("none", "random", "selected"):
        assert 0.0 <= summary["accuracy"][arm] <= 1.0
    assert summary["seconds"] > 0 and (out / "summary.png").stat().st_size > 10_000
    assert "mean test accuracy" in proc.stdout


def test_parallel_superclasses_across_modalities(demo):
    _, summary, _ = demo
    image = {t for n in summary["nodes"] if n["modality"] == "image" for t in n["tasks"]}
    text = {t for n in summary["nodes"] if n["modality"] == "text" for t in n["tasks"]}
    assert image == text


def test_selections_list_candidates_with_finite_scores_and_cross_modal_picks(demo):
    _, summary, _ = demo
    modality = {n["node_id"]: n["modality"] for n in summary["nodes"]}
    later = [s for s in summary["selections"] if s["chosen"] is not None]
    assert later
    for s in later:
        peers = {c["peer"] for c in s["candidates"]}
        assert s["node"] not in peers and s["chosen"] in peers
        assert all(math.isfinite(c["score"]) for c in s["candidates"] if c["error"] is None)
        chosen = next(c for c in s["candidates"] if c["peer"] == s["chosen"])["score"]
        above = [c for c in s["candidates"] if c["error"] is None and c["score"] > chosen]
        assert len(above) < 2  # the demo's shortlist: the top 2 by kv_motion_view, confirmed by LogME
    roles = {n["node_id"]: n["role"] for n in summary["nodes"]}
    receivers = {n for n, role in roles.items() if role == "receiver"}
    for s in (s for s in summary["selections"] if s["node"] in receivers):  # donors of both modalities compete
        assert {modality[c["peer"]] for c in s["candidates"] if c["error"] is None} == {"image", "text"}
        # whose knowledge: a donor, itself or the donor whose backbone it kept (followed through re-serving)
        assert roles[s["chosen_origin"]] == "donor"


def test_data_rich_donors_serve_data_starved_receivers_of_one_genesis(demo):
    out, summary, proc = demo
    roles = {n["node_id"]: n["role"] for n in summary["nodes"]}
    assert sorted(roles.values()) == ["donor", "donor", "receiver", "receiver"]
    gain = summary["receiver_gain"]
    assert gain["units"] == 2 * len(summary["nodes"][0]["tasks"])  # every receiver task had the donors to pick from
    for arm in ("selected", "kept"):
        d = gain[arm]
        assert d["lo"] <= d["mean"] <= d["hi"] and d["wins"] + d["losses"] + d["ties"] == gain["units"]
    assert "receivers, selected - none:" in proc.stdout
    genesis = set()
    for path in (out / "configs").glob("*.yaml"):
        import yaml

        cfg = yaml.safe_load(path.read_text())
        genesis.add(cfg["swarm"]["genesis"])
        assert ("shots" in cfg["data"]) == (roles[cfg["node"]["node_id"]] == "receiver")
    assert len(genesis) == 1


def test_only_declared_payload_kinds_left_any_node(demo):
    out, summary, _ = demo
    kinds = set()
    for log in (out / "logs").glob("*.jsonl"):
        kinds |= {e["kind"] for e in read_events(log) if e["event"] in ("payload_sent", "payload_summary")}
    assert kinds <= ALLOWED_PAYLOADS, kinds - ALLOWED_PAYLOADS
    assert {"kv", "ddv", "backbone"} <= kinds and set(summary["payloads"]) == kinds


def test_selections_command_renders_every_node_and_task(demo):
    out, summary, _ = demo
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "selections", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    body = proc.stdout.splitlines()[2:]
    assert len(body) == len(summary["selections"]) == sum(len(n["tasks"]) for n in summary["nodes"])


@pytest.mark.slow  # a second swarm of processes (the demo's own runs in every full run)
def test_swarm_compare_pairs_arms_within_each_task(tmp_path):
    cfg = tmp_path / "swarm.yaml"
    cfg.write_text("nodes: 2\nepochs: 2\nadapt_epochs: 1\ntimeout: 120\nresamples: 200\n")
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "swarm", "--config", str(cfg), "--compare",
                           "none,selected", "--seeds", "0", "--out", str(tmp_path / "cmp")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(result["table"]) == {"none", "selected"}
    compared = [u for u in result["units"] if "selected" in u]
    assert compared and result["table"]["selected"]["units"] == len(compared)
    diffs = [u["selected"] - u["none"] for u in compared]  # one swarm run: both arms from the same M_loc
    row = result["table"]["selected"]["vs_none"]
    assert row["mean"] == pytest.approx(sum(diffs) / len(diffs)) and row["lo"] <= row["mean"] <= row["hi"]
    assert result["table"]["none"]["vs_none"] is None
    assert "paired diff to none" in proc.stdout


def test_swarm_compare_rejects_unknown_arms(tmp_path):
    cfg = tmp_path / "swarm.yaml"
    cfg.write_text("nodes: 2\n")
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "swarm", "--config", str(cfg), "--compare",
                           "none,best", "--out", str(tmp_path / "cmp")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown arm(s) ['best']" in proc.stderr


LAUNCHER = """
import sys, time, yaml
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_node_config
from crossback.app.demo import launch_node
out = Path({out!r})
cfg = tiny_node_config(0, [{{"name": "a", "classes": ["0", "1"]}}], 0.5, 5.0)
cfg["node"]["node_id"] = "orphan"
(out / "orphan.yaml").write_text(yaml.safe_dump(cfg))
proc, _ = launch_node(out / "orphan.yaml", out, "orphan", "127.0.0.1:0", [])
print(proc.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only")
def test_nodes_die_with_their_launcher_even_when_it_is_sigkilled(tmp_path):
    import os
    import signal
    import time
    from pathlib import Path

    script = LAUNCHER.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        node_pid = int(launcher.stdout.readline())
        assert _running(node_pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _running(node_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(node_pid), "the node outlived its SIGKILLed launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if _running(node_pid := locals().get("node_pid", -1)) and node_pid > 0:
            os.kill(node_pid, signal.SIGKILL)


def test_the_demo_ends_with_one_example_prediction_per_receiver(demo):
    out, summary, proc = demo
    receivers = {n["node_id"]: n for n in summary["nodes"] if n["role"] == "receiver"}
    examples = {e["node"]: e for e in summary["examples"]}
    assert set(examples) == set(receivers)
    for node, ex in examples.items():
        assert ex["task"] == receivers[node]["tasks"][-1] and ex["label"] == ex["top"][0][0]
        assert len(ex["top"]) == 3 and ex["truth"] and abs(sum(p for _, p in ex["top"])) <= 1.0 + 1e-6
        assert f"{node} predicts" in proc.stdout


def test_every_node_writes_its_curves_and_the_demo_one_csv_of_them(demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary, _ = demo
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    nodes = {n["node_id"] for n in summary["nodes"]}
    assert {r["node"] for r in rows} == nodes
    for node in nodes:
        board = EventAccumulator(str(out / "board" / node), size_guidance={"scalars": 0})
        board.Reload()
        mine = [r for r in rows if r["node"] == node]
        assert {r["metric"] for r in mine} == set(board.Tags()["scalars"])
        assert any(r["metric"].startswith("Top1_Acc_Epoch/train_phase/train_stream/") for r in mine)
    scored = [r for r in rows if r["metric"].startswith("Selection/")]
    assert scored and {r["metric"].split("/")[2] for r in scored} <= nodes  # candidates are the swarm's nodes
    receivers = {n["node_id"] for n in summary["nodes"] if n["role"] == "receiver"}
    kept = {(r["node"], r["metric"]) for r in rows if r["metric"].startswith("Transfer/Top1_Acc/")}
    assert {node for node, _ in kept} >= receivers and ("" not in {m for _, m in kept})
