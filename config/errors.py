"""The errors crossback reports by name, in a module that imports nothing heavy: `crossback health`,
`peers` and `status` must answer fast on a loaded device, so they never import torch."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem; the message names the file and the dotted key."""


class DataError(ValueError):
    """Bad or missing data: the message names the file, class or key at fault."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match what it claims."""


class StateInUse(RuntimeError):
    """Another live process holds the node's state folder (or port)."""


class WireError(ValueError):
    """A malformed payload from a peer. ``status`` is the gRPC status name the server answers with."""

    def __init__(self, message: str, status: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.status = status


class PeerCallError(Exception):
    """A call to a peer that failed: ``status`` names the status code (e.g. ``UNAVAILABLE``), ``detail``
    the peer's or the transport's reason. The transport raises it; the layers above never see gRPC."""

    @property
    def status(self) -> str:
        raise NotImplementedError

    @property
    def detail(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"
