"""Scoring functions for backbone selection: larger is better, one documented formula each.

- ``ddv`` (the paper): ``cos - euc_weight * euc`` of the two sides' DDVs on identical probes
  (see ``selection``); the peer answers half of it.
- ``ddv_cos``: the cosine part alone (``euc_weight = 0``).
- ``local_loss``: minus the receiver's mean cross-entropy on its own *validation* split when the task
  runs through the candidate's parts, before any adaptation (nothing leaves the receiver, nothing is
  trained).
- ``logme``: LogME (You et al., 2021), the log marginal evidence per item of a Bayesian linear model
  from the features the head reads — the task run through the candidate's parts — to the one-hot
  labels of the receiver's own train and validation items, averaged over classes. It asks "how
  linearly separable do the borrowed parts make *my* items", needs no training and no peer data.
  For a strategy that borrows a teacher's features on paired items (freqkd), it is LogME of those
  features to the items' labels: how well the teacher's view separates *my* classes.

A node computes the score its ``selection.score`` ranks by (``local_loss`` and ``logme`` each run the
task's items through every candidate's parts: a forward pass per candidate), plus the DDV scores,
which the probe has already paid for. ``selection.log_scores`` computes every score for the log, as the
transfer benchmark does to report each one's Spearman with the realised gain.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crossback.models.learner import ContinualLearner
from crossback.models.methods import TaskData
from crossback.models.training import Split, features

SCORES = ("ddv", "ddv_cos", "local_loss", "logme")
DDV_SCORES = ("ddv", "ddv_cos")


def _with_parts(learner: ContinualLearner, task: int, parts: dict) -> dict:
    params = dict(learner.params_for(task))
    for name, t in parts.items():
        params[name] = t.to(learner.device, params[name].dtype)
    return params


@torch.no_grad()
def local_loss(learner: ContinualLearner, task: int, data: TaskData, parts: dict, batch_size: int = 256) -> float:
    params = _with_parts(learner, task, parts)
    total, n = 0.0, 0
    for s in range(0, len(data.val), batch_size):
        x = data.val.inputs[s : s + batch_size].to(learner.device)
        y = data.val.labels[s : s + batch_size].to(learner.device)
        total += float(F.cross_entropy(learner.call(learner.net, params, (x,)), y, reduction="sum"))
        n += len(y)
    return -total / max(n, 1)


def logme_evidence(f: torch.Tensor, labels: torch.Tensor, num_classes: int, iters: int = 20) -> float:
    """Mean over classes of the per-item log evidence of y_k ~ N(f w, 1/beta), w ~ N(0, 1/alpha), with
    alpha and beta at their evidence-maximising fixed point (LogME's algorithm 2)."""
    f = f.double()
    n, d = f.shape
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    sigma = s**2
    total = 0.0
    for k in range(num_classes):
        y = (labels == k).double()
        x2 = (u.T @ y) ** 2
        rest = float(y @ y - x2.sum())  # the part of y outside the features' span
        alpha, beta = 1.0, 1.0
        for _ in range(iters):
            t = alpha / beta
            gamma = float((sigma / (sigma + t)).sum())
            m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
            res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        t = alpha / beta
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest
        logdet = float(torch.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
        total += evidence / n
    return total / num_classes


def logme(learner: ContinualLearner, task: int, data: TaskData, parts: dict | None) -> float:
    items = Split(torch.cat([data.train.inputs, data.val.inputs]), torch.cat([data.train.labels, data.val.labels]))
    return logme_evidence(features(learner, task, items.inputs, _with_parts(learner, task, parts or {})), items.labels,
                          data.num_classes)


def candidate_scores(cand, learner: ContinualLearner, task: int, data: TaskData, euc_weight: float,
                     wanted: frozenset[str] = frozenset(SCORES)) -> dict[str, float]:
    """The scores in ``wanted`` that ``cand`` can have, plus its DDV scores (already paid for). The ones
    that run our task through its parts need parts of our shapes; a peer of other shapes (any-shape
    strategies) gets only the DDV scores."""
    if cand.parts is None:
        return {}
    shapes = learner.part_shapes(task)
    out = {}
    if "features" in cand.parts:  # a teacher's features on our paired items (freqkd): how well they give our labels
        if "logme" in wanted:
            out = {"logme": logme_evidence(cand.parts["features"], cand.parts["labels"], data.num_classes)}
    elif all(tuple(t.shape) == shapes.get(n) for n, t in cand.parts.items()):
        if "local_loss" in wanted:
            out["local_loss"] = local_loss(learner, task, data, cand.parts)
        if "logme" in wanted:
            out["logme"] = logme(learner, task, data, cand.parts)
    if cand.cos is not None:
        out |= {"ddv": cand.cos - euc_weight * cand.euc, "ddv_cos": cand.cos}
    return {k: v for k, v in out.items() if math.isfinite(v)}


def apply_score(name: str, cands: list, learner: ContinualLearner, task: int, data: TaskData, euc_weight: float,
                every: bool = False) -> None:
    """Fill every answered candidate's ``scores`` (score ``name`` and the DDV ones; with ``every``, all
    of them) and rank by ``name`` (``cand.score``)."""
    if name not in SCORES:
        raise ValueError(f"unknown selection score {name!r}; choose one of {list(SCORES)}")
    wanted = frozenset(SCORES) if every else frozenset({name})
    for cand in cands:
        if cand.error is None and cand.parts is not None:
            cand.scores = candidate_scores(cand, learner, task, data, euc_weight, wanted)
            cand.score = cand.scores.get(name)
