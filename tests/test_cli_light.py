"""`crossback health`, `peers` and `status` are container health checks on busy devices: they must not
import torch (2+ s on an idle host, past Docker's 5 s timeout on a loaded 1-CPU container)."""
import subprocess
import sys

import pytest

PROBE = """
import sys
from crossback.node.cli import main
rc = main([{args}])
heavy = sorted(m for m in ("torch", "numpy", "transformers", "safetensors", "scipy") if m in sys.modules)
print(rc, heavy)
"""


@pytest.mark.parametrize("command", ["health", "peers", "status"])
def test_probe_commands_import_nothing_heavy(command):
    args = ", ".join(repr(a) for a in (command, "--target", "127.0.0.1:1", "--timeout", "0.5"))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rc, heavy = proc.stdout.strip().split(" ", 1)
    assert rc == "3" and "UNAVAILABLE" in proc.stderr  # it really dialled (nothing listens on port 1)
    assert heavy == "[]", f"{command} imported {heavy}"
