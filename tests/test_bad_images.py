"""A bad image file (a decompression bomb, truncated, unreadable, not an image) stops `crossback predict`,
`train` and `evaluate` with exit status 2 and one line that names the file and says why: no traceback."""
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from test_predict import TINY_MODEL, bomb_png, cli

CLASSES = ["c0", "c1", "c2"]


def good_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 12), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, "PNG")
    return out.getvalue()


BAD = {  # name: (file bytes, or None for a folder; words the error must carry)
    "bomb": (bomb_png(12_000, 12_000), "declares 12000 x 12000 pixels"),
    "pillow_bomb": (bomb_png(30_000, 30_000), "decompression bomb"),
    "truncated": (good_png(0)[:60], "cannot be decoded"),
    "not_an_image": (b"hello, I am a text file\n", "not an image file"),
    "a_folder": (None, "is a directory"),
}


def write_bad(path: Path, kind: str) -> Path:
    data, _ = BAD[kind]
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    return path


def make_dataset(root: Path, per_class: int = 12) -> Path:
    for c, cls in enumerate(CLASSES):
        folder = root / "all" / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i:02d}.png").write_bytes(good_png(100 * c + i))
    return root


def run_config(path: Path, data_root: Path) -> Path:
    cfg = {"seed": 0, "data": {"source": "folder", "root": str(data_root), "modality": "image", "image_size": 8},
           "tasks": [{"name": "t", "classes": CLASSES}], "model": TINY_MODEL,
           "method": {"name": "packnet"}, "train": {"epochs": 1, "batch_size": 16}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_clear_line(proc, path: Path, kind: str) -> None:
    words = BAD[kind][1]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-images")
    data = make_dataset(root / "data")
    out = root / "run"
    proc = cli("train", "--config", run_config(root / "run.yaml", data), "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return root, data, out


@pytest.mark.parametrize("kind", sorted(BAD))
def test_predict_names_a_bad_file_and_why(folder_run, tmp_path, kind):
    _, _, run = folder_run
    bad = write_bad(tmp_path / "x.png", kind)
    one_clear_line(cli("predict", "--state", run, "--task", "t", bad), bad, kind)


def test_predict_on_a_bomb_as_a_user_runs_it(folder_run, tmp_path):
    _, _, run = folder_run
    bad = write_bad(tmp_path / "bomb.png", "pillow_bomb")
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "predict", "--state", str(run), "--task", "t",
                           str(bad)], capture_output=True, text=True, timeout=120)
    one_clear_line(proc, bad, "pillow_bomb")


@pytest.mark.parametrize("kind", ["bomb", "truncated", "not_an_image"])
def test_train_names_a_bad_file_and_why(folder_run, tmp_path, kind):
    _, data, _ = folder_run
    copy = shutil.copytree(data, tmp_path / "data")
    bad = write_bad(copy / "all" / "c1" / "05.png", kind)  # one item of the dataset replaced
    proc = cli("train", "--config", run_config(tmp_path / "run.yaml", copy), "--out", tmp_path / "run", "--no-progress")
    one_clear_line(proc, bad, kind)


def test_evaluate_names_a_file_that_went_bad_after_training(folder_run, tmp_path):
    root, data, run = folder_run
    copy = shutil.copytree(run, tmp_path / "run")
    broken = shutil.copytree(data, tmp_path / "data")
    for path in sorted((broken / "all").rglob("*.png")):  # every item: whichever the test split reads first
        path.write_bytes(BAD["truncated"][0])
    config = copy / "config.json"
    config.write_text(config.read_text().replace(str(data), str(broken)))
    proc = cli("evaluate", copy)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "cannot be decoded" in lines[0], proc.stderr
