"""The distribution installs one namespace, crossback.<folder>, and its console script."""
import shutil
import subprocess
import sys

import pytest

FOLDERS = ("proto", "models", "data", "node", "orchestrator_free", "transfer")


def run_elsewhere(code: str, tmp_path) -> subprocess.CompletedProcess:
    # run outside the repository so the source folders are not importable by accident
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_is_a_crossback_subpackage_and_not_top_level(folder, tmp_path):
    proc = run_elsewhere(
        "import importlib, importlib.util\n"
        f"m = importlib.import_module('crossback.{folder}')\n"
        f"print(importlib.util.find_spec('{folder}') is None)\n", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True", f"a bare top-level '{folder}' module is importable"


def test_bundled_emoji_ships_with_the_package(tmp_path):
    proc = run_elsewhere("from crossback.data.bundled_sources import EMOJI_FILE; print(EMOJI_FILE.is_file())", tmp_path)
    assert proc.stdout.strip() == "True", proc.stderr


def test_console_script_is_installed():
    exe = shutil.which("crossback")
    assert exe is not None
    proc = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--config" in proc.stdout
