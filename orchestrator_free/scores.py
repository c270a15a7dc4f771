"""Scoring functions for backbone selection: larger is better, one documented formula each.

- ``ddv`` (the paper): ``cos - euc_weight * euc`` of the two sides' DDVs on identical probes
  (see ``selection``); the peer answers half of it.
- ``ddv_cos``: the cosine part alone (``euc_weight = 0``).
- ``local_loss``: minus the receiver's mean cross-entropy on its own *validation* split when the task
  runs through the candidate's K/V, before any adaptation (a LEEP-like local transferability proxy:
  nothing leaves the receiver, nothing is trained).

Every candidate gets every score (they are cheap); the node's ``selection.score`` decides which one
``choose`` ranks by, and the benchmark reports each one's Spearman with the realised gain.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crossback.models.learner import ContinualLearner
from crossback.models.methods import TaskData
from crossback.models.perceiver import ENCODER_KV, join_kv

SCORES = ("ddv", "ddv_cos", "local_loss")


@torch.no_grad()
def local_loss(learner: ContinualLearner, task: int, data: TaskData, kv: dict, batch_size: int = 256) -> float:
    params = dict(learner.params_for(task))
    params[ENCODER_KV] = join_kv(kv).to(learner.device, params[ENCODER_KV].dtype)
    total, n = 0.0, 0
    for s in range(0, len(data.val), batch_size):
        x = data.val.inputs[s : s + batch_size].to(learner.device)
        y = data.val.labels[s : s + batch_size].to(learner.device)
        total += float(F.cross_entropy(learner.call(learner.net, params, (x,)), y, reduction="sum"))
        n += len(y)
    return -total / max(n, 1)


def candidate_scores(cand, learner: ContinualLearner, task: int, data: TaskData, euc_weight: float) -> dict[str, float]:
    if cand.cos is None or cand.kv is None:
        return {}
    out = {"ddv": cand.cos - euc_weight * cand.euc, "ddv_cos": cand.cos,
           "local_loss": local_loss(learner, task, data, cand.kv)}
    return {k: v for k, v in out.items() if math.isfinite(v)}


def apply_score(name: str, cands: list, learner: ContinualLearner, task: int, data: TaskData, euc_weight: float) -> None:
    """Fill every answered candidate's ``scores`` and rank by ``name`` (``cand.score``)."""
    if name not in SCORES:
        raise ValueError(f"unknown selection score {name!r}; choose one of {list(SCORES)}")
    for cand in cands:
        if cand.error is None and cand.kv is not None:
            cand.scores = candidate_scores(cand, learner, task, data, euc_weight)
            cand.score = cand.scores.get(name)
