"""One task's transfer step (Algorithm 1, steps 2-6) with its baselines, all from the same M_loc.

Arms: ``none`` (the same adaptation on the task's own K/V), ``random`` (a uniformly drawn scored
candidate, seeded), ``selected`` (the best score), and optionally ``oracle`` (every candidate tried,
best validation accuracy; evaluation only). The task keeps the ``selected`` arm (``none`` without a
candidate). Test accuracy comes from a split the selection never saw.
"""
from __future__ import annotations

import random
import time
import zlib

import torch

from crossback.models.learner import ContinualLearner
from crossback.models.methods import TaskData
from crossback.models.perceiver import kv_shapes
from crossback.models.training import evaluate
from crossback.transfer.base import AdaptOptions, InjectionError, TransferStrategy

from .selection import SKIPPED, Candidate, SelectionConfig, choose, probe_candidates


def _arm(learner: ContinualLearner, task: int, data: TaskData, strategy: TransferStrategy, base: dict,
         cand: Candidate | None, opts: AdaptOptions, seed: int) -> dict | None:
    """Finish the task one way from ``base``; None when the borrowed weights could not be injected."""
    learner.set_task_state(task, base)
    try:
        facts = strategy.adapt(learner, task, data, cand.kv if cand else None, opts, torch.Generator().manual_seed(seed))
    except InjectionError as exc:
        learner.set_task_state(task, base)
        cand.error = f"injection failed: {exc}"
        return None
    return {"peer": cand.peer if cand else None, "modality": cand.modality if cand else None,
            "val": evaluate(learner, task, data.val), "test": evaluate(learner, task, data.test),
            "facts": facts, "state": learner.task_state(task)}


def transfer_step(learner: ContinualLearner, task: int, data: TaskData, node_id: str, peers: list[tuple[str, str]],
                  clients, cfg: SelectionConfig, strategy: TransferStrategy, train_opts, seed: int, emit) -> dict:
    started = time.perf_counter()
    probed = probe_candidates(learner, task, peers, clients, cfg, kv_shapes(learner.cfg))
    skipped = [c for c in probed if c.error and c.error.startswith(SKIPPED)]
    cands = [c for c in probed if c not in skipped]
    chosen, reason = choose(cands)
    scored = [c for c in cands if c.score is not None and c.error is None]
    runner_up = max((c.score for c in scored if c is not chosen), default=None)
    emit("backbone_selected", task=data.name, index=task, candidates=[c.public() for c in cands],
         skipped=[{"peer": c.peer, "modality": c.modality, "reason": c.error} for c in skipped],
         chosen=chosen.peer if chosen else None, chosen_modality=chosen.modality if chosen else None,
         score=chosen.score if chosen else None,
         margin=(chosen.score - runner_up) if chosen and runner_up is not None else None, reason=reason,
         scope=cfg.scope, seconds=round(time.perf_counter() - started, 4),
         bytes=sum(c.bytes for c in cands))
    opts = AdaptOptions(cfg.adapt_epochs, train_opts, cfg.adapt_own_weights)
    arm_seed = seed * 7919 + task
    base = learner.task_state(task)
    oracle_tried = None
    arms = {"none": _arm(learner, task, data, strategy, base, None, opts, arm_seed)}
    if scored:
        rng = random.Random(seed * 1_000_003 + task * 101 + zlib.crc32(node_id.encode()))
        arms["random"] = _arm(learner, task, data, strategy, base, rng.choice(scored), opts, arm_seed)
        arms["selected"] = _arm(learner, task, data, strategy, base, chosen, opts, arm_seed)
        if cfg.oracle:
            tried = [a for c in scored if (a := _arm(learner, task, data, strategy, base, c, opts, arm_seed))]
            arms["oracle"] = min(tried, key=lambda a: (-a["val"], a["peer"])) if tried else None
            oracle_tried = [{"peer": a["peer"], "score": next(c.score for c in scored if c.peer == a["peer"]),
                             "val": a["val"], "test": a["test"]} for a in tried]
    arms = {name: arm for name, arm in arms.items() if arm is not None}
    keep = cfg.keep if cfg.keep in arms else "none"
    learner.set_task_state(task, arms[keep]["state"])
    summary = {name: {k: v for k, v in arm.items() if k != "state"} for name, arm in arms.items()}
    emit("transfer_done", task=data.name, index=task, strategy=strategy.name, kept=keep,
         arms=summary, accuracy={name: arm["test"] for name, arm in arms.items()},
         **({"oracle_tried": oracle_tried} if oracle_tried is not None else {}))
    return {"chosen": chosen, "candidates": cands, "arms": summary}
