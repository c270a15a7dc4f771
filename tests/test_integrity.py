"""State a node cannot verify is never trained on or served: digests in every checkpoint, a corrupt
newest checkpoint moved aside for the newest intact one, a full disk that loses nothing."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, tiny_node_config, wait_for

from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig
from crossback.models.methods import learn_task
from crossback.config.model import TrainOptions
from crossback.models.training import evaluate
from crossback.models import persistence as ckpt
from crossback.models.persistence import (CheckpointCorrupt, latest_intact_checkpoint, load_checkpoint, save_checkpoint)
from crossback.node.events import read_events
from crossback.node.transport import CallPolicy, PeerClient


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, digits_tasks):
    """A checkpoint folder holding task-001 and task-002, each with the accuracies it reported."""
    root = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    rows = []
    for i in range(2):
        learn_task(learner, digits_tasks[i], MethodConfig(), TrainOptions(epochs=1))
        rows.append([evaluate(learner, j, digits_tasks[j].test) for j in range(i + 1)])
        save_checkpoint(root, learner, {"accuracy_matrix": [list(r) for r in rows]})
    return root


def flip_one_byte(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return at


def test_every_random_byte_flip_in_the_newest_checkpoint_is_caught_and_the_previous_one_resumes(
        two_checkpoints, tmp_path, digits_tasks):
    rng = random.Random(26)
    reference, reported = load_checkpoint(two_checkpoints / "task-001")
    accuracies = [evaluate(reference, j, digits_tasks[j].test) for j in range(1)]
    assert accuracies == reported["accuracy_matrix"][-1]  # what task-001 reported is what it holds
    files = sorted(p.name for p in (two_checkpoints / "task-002").iterdir())
    assert files == ["learner.json", "shared.safetensors", "task-000.safetensors", "task-001.safetensors"]
    flipped_files = set()
    for trial in range(50):
        root = tmp_path / f"trial-{trial}"
        shutil.copytree(two_checkpoints, root)
        name = rng.choice(files)
        flip_one_byte(root / "task-002" / name, rng)
        flipped_files.add(name)
        seen = []
        folder, learner, state = latest_intact_checkpoint(root, lambda exc, moved: seen.append((exc, moved)))
        assert folder.name == "task-001", f"trial {trial}: a flip in {name} went unnoticed"
        (exc, moved), = seen
        assert exc.path == root / "task-002" / name and exc.expected != exc.actual
        assert moved.name == "task-002.corrupt-0" and not (root / "task-002").exists()
        assert state == reported
        assert [evaluate(learner, 0, digits_tasks[0].test)] == reported["accuracy_matrix"][-1]
        shutil.rmtree(root)
    assert flipped_files == set(files)  # every file of the checkpoint was hit at least once


def test_an_edited_number_in_learner_json_is_refused(two_checkpoints, tmp_path):
    root = shutil.copytree(two_checkpoints, tmp_path / "c")
    meta_path = root / "task-002" / "learner.json"
    meta = json.loads(meta_path.read_text())
    meta["state"]["accuracy_matrix"][-1][-1] = 1.0  # a claim edited in place, written back in the same layout
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    with pytest.raises(CheckpointCorrupt, match="learner.json is corrupt"):
        load_checkpoint(root / "task-002")


def test_a_missing_tensor_file_is_corruption_not_a_crash(two_checkpoints, tmp_path):
    root = shutil.copytree(two_checkpoints, tmp_path / "c")
    (root / "task-002" / "task-001.safetensors").unlink()
    folder, learner, _ = latest_intact_checkpoint(root)
    assert folder.name == "task-001" and len(learner.tasks) == 1


def test_a_format_1_checkpoint_written_before_digests_still_loads(two_checkpoints, tmp_path):
    root = shutil.copytree(two_checkpoints, tmp_path / "c")
    meta_path = root / "task-002" / "learner.json"
    meta = json.loads(meta_path.read_text())
    legacy = {"format": "crossback.checkpoint/1", "learner": meta["learner"], "state": meta["state"]}
    meta_path.write_text(json.dumps(legacy, indent=2) + "\n")
    assert ckpt.is_legacy(root / "task-002")
    learner, state = load_checkpoint(root / "task-002")
    assert len(learner.tasks) == 2 and state == meta["state"]
    upgraded = save_checkpoint(root, learner, state)  # what a node does on resume
    assert not ckpt.is_legacy(upgraded) and load_checkpoint(upgraded)[1] == state


def test_evaluate_names_the_corrupt_file(two_checkpoints, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out / "checkpoints")
    cfg = tiny_node_config(0, [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}],
                           1.0, 5.0)
    cfg.pop("node"), cfg.pop("selection"), cfg.pop("adaptation")
    from crossback.config.run import config_to_dict, parse_config

    (out / "config.json").write_text(json.dumps(config_to_dict(parse_config(cfg, "test"))))
    flip_one_byte(out / "checkpoints" / "task-002" / "shared.safetensors", random.Random(1))
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "evaluate", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "shared.safetensors is corrupt" in proc.stderr and "recorded sha256" in proc.stderr, proc.stderr
    assert (out / "checkpoints" / "task-002").is_dir()  # evaluate only reads: nothing moved


# ---------------------------------------------------------------- a full disk (a private tmpfs)

def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(),
                                 reason="needs a private mount namespace (unshare -m) to make a small tmpfs")

FULL_DISK_SCRIPT = r"""
import errno, os, sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import tiny_config
from crossback.models.learner import ContinualLearner
from crossback.models.persistence import CheckpointWriteError, checkpoints, load_checkpoint, save_checkpoint
root = Path(sys.argv[1]) / "checkpoints"
learner = ContinualLearner(tiny_config(), "image", "packnet")
learner.begin_task("a", 3)
learner.end_task()
first = save_checkpoint(root, learner, {"n": 1})
learner.begin_task("b", 3)
learner.end_task()
filler = Path(sys.argv[1]) / "filler"
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"\0" * 4096)
except OSError as exc:
    assert exc.errno == errno.ENOSPC
os.close(fd)
# free about half of what one checkpoint takes: its first files fit, a later one does not
size = sum(p.stat().st_size for p in first.iterdir())
os.truncate(filler, os.path.getsize(filler) - size // 2)
try:
    save_checkpoint(root, learner, {"n": 2})
    raise SystemExit("the write did not fail")
except CheckpointWriteError as exc:
    assert "No space left on device" in str(exc), exc
assert sorted(p.name for p in root.iterdir()) == ["task-001"], list(root.iterdir())
assert load_checkpoint(first)[1] == {"n": 1}
filler.unlink()
assert load_checkpoint(save_checkpoint(root, learner, {"n": 2}))[1] == {"n": 2}
print("ok")
"""


@needs_tmpfs
def test_enospc_while_writing_leaves_the_previous_checkpoint_intact(tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f'mount -t tmpfs -o size=1m tmpfs "{mnt}" && exec "{sys.executable}" "{script}" "{mnt}" '
                           f'"{Path(__file__).parent}"'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}]


def _node_args(root: Path, node_id: str, state: Path, cfg: dict) -> list[str]:
    path = root / f"{node_id}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path), "--node-id", node_id,
            "--listen", "127.0.0.1:0", "--state-dir", str(state), "--log-dir", str(root / "logs")]


@needs_tmpfs
def test_a_node_whose_disk_fills_keeps_serving_its_last_snapshot_and_retries(tmp_path):
    """The state folder is a 3 MiB tmpfs: task a's checkpoint fits; before task b's is written the test
    fills the disk, so the write fails; the node logs it, still serves snapshot 1, and once space is
    freed the retry writes and publishes snapshot 2."""
    cfg = tiny_node_config(0, TASKS, 0.25, 2.0)
    cfg["train"]["epochs"] = 6  # task b takes long enough for the test to fill the disk first
    state = tmp_path / "state"
    state.mkdir()
    args = _node_args(tmp_path, "full", state, cfg)
    cmd = f'mount -t tmpfs -o size=3m tmpfs "{state}" && exec ' + " ".join(f'"{a}"' for a in args)
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "logs" / "full.jsonl"
    events = lambda name: [e for e in read_events(log) if e["event"] == name]  # noqa: E731
    try:
        wait_for(lambda: events("snapshot_published"), 120, "task a's snapshot", [proc])
        # the node's private mount, seen through its own root
        private = Path(f"/proc/{proc.pid}/root") / str(state).lstrip("/")
        filler = private / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        failed = wait_for(lambda: events("checkpoint_failed"), 120, "a failed checkpoint write", [proc])
        assert "No space left on device" in failed[0]["error"] and failed[0]["serving"] == 1
        address = events("node_started")[0]["address"]
        info = PeerClient(address, "test", CallPolicy(timeout=5.0, attempts=1)).get_info()
        assert info.snapshot_version == 1 and list(info.finished_tasks) == ["a"]
        assert sorted(p.name for p in (private / "checkpoints").iterdir()) == ["task-001"]
        filler.unlink()
        published = wait_for(lambda: [e for e in events("snapshot_published") if e["version"] == 2], 60,
                             "the retried checkpoint's snapshot", [proc])
        assert published[0]["tasks"] == ["a", "b"]
        assert [e["index"] for e in events("task_finished")] == [0, 1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in proc.stderr.read()


def test_leftovers_of_killed_writers_are_removed_and_a_stale_only_copy_is_put_back(two_checkpoints, tmp_path):
    import os

    from crossback.app.train_run import writer_gone
    from crossback.models.persistence import checkpoints, clean_leftovers

    root = shutil.copytree(two_checkpoints, tmp_path / "checkpoints")
    shutil.copytree(root / "task-002", root / ".tmp-task-003-999999")  # never finished
    os.replace(root / "task-002", root / ".stale-task-002-999998")  # killed between the two renames
    shutil.copytree(root / "task-001", root / ".stale-task-001-999997")  # its replacement landed
    shutil.copytree(root / "task-001", root / f".tmp-task-003-{os.getppid()}")  # a live writer's
    done = clean_leftovers(root, writer_gone)
    assert sorted(done) == ["removed .stale-task-001-999997", "removed .tmp-task-003-999999",
                            "restored task-002 from .stale-task-002-999998"]
    assert [p.name for p in checkpoints(root)] == ["task-002", "task-001"]
    load_checkpoint(root / "task-002")  # intact: every digest verifies
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-task-003-{os.getppid()}", "task-001", "task-002"]
    assert clean_leftovers(root) == [f"removed .tmp-task-003-{os.getppid()}"]  # under the lock: every one


def test_a_node_moves_a_corrupt_newest_checkpoint_aside_resumes_from_the_intact_one_and_relearns(tmp_path):
    cfg = {**tiny_node_config(0, TASKS, 0.25, 2.0), "node": {"exit_when_done": True}}
    state = tmp_path / "state"
    args = _node_args(tmp_path, "rot", state, cfg)
    subprocess.run(args, check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "logs" / "rot.jsonl"
    first_run = read_events(log)
    reported = [e["accuracies"] for e in first_run if e["event"] == "task_finished"]
    victim = state / "checkpoints" / "task-002" / "shared.safetensors"
    flip_one_byte(victim, random.Random(3))
    leftover = state / "checkpoints" / ".tmp-task-002-424242"  # what a writer killed mid-write left
    shutil.copytree(state / "checkpoints" / "task-001", leftover)
    subprocess.run(args, check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = read_events(log)[len(first_run):]
    names = [e["event"] for e in second]
    corrupt = next(e for e in second if e["event"] == "checkpoint_corrupt")
    assert corrupt["file"] == str(victim) and corrupt["expected_sha256"] != corrupt["actual_sha256"]
    assert corrupt["moved_to"].endswith("task-002.corrupt-0")
    resumed = next(e for e in second if e["event"] == "resumed")
    assert resumed["checkpoint"].endswith("task-001") and resumed["finished_tasks"] == ["a"]
    # it served snapshot 1 (verified), relearned b, and only then published 2: never the corrupt one
    published = [e["version"] for e in second if e["event"] == "snapshot_published"]
    assert published == [1, 2]
    assert names.index("checkpoint_corrupt") < names.index("snapshot_published")
    assert [e["index"] for e in second if e["event"] == "task_finished"] == [1]
    learner, saved = load_checkpoint(state / "checkpoints" / "task-001")
    assert saved["accuracy_matrix"][-1] == reported[0]
    assert (state / "checkpoints" / "task-002.corrupt-0").is_dir() and (state / "checkpoints" / "task-002").is_dir()
    assert not leftover.exists()
    assert [e["action"] for e in second if e["event"] == "checkpoint_leftover"] == ["removed .tmp-task-002-424242"]


def test_one_node_per_state_folder_and_per_port(tmp_path):
    cfg = tiny_node_config(0, TASKS[:1], 0.25, 2.0)
    first = subprocess.Popen(_node_args(tmp_path, "solo", tmp_path / "state", cfg), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    log = tmp_path / "logs" / "solo.jsonl"
    try:
        started = wait_for(lambda: [e for e in read_events(log) if e["event"] == "node_started"], 60, "solo started",
                           [first])[0]
        port = started["listen"].rpartition(":")[2]
        twin = subprocess.run(_node_args(tmp_path, "solo", tmp_path / "state", cfg), capture_output=True, text=True,
                              timeout=60)
        assert twin.returncode == 2
        assert f"is in use by another crossback node (pid {first.pid})" in twin.stderr, twin.stderr
        args = _node_args(tmp_path, "other", tmp_path / "state-other", cfg)
        args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
        squatter = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert squatter.returncode == 2 and f"cannot listen on 127.0.0.1:{port}: the port is in use" in squatter.stderr
        assert [e["event"] for e in read_events(log)].count("node_started") == 1  # the twin never started
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=30)
    again = subprocess.Popen(_node_args(tmp_path, "solo", tmp_path / "state", {**cfg, "node": {"exit_when_done": True}}),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert again.wait(timeout=120) == 0, again.stderr.read()[-2000:]  # the lock died with its holder
