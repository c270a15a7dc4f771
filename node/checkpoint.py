"""Per-task checkpoints: safetensors + JSON, written atomically, never pickled.

Layout: ``DIR/task-003/`` holds the learner after its third finished task:
``learner.json`` (config, task records, run state), ``shared.safetensors`` (masked weights and owner
index) and ``task-000.safetensors`` ... (per-task tensors and pick masks). A checkpoint is built in a
hidden temporary folder, every file fsynced, then renamed into place, so a crash at any moment leaves
the previous checkpoint as the latest good one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from crossback.models.learner import ContinualLearner

from .errors import CheckpointError  # re-exported: its home for callers

FORMAT = "crossback.checkpoint/1"
NAME = re.compile(r"^task-(\d{3,})$")



def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write(tmp, (json.dumps(payload, indent=2) + "\n").encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(root: Path, learner: ContinualLearner, state: dict) -> Path:
    """Write the learner (and JSON-able run ``state``) as ``root/task-NNN``; returns that folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"task-{len(learner.tasks):03d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write(tmp / "shared.safetensors", st_save(learner.shared_tensors()))
    for t in range(len(learner.tasks)):
        _write(tmp / f"task-{t:03d}.safetensors", st_save(learner.task_tensors(t)))
    meta = {"format": FORMAT, "learner": learner.metadata(), "state": state}
    _write(tmp / "learner.json", (json.dumps(meta, indent=2) + "\n").encode())  # written last: marks complete
    _fsync_dir(tmp)
    if final.exists():  # re-learning the same task count after a partial run: replace the old one
        stale = root / f".stale-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in root.iterdir() if (m := NAME.match(p.name)) and (p / "learner.json").is_file()]
    return max(done)[1] if done else None


def _read_tensors(path: Path) -> dict:
    try:
        return st_load(path.read_bytes())
    except (OSError, Exception) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def load_checkpoint(folder: Path) -> tuple[ContinualLearner, dict]:
    """The learner stored in ``folder`` and the run state saved with it."""
    meta_path = folder / "learner.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {meta_path}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    shared = _read_tensors(folder / "shared.safetensors")
    per_task = [_read_tensors(folder / f"task-{t:03d}.safetensors") for t in range(len(meta["learner"]["tasks"]))]
    try:
        learner = ContinualLearner.from_tensors(meta["learner"], shared, per_task)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: checkpoint does not fit its own config: {exc}") from exc
    return learner, meta.get("state", {})
