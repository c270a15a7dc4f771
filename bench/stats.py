"""Paired statistics over benchmark units (one unit = one receiver task under one seed and budget).

Every arm of a unit starts from the same M_loc with the same seed and adaptation budget, so arms are
compared by their per-unit difference, and a claim is the mean difference with two percentile
bootstrap confidence intervals, resampled with a fixed seed:

- over units (tasks x seeds): tasks count as a sample of possible tasks, so the spread *between*
  tasks widens it;
- over seeds with the tasks fixed (units resampled within each task's stratum): how much this
  benchmark's number would move with other seeds, splits and initialisations.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr


def bootstrap_ci(values: list[float], resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def stratified_bootstrap_ci(values: list[float], strata: list, resamples: int, confidence: float,
                            seed: int = 0) -> tuple[float, float]:
    """CI of the overall mean when units are resampled only within their stratum (strata fixed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    keys = sorted(set(strata), key=str)
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for key in keys:
        group = x[[i for i, s in enumerate(strata) if s == key]]
        total += group[rng.integers(0, group.size, size=(resamples, group.size))].sum(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(total / x.size, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summary(values: list[float], resamples: int, confidence: float, seed: int = 0, tol: float = 1e-12,
            strata: list | None = None) -> dict:
    """Mean, CI and sign counts of paired differences (or of any per-unit statistic); with ``strata``
    (one key per value, e.g. the task) also the CI over seeds with the strata fixed."""
    lo, hi = bootstrap_ci(values, resamples, confidence, seed)
    out = {"n": len(values), "mean": float(np.mean(values)) if values else math.nan, "lo": lo, "hi": hi,
           "wins": sum(v > tol for v in values), "losses": sum(v < -tol for v in values),
           "ties": sum(abs(v) <= tol for v in values)}
    if strata is not None:
        out["seeds_lo"], out["seeds_hi"] = stratified_bootstrap_ci(values, strata, resamples, confidence, seed)
    return out


def spearman(scores: list[float], gains: list[float]) -> float | None:
    """Rank correlation of a score with the realised gain across one unit's candidates (None if undefined)."""
    if len(scores) < 3 or len(set(scores)) < 2 or len(set(gains)) < 2:
        return None
    rho = spearmanr(scores, gains).statistic
    return None if rho is None or not math.isfinite(rho) else float(rho)
