"""One task's transfer step (Algorithm 1, steps 2-7) with its baselines, all from the same M_loc.

Arms: ``none`` (the same adaptation on the task's own K/V), ``random`` (a uniformly drawn answered
candidate, seeded), ``selected`` (the best score), and optionally ``oracle`` (every candidate tried,
best validation accuracy; evaluation only). Every arm starts from the same state, with the same seed
and the same adaptation budget. The task keeps the ``selected`` arm only if its validation accuracy
is at least ``none``'s (step 7: a bad backbone must not degrade the task); the decision and its reason
are logged. Test accuracy comes from a split the selection never saw.
"""
from __future__ import annotations

import dataclasses
import random
import time
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from crossback.config.selection import ExperimentConfig, SelectionConfig
from crossback.models.borrowed import BORROWED_EVENT, average_parts
from crossback.models.learner import ContinualLearner
from crossback.models.training import accuracy, evaluate, predict
from crossback.orchestrator_free.selection import (
    Candidate,
    PeerAccess,
    TaskAtHand,
    Want,
    arm_payload,
    can_average,
    fetch_parts,
)
from crossback.transfer.base import AdaptOptions, InjectionError, TransferStrategy

from .reasons import injection_failed
from .same_task import find_same_task
from .shortlist import select


@dataclass(frozen=True)
class ArmPlan:
    """How the arms of one task run: the strategy that borrows, its adaptation budget, the seed, and the
    task state every arm starts from (M_loc)."""
    strategy: TransferStrategy
    opts: AdaptOptions
    seed: int
    base: dict = field(default_factory=dict, repr=False)


@dataclass
class Arm:
    """One way the task was finished from M_loc: what it scored on the validation and test splits, what
    the strategy reported, and the task state it left (whose it is: ``peer``, or the ``averaged`` peers)."""
    val: float
    val_loss: float
    test: float
    facts: dict
    seconds: float
    state: dict = field(repr=False)
    val_correct: Tensor | None = field(default=None, repr=False)  # per validation item, for a paired keep rule
    peer: str | None = None
    modality: str | None = None
    origin: str | None = None
    extra: dict | None = None
    averaged: list[str] | None = None

    def summary(self) -> dict:
        """What the log and the reports show of it."""
        return {"peer": self.peer, "modality": self.modality, "origin": self.origin,
                **({"extra": self.extra} if self.extra else {}),
                **({"averaged": self.averaged} if self.averaged is not None else {}),
                "val": self.val, "val_loss": self.val_loss, "test": self.test, "facts": self.facts,
                "seconds": self.seconds}


def run_arm(at: TaskAtHand, plan: ArmPlan, payload: dict | None) -> Arm:
    """Finish the task one way from ``plan.base``. Raises InjectionError (with the task's state restored)
    when the borrowed weights could not be injected."""
    learner, task, data = at.learner, at.task, at.require_data()
    learner.set_task_state(task, plan.base)
    started = time.perf_counter()
    try:
        facts = plan.strategy.adapt(learner, task, data, payload, plan.opts, torch.Generator().manual_seed(plan.seed))
    except InjectionError:
        learner.set_task_state(task, plan.base)
        raise
    seconds = round(time.perf_counter() - started, 4)
    logits = predict(learner, task, data.val.inputs)
    return Arm(val=accuracy(logits, data.val.labels), val_loss=float(F.cross_entropy(logits, data.val.labels)),
               test=evaluate(learner, task, data.test), facts=facts, seconds=seconds, state=learner.task_state(task),
               val_correct=logits.argmax(dim=1) == data.val.labels)


def _arm(at: TaskAtHand, plan: ArmPlan, cand: Candidate | None, clients) -> Arm | None:
    payload = arm_payload(clients, cand, plan.strategy, at.learner.part_shapes(at.task))
    if cand is not None and payload is None:
        return None
    try:
        arm = run_arm(at, plan, payload)
    except InjectionError as exc:
        if cand is not None:
            cand.failure = injection_failed(exc)
        return None
    if cand is not None:
        arm.peer, arm.modality = cand.peer, cand.probe.modality
        arm.origin, arm.extra = cand.payload.origin, cand.payload.extra or None
    return arm


def candidate_arms(at: TaskAtHand, plan: ArmPlan, cands: list[Candidate], clients) -> dict[str, Arm]:
    """Each candidate's arm (peer id -> arm) from the same state, seed and budget: the oracle's tries, and
    every arm the benchmark reports. A candidate whose payload cannot be had or injected is left out (its
    ``error`` says why)."""
    arms = {}
    for cand in cands:
        arm = _arm(at, plan, cand, clients)
        if arm is not None:
            arms[cand.peer] = arm
    return arms


def _average_arm(at: TaskAtHand, plan: ArmPlan, members: list[Candidate]) -> Arm | None:
    """The ``selected`` arm of ``selection.combine: average``: adapted on the members' averaged payload."""
    try:
        arm = run_arm(at, plan, average_parts([c.payload.parts for c in members if c.payload.parts is not None]))
    except InjectionError:
        return None
    arm.averaged = sorted(c.peer for c in members)
    return arm


SIGN_TEST_Z = 1.645  # one-sided 5 %
# ``margin``: how many more validation items the borrowed arm must get right than ``none`` (see decide_keep)
KEEP_MARGIN_ITEMS = 2


def decide_keep(arms: dict[str, Arm], preferred: str, rule: str = "accuracy") -> tuple[str, str]:
    """The arm the task keeps, and why. ``accuracy``: a borrowed arm must reach ``none``'s validation
    accuracy; on a tie (common with a few validation items) it must also not raise the validation loss.
    ``sign``: the borrowed arm is kept unless ``none`` is right on significantly more validation items
    (a one-sided sign test on the items the two disagree on) — for a borrowed model of the very same
    task, whose evidence (the peer learned from all its items) a few validation items cannot outweigh
    unless they clearly disagree. ``margin``: the borrowed arm is kept only if it is right on at least
    ``KEEP_MARGIN_ITEMS`` more validation items than ``none`` — for a backbone of a peer that did not learn
    this task, whose help is small on average, so that a one-item win on 10-25 items (luck as often as
    not) does not keep it."""
    if preferred not in arms:
        return "none", f"no {preferred} arm (no usable candidate)"
    if preferred == "none":
        return "none", "configured to keep none"
    arm, base = arms[preferred], arms["none"]
    items = _disagreements(arm, base) if rule in ("sign", "margin") else None
    if items is not None and rule == "sign":
        better, worse = items
        if worse - better > SIGN_TEST_Z * (worse + better) ** 0.5:
            return "none", (f"none is right on {worse} validation items {preferred} gets wrong, {preferred} on {better}: "
                            "significantly worse (one-sided sign test, 5 %)")
        return preferred, (f"{preferred} is right on {better} validation items none gets wrong, none on {worse}: "
                           "not significantly worse (one-sided sign test, 5 %)")
    if items is not None:  # margin
        better, worse = items
        said = f"{preferred} is right on {better} validation items none gets wrong, none on {worse}"
        if better - worse >= KEEP_MARGIN_ITEMS:
            return preferred, f"{said}: at least {KEEP_MARGIN_ITEMS} more"
        return "none", (f"{said}: fewer than {KEEP_MARGIN_ITEMS} more, no evidence that a backbone of another "
                        "task helps")
    got, ref = arm.val, base.val
    if got > ref:
        return preferred, f"{preferred} validation accuracy {got:.4f} > none's {ref:.4f}"
    if got < ref:
        return "none", f"{preferred} validation accuracy {got:.4f} < none's {ref:.4f}: borrowing would degrade the task"
    loss, ref_loss = arm.val_loss, base.val_loss
    if loss <= ref_loss:
        return preferred, f"{preferred} ties none's validation accuracy {got:.4f} at a validation loss {loss:.4f} <= {ref_loss:.4f}"
    return "none", (f"{preferred} ties none's validation accuracy {got:.4f} but its validation loss {loss:.4f} > "
                    f"{ref_loss:.4f}: no evidence that borrowing helps")


def _disagreements(arm: Arm, base: Arm) -> tuple[int, int] | None:
    """(validation items ``arm`` gets right and ``base`` wrong, and the reverse); None without per-item
    results."""
    if arm.val_correct is None or base.val_correct is None:
        return None
    return int((arm.val_correct & ~base.val_correct).sum()), int((base.val_correct & ~arm.val_correct).sum())


def best_on_validation(arms: list[Arm]) -> Arm | None:
    """The arm that validated best (ties: the lower validation loss, then the peer id): the oracle's
    pick, which sees every arm's validation split and never the test split."""
    return min(arms, key=lambda a: (-a.val, a.val_loss, a.peer or "")) if arms else None


def _kind(cand: Candidate) -> str | None:
    return cand.failure.kind if cand.failure is not None else None


def arm_seed(seed: int, task: int) -> int:
    return seed * 7919 + task


def record_provenance(learner: ContinualLearner, task: int, cand: Candidate, kind: str) -> None:
    """Remember whose parts ``task`` now runs on, so re-serving them names the original learner."""
    learner.tasks[task].events.append({"event": BORROWED_EVENT, "peer": cand.peer, "kind": kind,
                                       "origin": cand.payload.origin, "origins": dict(cand.payload.origins)})


def record_average(learner: ContinualLearner, task: int, peers: list[str], kind: str) -> None:
    """An averaged payload is a model no peer learned: it names no origin, so re-serving it names this
    node, and the record lists whose payloads were averaged."""
    learner.tasks[task].events.append({"event": BORROWED_EVENT, "peer": None, "kind": kind, "combine": "average",
                                       "averaged": list(peers), "origin": None, "origins": {}})


def averaged_members(sel, cfg: SelectionConfig, strategy: TransferStrategy) -> list[Candidate]:
    """``selection.combine: average``: the candidates whose fetched payloads are averaged — every
    shortlisted one whose payload arrived intact; [] when fewer than two did (``shortlist: 0`` fetches
    one) or on the same-task path, which borrows a matched task whole (its fallback may average)."""
    if cfg.combine != "average" or not can_average(strategy) or strategy.matches_tasks:
        return []
    members = [c for c in sel.pool if c.scores.shortlisted and c.payload.parts is not None]
    return members if len(members) > 1 else []


def _fetched(clients, cand: Candidate, at: TaskAtHand, want: Want, sel) -> bool:
    """Make sure an experiment arm's candidate has its payload (the random draw, the oracle's others)."""
    if sel.fetch is not None:
        return sel.fetch(cand)
    return fetch_parts(clients.get(cand.address, cand.peer), cand, at.learner, at.task, want)


def transfer_step(at: TaskAtHand, access: PeerAccess, cfg: SelectionConfig, plan: ArmPlan, emit,
                  experiment: ExperimentConfig = ExperimentConfig()) -> dict:
    """Algorithm 1 for one task learned locally: select a peer, run every arm from the same state, keep
    one (logged as ``backbone_selected`` and ``transfer_done``). ``plan``: the strategy, its budget and
    the run's seed (each arm's seed and base state are derived here)."""
    learner, task, data = at.learner, at.task, at.require_data()
    started = time.perf_counter()
    sel, strategy = _select(at, access, cfg, plan, emit)
    averaged = averaged_members(sel, cfg, strategy)
    _log_selection(emit, at, sel, cfg, strategy, {"averaged": averaged, "alive": len(access.peers),
                                                  "seconds": round(time.perf_counter() - started, 4)})
    spent = sum(c.bytes for c in sel.candidates)
    arms, oracle_tried = _run_arms(at, access, sel, dataclasses.replace(plan, strategy=strategy), averaged, experiment)
    kept, why = decide_keep(arms, experiment.keep, strategy.keep_rule if experiment.keep == "selected" else "accuracy")
    learner.set_task_state(task, arms[kept].state)
    if kept != "none" and strategy.borrows_parts:
        if arms[kept].averaged is not None:
            record_average(learner, task, arms[kept].averaged, strategy.borrow)
        else:
            record_provenance(learner, task, next(c for c in sel.pool if c.peer == arms[kept].peer), strategy.borrow)
    summary = {name: arm.summary() for name, arm in arms.items()}
    emit("transfer_done", task=data.name, index=task, strategy=strategy.name, kept=kept, keep_reason=why,
         arms=summary, accuracy={name: arm.test for name, arm in arms.items()},
         experiment_bytes=sum(c.bytes for c in sel.candidates) - spent,
         **({"oracle_tried": oracle_tried} if oracle_tried is not None else {}))
    return {"chosen": sel.chosen, "candidates": sel.candidates, "arms": summary, "kept": kept, "stages": sel.stages}


def _select(at: TaskAtHand, access: PeerAccess, cfg: SelectionConfig, plan: ArmPlan, emit):
    """(the selection, the strategy that borrows): a same-task strategy first looks for a peer that learned
    this label set and falls back to its usual borrowing when none did."""
    learner, task, data, strategy, opts = at.learner, at.task, at.require_data(), plan.strategy, plan.opts
    fallback = strategy.fallback
    if not strategy.matches_tasks or fallback is None:
        return select(at, access, cfg, strategy), strategy
    sel = find_same_task(at, access, cfg, lambda parts: strategy.as_borrowed(learner, task, data, parts, opts))
    emit("task_matched", task=data.name, index=task, chosen=sel.chosen.peer if sel.chosen else None,
         reason=sel.reason, matched=[c.public() for c in sel.candidates],
         unmatched=len([c for c in sel.skipped if _kind(c) == "no_match"]),
         skipped=[{"peer": c.peer, "reason": c.error, "kind": _kind(c)} for c in sel.skipped
                  if _kind(c) != "no_match"],
         stages=sel.stages, fallback=None if sel.chosen else fallback.borrow)
    if sel.chosen is not None:
        return sel, strategy
    # no peer learned this label set: borrow the usual way
    return select(at, access, cfg, fallback), fallback


def _log_selection(emit, at: TaskAtHand, sel, cfg: SelectionConfig, strategy, facts: dict) -> None:
    """``backbone_selected``; ``facts``: the members averaged, the peers alive, the seconds it took."""
    data, task, averaged = at.require_data(), at.task, facts["averaged"]
    chosen, cands = sel.chosen, sel.candidates
    runner_up = max((c.scores.by_name[sel.score_name] for c in sel.pool
                     if sel.score_name in c.scores.by_name and c is not chosen), default=None)
    value = chosen.scores.by_name.get(sel.score_name) if chosen else None
    emit("backbone_selected", task=data.name, index=task, candidates=[c.public() for c in cands],
         skipped=[{"peer": c.peer, "modality": c.probe.modality, "reason": c.error, "kind": _kind(c)}
                  for c in sel.skipped],
         chosen=chosen.peer if chosen else None, chosen_modality=chosen.probe.modality if chosen else None,
         chosen_origin=chosen.payload.origin if chosen else None, borrow=strategy.borrow, strategy=strategy.name,
         score=value, score_name=sel.score_name, rank_score=cfg.score,
         shortlist=cfg.shortlist if cfg.cheap else "all",
         margin=(value - runner_up) if value is not None and runner_up is not None else None, reason=sel.reason,
         scope=cfg.scope, seconds=facts["seconds"], stages=sel.stages,
         alive=facts["alive"], probed=len(cands) + len(sel.skipped),
         bytes=sum(c.bytes for c in cands), combine=cfg.combine, averaged=sorted(c.peer for c in averaged))


def _run_arms(at: TaskAtHand, access: PeerAccess, sel, plan: ArmPlan, averaged,
              experiment: ExperimentConfig) -> tuple[dict, list | None]:
    """Every arm from the same state and seed: none, selected (or the average), and the experiment's
    random and oracle arms; (arms that ran, the oracle's tries or None)."""
    chosen, pool, clients, task, seed = sel.chosen, sel.pool, access.clients, at.task, plan.seed
    arms_plan = dataclasses.replace(plan, seed=arm_seed(seed, task), base=at.learner.task_state(task))
    want = Want.of(plan.strategy, at.data)

    def arm(cand):
        return _arm(at, arms_plan, cand, clients)

    arms, oracle_tried = {"none": arm(None)}, None
    if chosen is not None:
        if experiment.random:
            rng = random.Random(seed * 1_000_003 + task * 101 + zlib.crc32(access.node_id.encode()))
            draw = rng.choice(pool)
            if _fetched(clients, draw, at, want, sel):
                arms["random"] = arm(draw)
        if averaged:  # the chosen candidate's own arm only if the averaged payload cannot run
            arms["selected"] = _average_arm(at, arms_plan, averaged)
        if arms.get("selected") is None:
            arms["selected"] = arm(chosen)
        if experiment.oracle:
            fetched = [c for c in pool if _fetched(clients, c, at, want, sel)]
            tried = list(candidate_arms(at, arms_plan, fetched, clients).values())
            arms["oracle"] = best_on_validation(tried)
            oracle_tried = [{"peer": a.peer, "score": next(c.scores.rank for c in pool if c.peer == a.peer),
                             "val": a.val, "test": a.test} for a in tried]
    return {name: a for name, a in arms.items() if a is not None}, oracle_tried
