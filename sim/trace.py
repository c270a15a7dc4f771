"""Availability traces: CSV rows ``device,on,off`` (seconds from the run's start; an empty ``off``: on
until the end), as FedScale's device availability traces, one row per period a device is reachable."""
from __future__ import annotations

import csv
from pathlib import Path

from crossback.config.errors import ConfigError


def read_trace(path: Path, devices: set[str]) -> dict[str, list[tuple[float, float | None]]]:
    """device -> its on periods, in order; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the availability trace: {exc.strerror or exc}") from None
    spans: dict[str, list[tuple[float, float | None]]] = {}
    rows = list(csv.reader(text.splitlines()))
    if rows and [c.strip() for c in rows[0]] == ["device", "on", "off"]:
        rows = [None, *rows[1:]]
    for line, row in enumerate(rows, 1):
        if row is None or not any(c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ConfigError(f"{path}:{line}: expected device,on,off; got {len(row)} field(s)")
        device, on, off = (c.strip() for c in row)
        if device not in devices:
            raise ConfigError(f"{path}:{line}: unknown device {device!r} (devices are group-index, e.g. "
                              f"{sorted(devices)[0]})")
        try:
            start, end = float(on), (float(off) if off else None)
        except ValueError:
            raise ConfigError(f"{path}:{line}: on and off must be seconds, got {on!r}, {off!r}") from None
        if start < 0 or (end is not None and end <= start):
            raise ConfigError(f"{path}:{line}: a period needs 0 <= on < off, got {start}, {end}")
        previous = spans.get(device, [])
        if previous and (previous[-1][1] is None or previous[-1][1] > start):
            raise ConfigError(f"{path}:{line}: {device}'s periods overlap or are out of order")
        spans.setdefault(device, []).append((start, end))
    return spans
