"""Splitting a class's items over devices: equal parts, or Dirichlet(alpha) shares (label skew)."""
from __future__ import annotations

import zlib

import numpy as np

from crossback.config.data import ItemPartition


def part_shares(parts: int, alpha: float | None, seed: int, label: str) -> np.ndarray:
    """Each part's share of class ``label``: equal, or drawn from Dirichlet(alpha) seeded by the seed and
    the label, so every node computes the same shares for the same class."""
    if alpha is None:
        return np.full(parts, 1.0 / parts)
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    return rng.dirichlet(np.full(parts, alpha))


def part_counts(n: int, shares: np.ndarray) -> list[int]:
    """``n`` items over the parts by ``shares``, largest remainders first, summing to exactly ``n``."""
    exact = shares * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def take_part(items: list, partition: ItemPartition, label: str) -> list:
    """The slice of ``items`` (in their split order) that part ``partition.index`` holds."""
    counts = part_counts(len(items), part_shares(partition.parts, partition.alpha, partition.seed, label))
    start = sum(counts[: partition.index])
    return items[start : start + counts[partition.index]]
