"""One node per state folder: an exclusive advisory lock held for the node process's lifetime.

``flock`` is released by the kernel when the process dies however it dies, so a crash never leaves a
stale lock behind; the holder's pid is written into the lock file only to name it in the refusal.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from crossback.config.errors import StateInUse

LOCK_FILE = "node.lock"


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateInUse(f"state dir {self.path.parent} is in use by another crossback node (pid {holder}); "
                             "stop it first, or give this node its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
