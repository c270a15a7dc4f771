"""The same-task path: find a peer that learned exactly this task's label set and borrow the whole task.

Neither side names a class. The receiver sends one keyed hash per class (blake2b, a fresh salt), in its
label order; a peer answers with the finished tasks whose class names hash to exactly that set
(``MatchTask``), each with the validation accuracy it claims for it. The receiver ranks the matches by
that claim, fetches the top ``selection.shortlist`` tasks (``FetchTask``: backbone + query + head, the
head's rows in the receiver's label order) and confirms them on its own validation items, as borrowed,
before any adaptation (``task_val``): a peer's claim orders the fetches, never decides.
"""
from __future__ import annotations

import hashlib
import math
import time

import torch
from torch import Tensor

from crossback.config.errors import PeerCallError, WireError
from crossback.config.selection import SelectionConfig
from crossback.models.borrowed import accept_parts, part_names
from crossback.models.learner import ContinualLearner
from crossback.models.task_data import TaskData
from crossback.orchestrator_free.reasons import bad_payload, call_failed, injection_failed, skip
from crossback.orchestrator_free.selection import Candidate, PeerAccess, TaskAtHand, _parallel, choose
from crossback.transfer.base import InjectionError
from crossback.transfer.pairs import HASH_BYTES, SALT_BYTES, new_salt

from .shortlist import Selection, _stage

MAX_CLASS_HASHES = 1024
CONFIRM_SCORE = "task_val"  # the receiver's validation accuracy of a fetched task, run as borrowed
CLAIM_SCORE = "claimed_val"  # the accuracy the peer claims for the task (orders the fetches only)
NO_MATCH = "learned no task with this label set"


def class_hash(salt: bytes, name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=HASH_BYTES, key=salt).digest()


def class_hashes(salt: bytes, classes: list[str]) -> list[bytes]:
    """One hash per class, in label order (label i is classes[i])."""
    return [class_hash(salt, c) for c in classes]


def request_problem(salt: bytes, hashes: list[bytes]) -> str | None:
    """Why a label-set request is malformed (None: it is not)."""
    if len(salt) != SALT_BYTES:
        return f"salt must be {SALT_BYTES} bytes, got {len(salt)}"
    if not 2 <= len(hashes) <= MAX_CLASS_HASHES:
        return f"between 2 and {MAX_CLASS_HASHES} class hashes, got {len(hashes)}"
    if any(len(h) != HASH_BYTES for h in hashes):
        return f"every class hash must be {HASH_BYTES} bytes"
    if len(set(hashes)) != len(hashes):
        return "class hashes repeat"
    return None


def label_order(classes: list[str] | None, salt: bytes, hashes: list[bytes]) -> list[int] | None:
    """For a task with ``classes``: order[j] = the caller's label of this task's label j, or None when
    the two label sets differ."""
    if not classes or len(classes) != len(hashes):
        return None
    position = {h: i for i, h in enumerate(hashes)}
    order = [position.get(class_hash(salt, c)) for c in classes]
    return [o for o in order if o is not None] if all(o is not None for o in order) else None


def _claimed_val(record) -> float:
    learned = [e for e in record.events if e.get("event") == "learned" and isinstance(e.get("val_accuracy"), float)]
    return learned[-1]["val_accuracy"] if learned else 0.0


def matching_tasks(learner: ContinualLearner, salt: bytes, hashes: list[bytes]) -> list[dict]:
    """Every finished task of ``learner`` with exactly the requested label set (the serving side)."""
    out = []
    for t, record in enumerate(learner.tasks):
        if label_order(record.classes, salt, hashes) is not None:
            out.append({"task": t, "classes": record.num_classes, "val_accuracy": _claimed_val(record),
                        "train_samples": record.train_samples})
    return out


def task_parts(learner: ContinualLearner, task: int, salt: bytes, hashes: list[bytes]) -> dict[str, Tensor] | None:
    """Task ``task`` as it runs (backbone + query + head), the head's rows in the caller's label order;
    None when that task's label set is not the requested one."""
    if not 0 <= task < len(learner.tasks):
        return None
    order = label_order(learner.tasks[task].classes, salt, hashes)
    if order is None:
        return None
    parts = learner.extract_parts(part_names("task", learner.part_shapes(task)), task)
    rows = torch.empty(len(order), dtype=torch.long)
    rows[torch.tensor(order)] = torch.arange(len(order))  # caller label i <- this task's label rows[i]
    for name in ("head.weight", "head.bias"):
        parts[name] = parts[name][rows].clone()
    return parts


class LabelSet:
    """The receiver's side of one task's request: a fresh salt and its classes' hashes."""

    def __init__(self, classes: list[str], salt: bytes | None = None):
        self.salt = salt if salt is not None else new_salt()
        self.hashes = class_hashes(self.salt, list(classes))


def _match_one(client, cand: Candidate, labels: LabelSet) -> None:
    started = time.perf_counter()
    try:
        reply, nbytes = client.match_task(labels.salt, labels.hashes)
    except PeerCallError as exc:
        denied = exc.status == "PERMISSION_DENIED"
        cand.failure = skip("not_served", "does not serve task") if denied else call_failed(exc.status, exc.detail,
                                                                                             "match")
        return
    cand.probe.bytes = cand.bytes = nbytes
    cand.snapshot_version = int(reply.snapshot_version)
    matches = [m for m in reply.matches if m.task >= 0 and m.classes == len(labels.hashes)]
    if not matches:
        cand.probe.latency = round(time.perf_counter() - started, 4)
        cand.failure = skip("no_match", NO_MATCH)
        return
    try:  # which view its match was learned in (the same-view preference reads it)
        info = client.get_info()
    except PeerCallError as exc:
        cand.failure = call_failed(exc.status, exc.detail, "info")
        return
    cand.probe.modality = info.modality
    cand.probe.bytes += info.nbytes
    cand.bytes = cand.probe.bytes
    cand.probe.latency = round(time.perf_counter() - started, 4)
    claimed = [m.val_accuracy if math.isfinite(m.val_accuracy) and 0.0 <= m.val_accuracy <= 1.0 else 0.0
               for m in matches]
    best = max(range(len(matches)), key=lambda i: (claimed[i], -matches[i].task))
    cand.payload.extra = {"task": int(matches[best].task), "matches": len(matches),
                          "train_samples": max(0, int(matches[best].train_samples))}
    cand.scores.by_name[CLAIM_SCORE] = cand.scores.rank = float(claimed[best])


def fetch_task(client, cand: Candidate, learner: ContinualLearner, task: int, labels: LabelSet) -> bool:
    """The matched task's parts (``cand.payload.parts``), checked against this receiver's shapes; False
    (with ``cand.error``) when they could not be had."""
    got = cand.payload
    if got.parts is not None:
        return True
    started = time.perf_counter()
    try:
        matched = (got.extra or {})["task"]
        received, version = client.fetch_task(labels.salt, labels.hashes, matched,
                                              min_version=max(cand.snapshot_version, 1))
        if version != cand.snapshot_version:
            raise WireError(f"peer sent a task of snapshot {version}, it matched in snapshot {cand.snapshot_version}")
        got.bytes = sum(t.numel() * t.element_size() for t in received.values())
        cand.bytes += got.bytes
        got.parts = accept_parts("task", received, learner.part_shapes(task))
        got.origin = cand.peer
        got.origins = {n: cand.peer for n in got.parts}
    except PeerCallError as exc:
        cand.failure = call_failed(exc.status, exc.detail, "task fetch")
    except (WireError, ValueError) as exc:
        cand.failure = bad_payload(exc, "task fetch")
    got.seconds = round(time.perf_counter() - started, 4)
    return got.parts is not None


def match_stage(peers: list[tuple[str, str]], clients, labels: LabelSet, deadline: float) -> list[Candidate]:
    """MatchTask to every peer, in parallel under one deadline."""
    cands = [Candidate(p, a) for p, a in peers]
    _parallel(lambda c: _match_one(clients.get(c.address, c.peer), c, labels), cands, deadline, "task match")
    return sorted(cands, key=lambda c: c.peer)


def confirm(cands: list[Candidate], learner: ContinualLearner, task: int, data: TaskData, evaluate_as_borrowed) -> None:
    """``task_val`` of every fetched candidate: ``evaluate_as_borrowed(parts) -> (val, val_loss)``."""
    for c in cands:
        if c.error is None and c.payload.parts is not None:
            try:
                val, loss = evaluate_as_borrowed(c.payload.parts)
            except InjectionError as exc:
                c.failure = injection_failed(exc)
                continue
            c.scores.by_name[CONFIRM_SCORE] = val
            c.scores.by_name["task_val_loss"] = loss
            c.scores.rank = val - 1e-6 * loss  # ties (a few validation items) go to the lower loss


def shortlist_size(cfg: SelectionConfig, matched: int) -> int:
    if cfg.shortlist == "all":
        return matched
    return max(1, int(cfg.shortlist))


def decide_match(matched: list[Candidate], fetched: list[Candidate], view: str,
                 margin: float) -> tuple[Candidate | None, str]:
    """The confirmed match to borrow: the best of the receiver's own ``view`` unless the best of another
    view confirms better by more than ``margin`` (task_val, a fraction of the validation items)."""
    confirmed = [c for c in fetched if CONFIRM_SCORE in c.scores.by_name]
    chosen, reason = choose(confirmed)
    if chosen is None:
        return None, "no matched task could be fetched" if matched else "no peer learned this label set"
    own, _ = choose([c for c in confirmed if c.probe.modality == view])
    if own is not None and own is not chosen:
        lead = chosen.scores.by_name[CONFIRM_SCORE] - own.scores.by_name[CONFIRM_SCORE]
        if lead <= margin:
            return own, (f"{own.peer}: the best {view} match; {chosen.peer} ({chosen.probe.modality}) confirms only "
                         f"{lead:.4f} better, within same_view_margin {margin}")
        reason += f" ({chosen.probe.modality}: {lead:.4f} over the best {view} match, beyond same_view_margin {margin})"
    return chosen, f"{reason} ({CONFIRM_SCORE} as borrowed, among {len(fetched)} fetched of {len(matched)} matched)"


def _own_view_first(order: list[Candidate], view: str) -> list[Candidate]:
    """``order`` with its best match of ``view`` moved to the front, so the first fetched batch holds it."""
    own = next((c for c in order if c.probe.modality == view), None)
    return order if own is None else [own] + [c for c in order if c is not own]


def find_same_task(at: TaskAtHand, access: PeerAccess, cfg: SelectionConfig, evaluate_as_borrowed) -> Selection:
    """Stage 1: which peers learned this label set (MatchTask, every probed peer). Stage 2: the top
    ``cfg.shortlist`` matches by claimed accuracy are fetched and confirmed on this receiver's validation
    items; if every one of them fails, the next ones (twice as many each round)."""
    learner, task, data = at.learner, at.task, at.require_data()
    peers, clients, history = access.peers, access.clients, access.history
    started = time.perf_counter()
    if cfg.max_candidates and history is not None:
        history.forget({p for p, _ in peers})
        peers = history.pick(peers, cfg.max_candidates, task)
    labels = LabelSet(list(data.classes))
    probed = match_stage(peers, clients, labels, cfg.deadline)
    stages = {"match": _stage(probed, started, sum(c.probe.bytes for c in probed))}
    matched = [c for c in probed if c.error is None]
    order = _own_view_first(sorted(matched, key=lambda c: (-c.scores.by_name[CLAIM_SCORE], c.peer)),
                            learner.modality)
    second, size = time.perf_counter(), shortlist_size(cfg, len(order))
    fetched: list[Candidate] = []
    while order and not any(c.error is None for c in fetched):
        batch, order = order[:size], order[size:]
        for c in batch:
            c.scores.shortlisted = True
        _parallel(lambda c: fetch_task(clients.get(c.address, c.peer), c, learner, task, labels), batch,
                  cfg.deadline, "task fetch")
        fetched += batch
        size *= 2
    confirm(fetched, learner, task, data, evaluate_as_borrowed)
    chosen, reason = decide_match(matched, fetched, learner.modality, cfg.same_view_margin)
    stages["task"] = _stage([c for c in fetched if c.payload.parts is not None], second,
                            sum(c.payload.bytes for c in fetched))
    skipped = [c for c in probed if c.failure is not None and c.failure.skipped]
    if history is not None:
        history.record(probed, chosen.peer if chosen else None)
    return Selection(chosen, reason, [c for c in probed if c not in skipped], skipped, CONFIRM_SCORE, stages,
                     fetch=lambda c: fetch_task(clients.get(c.address, c.peer), c, learner, task, labels))
