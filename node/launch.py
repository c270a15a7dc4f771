"""What a process that starts node processes asks of each child before exec."""
from __future__ import annotations

import os
import signal
import sys


def die_with_parent(launcher: int, sig: int = signal.SIGTERM) -> None:
    """In the child, before exec: ask Linux to send ``sig`` when the launcher dies, even by SIGKILL (a node
    in its own session would otherwise be orphaned and keep its port). Elsewhere: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != launcher:  # the launcher died between fork and prctl
        os.kill(os.getpid(), sig)
