"""Keeping a node's resident memory near what it uses (glibc only; a no-op elsewhere).

glibc gives each thread that allocates an arena of its own and keeps freed memory in it: a node whose
expensive calls ran on six worker threads held six calls' worth of activations long after they
finished. Two arenas, and a trim a quiet second after the expensive work drains (not in the request
path: the calls after a trim pay for fresh pages), keep the high-water mark near the memory budget
(limits.CallLimits.memory_mib)."""
from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def limit_arenas(count: int = 2) -> bool:
    """Cap malloc arenas (call before worker threads start); True where it took effect."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, count) == 1)


def trim() -> None:
    """Hand freed heap memory back to the operating system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
