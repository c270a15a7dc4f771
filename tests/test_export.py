"""`crossback export`: a finished task's folded model as ONNX (run here in ONNX Runtime) and TorchScript
(run in torch), each matching the eager folded model within 1e-4 with the same argmax, for an image
and a text task, PackNet, Piggyback and CPG with a grown feed-forward width."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crossback.config.run import parse_config
from crossback.app.predict import load_task_model
from crossback.data.prepare import prepare_tasks
from crossback.app.train_run import run_training

TINY = {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16, "latent_heads": 2,
        "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}, "text": {"max_length": 40}}
DIGITS = {"source": "digits", "modality": "image", "image_size": 8}
EMOJI_TEXT = {"source": "emoji", "modality": "text"}
CPG = {"name": "cpg", "cpg": {"accuracy_goal": 0.99, "max_grow": 1, "grow_epochs": 1, "step_epochs": 1, "tolerance": 1.0}}
RUNS = {
    "image-packnet": (DIGITS, {"name": "packnet"}, [["0", "1", "2"], ["3", "4", "5"]]),
    "image-cpg": (DIGITS, CPG, [["0", "1", "2"], ["3", "4", "5"]]),
    "text-piggyback": (EMOJI_TEXT, {"name": "piggyback"}, [["animal-mammal", "drink", "tool"]]),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, tmp_path_factory):
    data, method, classes = RUNS[request.param]
    cfg = {"seed": 0, "data": data, "model": TINY, "method": method, "train": {"epochs": 2, "batch_size": 64},
           "tasks": [{"name": f"t{i}", "classes": c} for i, c in enumerate(classes)]}
    parsed = parse_config(cfg, "test")
    folder = tmp_path_factory.mktemp(request.param)
    run_training(parsed, folder, progress=False, log=lambda *_: None)
    task = len(classes) - 1
    return request.param, folder, f"t{task}", prepare_tasks(parsed)[0][task].test


def export(folder, task, fmt, out, process: bool = False):
    """`crossback export` as a process (``process``) or through the same entry point in this one."""
    args = ["export", "--state", str(folder), "--task", task, "--format", fmt, "--out", str(out)]
    if process:
        proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", *args], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        from crossback.app.cli import main

        assert main(args) == 0
    return json.loads(out.with_name(out.name + ".json").read_text())


def test_onnx_and_torchscript_match_the_eager_folded_model(run, tmp_path):
    name, folder, task, test = run
    tm = load_task_model(folder, task)
    inputs = test.inputs[:37]  # a batch size the export never saw: the batch dimension is dynamic
    with torch.no_grad():
        eager = tm.model(inputs).numpy()
    meta = export(folder, task, "onnx", tmp_path / "m.onnx", process=name == "image-packnet")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"inputs": inputs.numpy()})
    assert np.abs(logits - eager).max() <= 1e-4 and (logits.argmax(1) == eager.argmax(1)).all()
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["crossback"]) == meta and meta["classes"] == tm.classes and meta["task"] == task
    export(folder, task, "torchscript", tmp_path / "m.pt")
    files = {"crossback.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    with torch.no_grad():
        traced = scripted(inputs).numpy()
    assert np.abs(traced - eager).max() <= 1e-4 and (traced.argmax(1) == eager.argmax(1)).all()
    assert json.loads(files["crossback.json"]) == meta
    if name == "image-cpg":  # the CPG run grew: the exported task runs the wider feed-forward
        learner_meta = json.loads(sorted((folder / "checkpoints").iterdir())[-1].joinpath("learner.json").read_text())
        widths = [t["ff_widths"] for t in learner_meta["learner"]["tasks"]]
        assert widths[-1] != widths[0], widths


def test_export_refuses_an_unknown_task_and_format(run, tmp_path):
    _, folder, _, _ = run
    import contextlib
    import io

    from crossback.app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", "--state", str(folder), "--task", "nope", "--format", "onnx", "--out",
                     str(tmp_path / "x.onnx")])
    assert code == 2 and "no finished task 'nope'" in err.getvalue()
