"""A classification result, in a module without torch (the light `crossback predict --target` path)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    label: str
    top: list[tuple[str, float]]  # (class, probability), most probable first
