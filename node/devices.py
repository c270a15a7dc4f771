"""Which torch device a node or a training run uses: ``auto`` prefers CUDA, then MPS, then the CPU."""
from __future__ import annotations

import torch

from crossback.config.errors import ConfigError


def resolve_device(name: str, key: str = "node.device") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{key}: 'mps' requested but Apple MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"{key}: {name!r} is not cuda:N")
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} requested but CUDA is not available here")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} but only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise ConfigError(f"{key}: {name!r} is not auto, cpu, cuda, cuda:N or mps")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
