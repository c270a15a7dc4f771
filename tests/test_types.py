"""A type checker over the selection pipeline and the transfer strategies: the typed messages, the
PeerApi protocol, TaskAtHand, Candidate and Arm are checked where they are used, not only declared."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("crossback.orchestrator_free", "crossback.transfer")


def test_selection_and_transfer_packages_type_check(tmp_path):
    (tmp_path / "crossback").symlink_to(ROOT)  # the repository is the crossback package
    args = [a for pkg in CHECKED for a in ("-p", pkg)]
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / "cache"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success" in proc.stdout
