"""Declared bounds of config fields: the dataclass that holds a setting also states its valid range.

``bounded(default, ge=..., gt=..., le=..., lt=..., choices=...)`` is a dataclass ``field`` whose
metadata the config loader checks (naming the key path), and ``check_bounds`` applies the same rules to
an instance that did not come from a file (a probe spec off the wire). Every float must be finite.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BOUNDS = "crossback.bounds"


@dataclass(frozen=True)
class Bounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        if value is None or isinstance(value, bool):
            return None
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {list(self.choices)}"
        if not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a finite number"
        for op, bound, ok in (("at least", self.ge, lambda v, b: v >= b), ("greater than", self.gt, lambda v, b: v > b),
                              ("at most", self.le, lambda v, b: v <= b), ("less than", self.lt, lambda v, b: v < b)):
            if bound is not None and not ok(value, bound):
                return f"must be {op} {bound}, got {value}"
        return None


def bounded(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    meta = {BOUNDS: Bounds(ge, gt, le, lt, tuple(choices) if choices is not None else None)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_violation(f: dataclasses.Field, value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    bounds = f.metadata.get(BOUNDS)
    return bounds.violation(value) if bounds else None


def check_bounds(obj: Any, path: str = "") -> None:
    """Raise ValueError naming ``path.field`` for the first field of ``obj`` outside its bounds."""
    for f in dataclasses.fields(obj):
        problem = field_violation(f, getattr(obj, f.name))
        if problem:
            raise ValueError(f"{path + '.' if path else ''}{f.name}: {problem}")
