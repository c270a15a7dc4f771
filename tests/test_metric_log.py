"""A run's curves and continual-learning metrics as CSV and TensorBoard event files, under Avalanche's
names, read back with TensorBoard's own reader and checked against metrics.json."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from crossback.app.train_run import run_training
from crossback.config.errors import ConfigError
from crossback.config.run import parse_config
from crossback.models.metric_log import MetricLog, eval_rows, selection_rows

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]},
         {"name": "c", "classes": ["6", "7"]}]


def config(tasks: list[dict], tmp: Path):
    return parse_config({
        "seed": 0, "data": {"source": "digits", "modality": "image", "image_size": 8}, "tasks": tasks,
        "model": {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16,
                  "latent_heads": 2, "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}},
        "method": {"name": "packnet", "packnet": {"retrain_epochs": 1}}, "train": {"epochs": 2, "batch_size": 64},
        "eval": {"scratch_baseline": True}}, "test", tmp)


def read_csv(path: Path) -> list[tuple]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ("metric", "training_exp", "epoch", "value")
    return [(m, int(e), int(ep) if ep else None, float(v)) for m, e, ep, v in rows[1:]]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_eval_rows_follow_the_accuracy_matrix_by_hand():
    R = [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.75, 0.5]]
    rows = {name: value for name, exp, _, value in eval_rows(R, [0.9, 0.65, 0.6]) if exp == 2}
    stream = "eval_phase/test_stream"
    assert rows[f"Top1_Acc_Exp/{stream}/Task001/Exp001"] == 0.75
    assert rows[f"Top1_Acc_Stream/{stream}"] == pytest.approx((0.6 + 0.75 + 0.5) / 3)
    assert rows[f"StreamBWT/{stream}"] == pytest.approx(-0.125)
    assert rows[f"StreamForgetting/{stream}"] == pytest.approx(0.125)
    assert rows[f"StreamForwardTransfer/{stream}"] == pytest.approx(-0.025)
    assert rows[f"ExperienceForgetting/{stream}/Task000/Exp000"] == pytest.approx(0.3)
    assert rows[f"ExperienceBWT/{stream}/Task001/Exp001"] == pytest.approx(0.05)
    first = [name for name, exp, _, _ in eval_rows(R[:1]) if exp == 0]
    assert first == [f"Top1_Acc_Exp/{stream}/Task000/Exp000", f"Top1_Acc_Stream/{stream}"]  # nothing to forget yet


def test_a_selection_logs_every_scored_candidate_and_every_arm():
    rows = selection_rows(2, {"candidates": [{"peer": "img-1", "scores": {"ddv": 0.4, "logme": float("nan")}},
                                             {"peer": "txt-0", "scores": {"ddv": 0.1}}],
                              "accuracy": {"none": 0.5, "selected": 0.6}})
    assert rows == [("Selection/ddv/img-1", 2, None, 0.4), ("Selection/ddv/txt-0", 2, None, 0.1),
                    ("Transfer/Top1_Acc/none", 2, None, 0.5), ("Transfer/Top1_Acc/selected", 2, None, 0.6)]


def test_train_writes_the_curves_and_the_matrix_to_csv_and_tensorboard_and_resumes_them(tmp_path):
    out, board = tmp_path / "run", tmp_path / "board"
    run_training(config(TASKS[:2], tmp_path), out, progress=False, log=lambda _: None, tensorboard=board)
    metrics = run_training(config(TASKS, tmp_path), out, progress=False, log=lambda _: None, tensorboard=board)
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == len(set(rows))  # the resumed run rewrote, not repeated, what was logged
    stream = "eval_phase/test_stream"
    matrix = metrics["accuracy_matrix"]
    for i in range(3):
        for j in range(i + 1):
            (value,) = [v for m, e, _, v in rows if m == f"Top1_Acc_Exp/{stream}/Task{j:03d}/Exp{j:03d}" and e == i]
            assert value == matrix[i][j]
    last = {m: v for m, e, _, v in rows if e == 2 and m.startswith("Stream")}
    assert last[f"StreamBWT/{stream}"] == pytest.approx(metrics["bwt"])
    assert last[f"StreamForgetting/{stream}"] == pytest.approx(metrics["forgetting"])
    assert last[f"StreamForwardTransfer/{stream}"] == pytest.approx(metrics["forward_transfer"])
    epochs = [ep for m, _, ep, _ in rows if m.startswith("Loss_Epoch")]
    assert epochs == list(range(1, 3 * (2 + 1) + 1))  # 2 epochs + 1 retrain per task, numbered across tasks
    read = scalars(board)
    for name, exp, epoch, value in rows:  # every CSV row is in the event files, at its step
        assert (epoch if epoch is not None else exp, pytest.approx(value, rel=1e-6)) in read[name], name
    assert sum(len(v) for v in read.values()) == len(rows)
    acc = EventAccumulator(str(board), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("accuracy_matrix/text_summary")[-1]
    assert text.step == 2 and f"{matrix[2][1]:.4f}" in text.tensor_proto.string_val[0].decode()
    assert json.loads((out / "metrics.json").read_text())["finished_tasks"] == 3


def test_tensorboard_without_its_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"--tensorboard .*board: needs the tensorboard package"):
        MetricLog(None, tmp_path / "board")
