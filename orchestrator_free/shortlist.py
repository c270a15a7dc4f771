"""One selection in two stages: rank every candidate on K/V + DDV, fetch and confirm a shortlist.

Stage 1 (every probed candidate): its info, published K/V and, where the score needs it, its DDV
answer — a few % of the model each; the cheap score (``selection.score``) ranks them.
Stage 2 (the top ``selection.shortlist``): what the strategy borrows (a backbone: the whole model),
ranked by the payload score ``selection.confirm``; the winner's payload is the one adaptation uses,
fetched once. ``shortlist: 0`` keeps the cheap score's winner and fetches its payload alone (the next
one if that fails); ``shortlist: all`` fetches every candidate's. A payload score as ``selection.score``
fetches every candidate's payload and ranks by it (a one-stage selection).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from crossback.models.learner import ContinualLearner
from crossback.models.methods import TaskData
from crossback.models.perceiver import kv_shapes

from .candidates import ProbeHistory
from .scores import Receiver, apply_score
from .selection import SKIPPED, Candidate, SelectionConfig, choose, fetch_all, fetch_parts, pairs_of, probe_candidates, ranked


@dataclass
class Selection:
    chosen: Candidate | None
    reason: str
    candidates: list[Candidate]  # answered or failed, not skipped
    skipped: list[Candidate]
    score_name: str  # the score that decided
    stages: dict = field(default_factory=dict)  # per stage: candidates, bytes, seconds

    @property
    def scored(self) -> list[Candidate]:
        """Candidates with a ranking score (the random arm draws from these)."""
        return [c for c in self.candidates if c.score is not None and c.error is None]


def _stage(cands: list[Candidate], started: float, nbytes: int) -> dict:
    return {"candidates": len(cands), "bytes": nbytes, "seconds": round(time.perf_counter() - started, 4)}


def select(learner: ContinualLearner, task: int, data: TaskData, peers: list[tuple[str, str]], clients,
           cfg: SelectionConfig, strategy, genesis: str = "", history: ProbeHistory | None = None) -> Selection:
    """``history``: the node's memory of earlier selections, which orders the peers when at most
    ``cfg.max_candidates`` are probed (see .candidates)."""
    started = time.perf_counter()
    history = history if history is not None else ProbeHistory()
    if cfg.max_candidates:
        history.forget({p for p, _ in peers})
        peers = history.pick(peers, cfg.max_candidates, task)
    probed = probe_candidates(learner, task, peers, clients, cfg, kv_shapes(learner.cfg), strategy.borrow, genesis,
                              strategy.any_shape, strategy.needs, parts=False)
    skipped = [c for c in probed if c.error and c.error.startswith(SKIPPED)]
    cands = [c for c in probed if c not in skipped]
    receiver = Receiver(learner, task, data, cfg.euc_weight)
    answered = [c for c in cands if c.error is None]
    if cfg.cheap:
        apply_score(cfg.score, answered, learner, task, data, cfg.euc_weight, cfg.log_scores, receiver)
    stages = {"probe": _stage(answered, started, sum(c.kv_bytes for c in cands))}
    second = time.perf_counter()
    pairs = pairs_of(strategy, data)
    fallback = cfg.cheap and answered and not ranked(answered)  # e.g. kv_motion without a swarm genesis
    if not cfg.cheap or cfg.shortlist == "all" or fallback:
        shortlist = answered
    else:
        shortlist = ranked(answered)[: cfg.shortlist]
    for c in shortlist:
        c.shortlisted = True
    fetch_all(learner, task, shortlist, clients, cfg, strategy.borrow, strategy.any_shape, pairs)
    if not cfg.cheap:
        name = cfg.score
        apply_score(name, shortlist, learner, task, data, cfg.euc_weight, cfg.log_scores, receiver)
        chosen, reason = choose(shortlist)
    elif shortlist and (cfg.shortlist != 0 or fallback):
        name = cfg.confirm
        apply_score(name, [c for c in shortlist if c.error is None], learner, task, data, cfg.euc_weight,
                    cfg.log_scores, receiver)
        for c in shortlist:  # apply_score ranks by the score it computed: keep the cheap one as the rank
            c.score = c.scores.get(cfg.score) if c.error is None else None
        chosen, reason = choose(shortlist, name)
        reason += (f": no candidate has {cfg.score}, so every one was confirmed" if fallback
                   else f" among the top {len(shortlist)} by {cfg.score}")
    else:
        name, chosen, reason = cfg.score, None, "no candidate answered" if cands else "no eligible peer"
        for c in ranked(answered):
            if fetch_parts(clients.get(c.address, c.peer), c, learner, task, strategy.borrow, strategy.any_shape, pairs):
                chosen, reason = choose([c] + [o for o in answered if o is not c and o.error is None])
                break
    fetched = [c for c in cands if c.payload_bytes or c.parts is not None]
    stages["payload"] = _stage(fetched, second, sum(c.payload_bytes for c in cands))
    if chosen is not None and chosen.parts is None:
        chosen, reason = None, f"{chosen.peer}: {chosen.error}"
    history.record(probed, SKIPPED, chosen.peer if chosen else None)
    return Selection(chosen, reason, cands, skipped, name, stages)
