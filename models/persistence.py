"""Per-task checkpoints: safetensors + JSON, written atomically, verified on every load, never pickled.

Layout: ``DIR/task-003/`` holds the learner after its third finished task:
``learner.json`` (config, task records, run state), ``shared.safetensors`` (masked weights and owner
index) and ``task-000.safetensors`` ... (per-task tensors and pick masks). A checkpoint is built in a
hidden temporary folder, every file fsynced, then renamed into place, so a crash at any moment leaves
the previous checkpoint as the latest good one; a write that fails (a full disk) removes its temporary
folder and leaves the previous checkpoints as they were.

Integrity: ``learner.json`` records the SHA-256 and size of every tensor file, and the SHA-256 of its
own content, so a torn write or bit rot anywhere in a checkpoint fails the load (``CheckpointCorrupt``,
naming the file and both digests) instead of being trained on or served. safetensors alone checks its
header, not its data. Format 1 folders (written before digests existed) still load, unverified.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from crossback.config.errors import CheckpointError
from crossback.models.learner import ContinualLearner
from crossback.models.serialise import learner_from_tensors, learner_metadata, shared_tensors, task_tensors

FORMAT = "crossback.checkpoint/2"
LEGACY_FORMATS = ("crossback.checkpoint/1",)  # no digests: loaded unverified
NAME = re.compile(r"^task-(\d{3,})$")
META = "learner.json"


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file whose bytes are not the ones written: ``path``, the digest recorded at write
    time and the digest of what is on disk now."""

    def __init__(self, path: Path, expected: str, actual: str, detail: str = ""):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"{path} is corrupt: {detail or 'its content changed since it was written'} "
                         f"(recorded sha256 {expected}, found {actual})")


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (a full disk, a read-only mount); nothing was replaced."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


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


def write_json_atomic(path: Path, payload: dict | list) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write(tmp, (json.dumps(payload, indent=2) + "\n").encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(root: Path, learner: ContinualLearner, state: dict) -> Path:
    """Write the learner (and JSON-able run ``state``) as ``root/task-NNN``; returns that folder.
    CheckpointWriteError when the disk refuses (the older checkpoints are untouched)."""
    root = Path(root)
    final = root / f"task-{len(learner.tasks):03d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        files = {"shared.safetensors": st_save(shared_tensors(learner))}
        for t in range(len(learner.tasks)):
            files[f"task-{t:03d}.safetensors"] = st_save(task_tensors(learner, t))
        for name, data in files.items():
            _write(tmp / name, data)
        meta = {"format": FORMAT, "learner": learner_metadata(learner), "state": state,
                "files": {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()}}
        meta["meta_sha256"] = _meta_digest(meta)
        _write(tmp / META, _meta_bytes(meta))  # written last: marks complete
        _fsync_dir(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"cannot write checkpoint {final}: {exc.strerror or exc}; "
                                   f"the previous checkpoints in {root} are unchanged") from exc
    if final.exists():  # re-learning the same task count after a partial run: replace the old one
        stale = root / f".stale-{final.name}-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    return final


LEFTOVER = re.compile(r"^\.(tmp|stale)-(task-\d{3,})-(\d+)$")


def clean_leftovers(root: Path, writer_gone: Callable[[int], bool] = lambda pid: True) -> list[str]:
    """Remove what killed writers left under ``root`` (``.tmp-task-NNN-<pid>`` folders never finished,
    ``.stale-task-NNN-<pid>`` ones already replaced) when ``writer_gone(pid)``; names of what was done.
    A stale folder whose replacement never landed (killed between the two renames) is put back, not
    removed: it is the only copy of that checkpoint. Call it where no other writer can be running
    (under the state lock), or with a ``writer_gone`` that says which writers are dead."""
    root = Path(root)
    done = []
    if not root.is_dir():
        return done
    for path in sorted(root.iterdir()):
        m = LEFTOVER.match(path.name)
        if not m or not path.is_dir() or not writer_gone(int(m.group(3))):
            continue
        final = root / m.group(2)
        if m.group(1) == "stale" and not final.exists():
            os.replace(path, final)
            done.append(f"restored {final.name} from {path.name}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}")
    if done:
        _fsync_dir(root)
    return done


def checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders under ``root``, newest first (not yet verified)."""
    if not Path(root).is_dir():
        return []
    done = [(int(m.group(1)), p) for p in Path(root).iterdir() if (m := NAME.match(p.name)) and (p / META).is_file()]
    return [p for _, p in sorted(done, reverse=True)]


def latest_checkpoint(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[0] if found else None


def quarantine(folder: Path) -> Path:
    """Move a corrupt checkpoint aside (kept for inspection, never loaded again); returns where."""
    for n in range(1000):
        target = folder.with_name(f"{folder.name}.corrupt-{n}")
        if not target.exists():
            os.replace(folder, target)
            _fsync_dir(folder.parent)
            return target
    raise CheckpointError(f"{folder.parent} holds 1000 quarantined copies of {folder.name}; clean them up")


def latest_intact_checkpoint(root: Path, on_corrupt: Callable[[CheckpointCorrupt, Path], None] | None = None
                             ) -> tuple[Path, ContinualLearner, dict] | None:
    """(folder, learner, state) of the newest checkpoint that verifies, or None. Every newer one that
    does not is quarantined and reported to ``on_corrupt(error, where it was moved)``; older ones are
    never touched, so relearning from the intact one loses nothing it held."""
    for folder in checkpoints(root):
        try:
            learner, state = load_checkpoint(folder)
        except CheckpointCorrupt as exc:
            moved = quarantine(folder)
            if on_corrupt is not None:
                on_corrupt(exc, moved)
            continue
        return folder, learner, state
    return None


def _read(path: Path, record: dict | None) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        if record is not None and (isinstance(exc, FileNotFoundError) or exc.errno == errno.EIO):
            raise CheckpointCorrupt(path, str(record.get("sha256")), "(unreadable)", exc.strerror or str(exc)) from exc
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if record is not None:
        actual = sha256(data)
        if actual != record.get("sha256"):
            size = "" if len(data) == record.get("bytes") else f"{len(data)} bytes where {record.get('bytes')} were written"
            raise CheckpointCorrupt(path, str(record.get("sha256")), actual, size)
    return data


def _read_tensors(path: Path, record: dict | None) -> dict:
    data = _read(path, record)
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _meta_bytes(meta: dict) -> bytes:
    return (json.dumps(meta, indent=2) + "\n").encode()


def _read_meta(folder: Path) -> dict:
    meta_path = folder / META
    try:
        raw = meta_path.read_bytes()
        meta = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read {meta_path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # learner.json is the last file written: unreadable JSON in a renamed folder is damage, not a torn write
        raise CheckpointCorrupt(meta_path, "(valid JSON)", sha256(raw), f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointCorrupt(meta_path, "(a JSON object)", sha256(raw))
    fmt = meta.get("format")
    if fmt in LEGACY_FORMATS:
        return meta
    if fmt != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown checkpoint format {str(fmt)[:64]!r}, expected {FORMAT}")
    # the digest covers the content; the bytes must also be exactly how that content is written, so a
    # change that keeps the JSON's meaning (a flipped space) is caught as well
    if _meta_digest(meta) != meta.get("meta_sha256") or raw != _meta_bytes(meta) \
            or not isinstance(meta.get("files"), dict):
        raise CheckpointCorrupt(meta_path, str(meta.get("meta_sha256"))[:64], _meta_digest(meta))
    return meta


def is_legacy(folder: Path) -> bool:
    """Whether ``folder`` was written in a format without digests (it loads unverified)."""
    return _read_meta(folder).get("format") in LEGACY_FORMATS


def load_checkpoint(folder: Path) -> tuple[ContinualLearner, dict]:
    """The learner stored in ``folder`` and the run state saved with it, every byte verified against
    the digests recorded when it was written (CheckpointCorrupt names the file that differs)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    files = meta.get("files")
    try:
        count = len(meta["learner"]["tasks"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / META}: no learner.tasks ({exc})") from exc

    def tensors(name: str) -> dict:
        if files is not None and name not in files:
            raise CheckpointCorrupt(folder / name, "(no digest recorded)", "(a file the checkpoint does not list)")
        return _read_tensors(folder / name, files[name] if files is not None else None)

    shared = tensors("shared.safetensors")
    per_task = [tensors(f"task-{t:03d}.safetensors") for t in range(count)]
    try:
        learner = learner_from_tensors(meta["learner"], shared, per_task)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: checkpoint does not fit its own config: {exc}") from exc
    return learner, meta.get("state", {})
