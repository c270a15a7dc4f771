"""`crossback train` / `crossback evaluate` as a user runs them: real processes, real files."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossback.models import persistence as ckpt
from crossback.models.persistence import latest_checkpoint, load_checkpoint, save_checkpoint

TINY_MODEL = {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16,
              "latent_heads": 2, "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}}
TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]},
         {"name": "c", "classes": ["6", "7", "8"]}]


def write_config(path: Path, tasks=TASKS, method="packnet", epochs=3, **extra) -> Path:
    cfg = {"seed": 0, "data": {"source": "digits", "modality": "image", "image_size": 8}, "tasks": tasks,
           "model": TINY_MODEL, "method": {"name": method}, "train": {"epochs": epochs, "batch_size": 64}}
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def crossback(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"crossback {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_writes_metrics_and_checkpoints_that_reproduce(tmp_path):
    out = tmp_path / "run"
    crossback("train", "--config", write_config(tmp_path / "c.yaml"), "--out", out, "--no-progress")
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "packnet" and m["modality"] == "image"
    assert [t["name"] for t in m["tasks"]] == ["a", "b", "c"] and all(t["num_classes"] == 3 for t in m["tasks"])
    R = m["accuracy_matrix"]
    assert len(R) == 3 and R[0][1] is None and all(isinstance(x, float) for x in R[2])
    for j in range(3):  # PackNet: each column constant below the diagonal
        assert len({R[i][j] for i in range(j, 3)}) == 1
    assert m["bwt"] == 0.0 and m["forgetting"] == 0.0 and m["seconds"] > 0
    assert all(1 / 3 <= maj < 1 for maj in m["majority"]) and m["warnings"] == []  # digits test splits hold ~100
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["task-001", "task-002", "task-003"]
    assert {p.name for p in (out / "checkpoints" / "task-003").iterdir()} == {
        "learner.json", "shared.safetensors", "task-000.safetensors", "task-001.safetensors", "task-002.safetensors"}
    ev = crossback("evaluate", out)
    assert ev.stdout.count(" ok") == 3 and "MISMATCH" not in ev.stdout


def test_rerun_resumes_after_the_last_finished_task(tmp_path):
    out = tmp_path / "run"
    crossback("train", "--config", write_config(tmp_path / "two.yaml", TASKS[:2]), "--out", out, "--no-progress")
    first = json.loads((out / "metrics.json").read_text())
    kept = tree_digest(out / "checkpoints" / "task-002")
    proc = crossback("train", "--config", write_config(tmp_path / "three.yaml"), "--out", out, "--no-progress")
    assert "resuming from" in proc.stderr and "2 finished task(s)" in proc.stderr
    assert "task 1/3" not in proc.stderr and "task 3/3" in proc.stderr
    final = json.loads((out / "metrics.json").read_text())
    assert final["accuracy_matrix"][:2] == [r + [None] for r in first["accuracy_matrix"]]
    assert tree_digest(out / "checkpoints" / "task-002") == kept


def test_changed_settings_refuse_to_resume(tmp_path):
    out = tmp_path / "run"
    crossback("train", "--config", write_config(tmp_path / "a.yaml", TASKS[:1]), "--out", out, "--no-progress")
    proc = crossback("train", "--config", write_config(tmp_path / "b.yaml", TASKS[:1], epochs=4), "--out", out, check=False)
    assert proc.returncode != 0 and "different settings (train)" in proc.stderr


def test_an_interrupted_first_run_does_not_lock_its_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"seed": 0, "tasks": [{"name": "old"}], "train": {"epochs": 99}}))
    proc = crossback("train", "--config", write_config(tmp_path / "a.yaml", TASKS[:1]), "--out", out, "--no-progress")
    assert proc.returncode == 0 and json.loads((out / "config.json").read_text())["tasks"][0]["name"] == "a"


def test_a_tiny_test_split_is_warned_about(tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", [{"name": "a", "classes": ["0", "1"]}])
    data = yaml.safe_load(cfg.read_text())
    data["data"]["split"] = {"max_items_per_class": 20}  # 4 test items per class
    cfg.write_text(yaml.safe_dump(data))
    proc = crossback("train", "--config", cfg, "--out", tmp_path / "run", "--no-progress")
    assert "warning: task 'a': its test split has only 8 samples" in proc.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["train"].update(epocs=3), "unknown key 'train.epocs'"),
    (lambda c: c["tasks"].append({"name": "d", "classes": ["9", "ten"]}), "unknown class 'ten'"),
    (lambda c: c["tasks"].append({"name": "digitz"}), "unknown superclass 'digitz'"),
])
def test_bad_input_exits_nonzero_and_leaves_the_checkpoint_untouched(tmp_path, mutate, needle):
    out = tmp_path / "run"
    good = write_config(tmp_path / "good.yaml", TASKS[:1])
    crossback("train", "--config", good, "--out", out, "--no-progress")
    before = tree_digest(out)
    cfg = yaml.safe_load(good.read_text())
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = crossback("train", "--config", bad, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert tree_digest(out) == before


def test_missing_dataset_root_is_named(tmp_path):
    config = write_config(tmp_path / "c.yaml", data={"source": "folder", "modality": "image", "root": "/nonexistent/data"})
    proc = crossback("train", "--config", config, "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2 and "data.root /nonexistent/data does not exist" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_sigkill_mid_run_then_restart_finishes_the_sequence(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", epochs=40)
    proc = subprocess.Popen([sys.executable, "-m", "crossback.app.cli", "train", "--config", str(config),
                             "--out", str(out), "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while latest_checkpoint(out / "checkpoints") is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = latest_checkpoint(out / "checkpoints")
    assert done is not None, "no checkpoint was written before the kill"
    learner, _ = load_checkpoint(done)  # whatever was latest is complete and loadable
    resumed = crossback("train", "--config", config, "--out", out, "--no-progress")
    assert f"{len(learner.tasks)} finished task(s)" in resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["finished_tasks"] == 3


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, digits_tasks):
    from crossback.models.learner import ContinualLearner
    from crossback.config.model import MethodConfig
    from crossback.models.methods import learn_task
    from crossback.config.model import TrainOptions

    from conftest import tiny_config

    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learn_task(learner, digits_tasks[0], MethodConfig(), TrainOptions(epochs=1))
    root = tmp_path / "checkpoints"
    save_checkpoint(root, learner, {"accuracy_matrix": [[0.5]]})
    learn_task(learner, digits_tasks[1], MethodConfig(), TrainOptions(epochs=1))
    real_write, calls = ckpt._write, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk yanked")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write", dying_write)
    with pytest.raises(ckpt.CheckpointWriteError, match="disk yanked"):
        save_checkpoint(root, learner, {"accuracy_matrix": [[0.5], [0.5, 0.6]]})
    assert [p.name for p in root.iterdir()] == ["task-001"]  # no temporary folder left behind
    latest = latest_checkpoint(root)
    assert latest.name == "task-001"
    restored, state = load_checkpoint(latest)
    assert len(restored.tasks) == 1 and state == {"accuracy_matrix": [[0.5]]}
