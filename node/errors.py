"""Errors the CLI reports by name, in a module that imports nothing heavy: `crossback health`,
`peers` and `status` must answer fast on a loaded device, so they never import torch."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config problem; the message names the file and the dotted key."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match what it claims."""


class StateInUse(RuntimeError):
    """Another live process holds the node's state folder (or port)."""
