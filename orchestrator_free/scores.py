"""Scoring functions for backbone selection: larger is better, one documented formula each.

Cheap scores need only what every candidate sends for selection, its published K/V and its DDV
answer (a few % of the model); nothing of the receiver leaves it:

- ``ddv`` (the paper): ``cos - euc_weight * euc`` of the two sides' DDVs on identical probes
  (see ``selection``); the peer answers half of it.
- ``ddv_cos``: the cosine part alone (``euc_weight = 0``).
- ``kv_motion``: how the candidate's K/V moved away from the swarm genesis, against how ours moved
  while learning this task: ``cos(KV_k - KV_0, KV_r - KV_s)`` over the fused (2d, C) matrix, with
  ``KV_0`` the genesis K/V every node of the swarm started from (the receiver rebuilds it from the
  genesis seed) and ``KV_s`` the K/V our task started from (the genesis K/V for a first task; for a
  later one, older tasks' weights and the fresh ones it claimed). Two nodes that learned the same thing
  from one start moved the same way. A candidate that has not moved at all (an untrained node: it
  learned nothing) scores -1, the minimum. Needs a swarm genesis.
- ``kv_motion_view``: ``kv_motion + 2`` for a candidate of the receiver's own view (modality) that moved
  at all, ``kv_motion`` otherwise: candidates of our view first, by ``kv_motion`` within each view
  (``kv_motion`` lies in [-1, 1], so the 2 orders the views and nothing else; a node that never moved
  stays last at -1). Across views ``kv_motion`` compares K/V that project different token distributions
  (the other view's adapter), and there it followed the donor that moved like our *earlier* tasks rather
  than the one that learned this task (issue 39: its same-task Spearman on held-out data was +0.09). The
  default since.
- ``kv_drift``: ``||KV_k - KV_0|| / ||KV_0||``, how far the candidate moved at all (how much it learned,
  whatever it learned): a control for ``kv_motion``.
- ``logme_kv``: ``logme`` (below) with only the candidate's K/V swapped into our own task model.

Scores on the borrowed payload (``selection.confirm``; the backbone: the whole model of a candidate):

- ``local_loss``: minus the receiver's mean cross-entropy on its own *validation* split when the task
  runs through the candidate's parts, before any adaptation (nothing leaves the receiver, nothing is
  trained).
- ``logme``: LogME (You et al., 2021), the log marginal evidence per item of a Bayesian linear model
  from the features the head reads — the task run through the candidate's parts — to the one-hot
  labels of the receiver's own train and validation items, averaged over classes. It asks "how
  linearly separable do the borrowed parts make *my* items", needs no training and no peer data.
  For a strategy that borrows a teacher's features on paired items (freqkd), it is LogME of those
  features to the items' labels: how well the teacher's view separates *my* classes.

A node computes the scores it ranks by (``selection.score`` on every candidate, ``selection.confirm``
on its shortlist), plus the DDV scores, which the probe has already paid for. ``selection.log_scores``
computes every score a candidate's fetched payloads allow, for the log, as the transfer benchmark does
to report each one's Spearman with the realised gain.
"""
from __future__ import annotations

import math
import time
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from crossback.config.selection import SCORES
from crossback.models.borrowed import kv_parts
from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import ENCODER_KV, join_kv
from crossback.models.task_data import Split, TaskData
from crossback.models.training import features

if TYPE_CHECKING:
    from crossback.orchestrator_free.selection import Candidate


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


OWN_VIEW_BONUS = 2.0  # larger than kv_motion's range: orders the views, kv_motion orders within each


def genesis_kv(learner: ContinualLearner) -> Tensor | None:
    """The fused (2d, C) encoder K/V every node of the learner's swarm genesis started from (None: no
    genesis): the learner's network structure keeps its initial values."""
    if learner.genesis is None:
        return None
    return learner.initial_weight(ENCODER_KV).cpu().double()


def kv_motion(kv: dict[str, Tensor], ours: Tensor, kept: Tensor, origin: Tensor) -> float:
    """cos(KV_k - origin, ours) over the weights both sides learned: those our task moved and runs
    (``kept``) that the candidate runs too (a pruned weight reads as zero, a move that is not learning);
    -1 for a K/V that never left the origin."""
    theirs = join_kv(kv).double()
    if not bool((theirs != origin).any()):
        return -1.0
    both = kept & (theirs != 0)
    moved, ours = (theirs - origin)[both], ours[both]
    norm = float(moved.norm() * ours.norm())
    return float((moved * ours).sum()) / norm if norm > 0 else -1.0


def kv_motion_view(motion: float, own_view: bool, kv: dict[str, Tensor], origin: Tensor) -> float:
    """``motion`` (kv_motion) + OWN_VIEW_BONUS for a candidate of our view that moved at all; a node that
    learned nothing stays last whatever its view."""
    moved = bool((join_kv(kv).double() != origin).any())
    return motion + OWN_VIEW_BONUS if own_view and moved else motion


def kv_drift(kv: dict[str, Tensor], origin: Tensor) -> float:
    return float((join_kv(kv).double() - origin).norm() / origin.norm())


class Receiver:
    """What scoring needs of the receiving side, computed once per selection: its task model, data
    and the genesis K/V."""

    def __init__(self, learner: ContinualLearner, task: int, data: TaskData, euc_weight: float):
        self.learner, self.task, self.data, self.euc_weight = learner, task, data, euc_weight
        self.shapes = learner.part_shapes(task)
        self.origin = genesis_kv(learner)

    @cached_property
    def own_motion(self) -> tuple[Tensor, Tensor]:
        """How our task's K/V moved while it was learned (from the genesis K/V when its start is unknown,
        e.g. after a resume), and which weights it both moved and runs."""
        recorded = self.learner.kv_starts.get(self.task)
        start = self.origin if recorded is None else recorded.double()
        if start is None:
            raise ValueError("kv_motion needs the swarm genesis K/V or the task's recorded start")
        now = join_kv(self.learner.extract_kv(self.task)).double()
        return now - start, (now != start) & (now != 0)

    def cheap(self, cand: Candidate, wanted: frozenset[str]) -> dict[str, float]:
        """The K/V + DDV scores in ``wanted`` that ``cand`` (K/V fetched) can have, plus its DDV scores."""
        out: dict[str, float] = {}
        probe = cand.probe
        if probe.cos is not None and probe.euc is not None:
            out |= {"ddv": probe.cos - self.euc_weight * probe.euc, "ddv_cos": probe.cos}
        kv = probe.kv
        if kv is None or tuple(join_kv(kv).shape) != self.shapes[ENCODER_KV]:
            return out  # another K/V shape (any-shape strategies): the DDV scores only
        origin = self.origin
        if origin is not None and wanted & {"kv_motion", "kv_motion_view"}:
            motion = _timed(cand, "kv_motion", lambda: kv_motion(kv, *self.own_motion, origin))
            out["kv_motion"] = motion
            if "kv_motion_view" in wanted:
                out["kv_motion_view"] = kv_motion_view(motion, probe.modality == self.learner.modality, kv, origin)
        if "kv_drift" in wanted and origin is not None:
            out["kv_drift"] = _timed(cand, "kv_drift", lambda: kv_drift(kv, origin))
        if "logme_kv" in wanted:
            out["logme_kv"] = _timed(cand, "logme_kv", lambda: logme(self.learner, self.task, self.data, kv_parts(kv)))
        return out

    def payload(self, cand: Candidate, wanted: frozenset[str]) -> dict[str, float]:
        """The scores in ``wanted`` on ``cand``'s borrowed parts (fetched). They run our task through the
        parts, so they need parts of our shapes; a feature payload (freqkd) gets LogME of its features."""
        parts = cand.payload.parts
        if parts is None:
            return {}
        if "features" in parts:  # a teacher's features on our paired items (freqkd): how well they give our labels
            if "logme" in wanted:
                return {"logme": logme_evidence(parts["features"], parts["labels"], self.data.num_classes)}
            return {}
        out = {}
        if all(tuple(t.shape) == self.shapes.get(n) for n, t in parts.items()):
            if "local_loss" in wanted:
                out["local_loss"] = _timed(cand, "local_loss", lambda: local_loss(self.learner, self.task, self.data,
                                                                                  parts))
            if "logme" in wanted:
                out["logme"] = _timed(cand, "logme", lambda: logme(self.learner, self.task, self.data, parts))
        return out


def _timed(cand: Candidate, name: str, compute: Callable[[], float]) -> float:
    started = time.perf_counter()
    value = compute()
    cand.scores.seconds[name] = round(time.perf_counter() - started, 5)
    return value


def _finite(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if math.isfinite(v)}


def check_score(name: str) -> None:
    if name not in SCORES:
        raise ValueError(f"unknown selection score {name!r}; choose one of {list(SCORES)}")


def apply_score(name: str, cands: list[Candidate], receiver: Receiver, every: bool = False) -> None:
    """Fill every answered candidate's scores (score ``name`` and the DDV ones; with ``every``, all
    that its fetched payloads allow) and rank by ``name`` (``cand.scores.rank``; None where it has none)."""
    check_score(name)
    wanted = frozenset(SCORES) if every else frozenset({name})
    for cand in cands:
        if cand.error is None and (cand.payload.parts is not None or cand.probe.kv is not None
                                   or cand.probe.cos is not None):
            cand.scores.by_name |= _finite(receiver.cheap(cand, wanted) | receiver.payload(cand, wanted))
            cand.scores.rank = cand.scores.by_name.get(name)
