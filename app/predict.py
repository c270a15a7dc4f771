"""`crossback predict`: classify new images or strings with what a node (or a `crossback train` run)
learned.

The task's model is its checkpoint's folded form (``crossback.models.fold``): masks computed once into
plain weights, the same outputs as the learner. The checkpoint is verified before use (it carries
digests, ``.checkpoint``), and inputs are preprocessed by the very functions training used
(``crossback.data.tasks.load_image`` / ``image_inputs`` / ``text_inputs``), so a test item predicted
from its file gets the logits ``crossback evaluate`` scored it with.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from crossback.app.train_run import load_run
from crossback.config.data import View
from crossback.config.errors import ConfigError
from crossback.data.tasks import image_inputs, load_image, text_inputs
from crossback.models.inference import Prediction, TaskModel, task_model
from crossback.node.devices import resolve_device

MAX_TEXT_CHARS = 1 << 16  # a string longer than this is refused, not truncated silently


def load_task_model(folder: Path, task: str, device: str = "cpu") -> TaskModel:
    """Task ``task`` of the run or state folder ``folder`` (config.json beside checkpoints/), folded and
    on ``device``; ConfigError naming the known tasks when it has not finished that one."""
    cfg, latest, learner, _ = load_run(folder)  # every byte of the checkpoint verified against its digests
    names = [t.name for t in learner.tasks]
    if task not in names:
        raise ConfigError(f"--task: {folder} has no finished task {task!r}; its finished tasks: {names}")
    return task_model(learner, names.index(task), cfg.view(), resolve_device(device, "--device"), latest)


def encode(values: list[str], view: View) -> Tensor:
    """Image file paths (image tasks) or strings (text tasks) as the model's inputs, preprocessed
    exactly as in training."""
    if view.modality == "image":
        return image_inputs([load_image(Path(v), view) for v in values], view)
    for i, text in enumerate(values):
        if len(text) > MAX_TEXT_CHARS:
            raise ConfigError(f"input {i}: a string of {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text_inputs(values, view)


def read_text_file(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--text-file: cannot read {path}: {exc}") from None
    return [line for line in lines if line.strip()]


def report(values: list[str], predictions: list[Prediction], as_json: bool) -> str:
    if as_json:
        return json.dumps([{"input": v, "label": p.label,
                            "top": [{"class": c, "probability": round(q, 6)} for c, q in p.top]}
                           for v, p in zip(values, predictions)], indent=2)
    rows = []
    for v, p in zip(values, predictions):
        shown = v if len(v) <= 60 else v[:57] + "..."
        rows.append(f"{shown}\t{p.label}\t" + ", ".join(f"{c} {q:.3f}" for c, q in p.top))
    return "\n".join(rows)
