"""One selection in two stages: rank every candidate on K/V + DDV, fetch and confirm a shortlist.

Stage 1 (every probed candidate): its info, published K/V and DDV answer (where it serves them) — a
few % of the model each; the cheap score (``selection.score``) ranks them.
Stage 2 (the top ``selection.shortlist``): what the strategy borrows (a backbone: the whole model),
ranked by the payload score ``selection.confirm``; the winner's payload is the one adaptation uses,
fetched once. If every shortlisted payload fails, the next candidates are fetched (twice as many each
round). ``shortlist: 0`` keeps the cheap score's winner and fetches its payload alone (the next one if
that fails); ``shortlist: all`` fetches every candidate's; when no candidate has the cheap score
(kv_motion without a swarm genesis) every candidate is confirmed. A payload score as
``selection.score`` fetches every candidate's payload and ranks by it (a one-stage selection).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

from crossback.config.selection import SelectionConfig
from crossback.orchestrator_free.selection import (
    Candidate,
    PeerAccess,
    TaskAtHand,
    Want,
    choose,
    fetch_all,
    fetch_parts,
    probe_candidates,
    ranked,
    reprobe_with,
)

from .candidates import ProbeHistory
from .scores import Receiver, apply_score


@dataclass
class Selection:
    chosen: Candidate | None
    reason: str
    candidates: list[Candidate]  # answered or failed, not skipped
    skipped: list[Candidate]
    score_name: str  # the score that decided
    stages: dict = field(default_factory=dict)  # per stage: candidates, bytes, seconds
    # fetch(candidate) -> bool: its payload for an experiment arm, where the selection's own stage 2 is
    # not FetchPayload (the same-task path); None: the strategy's borrow kind by FetchPayload
    fetch: Callable[[Candidate], bool] | None = field(default=None, repr=False)

    @property
    def pool(self) -> list[Candidate]:
        """Candidates that answered and whose payload did not fail: what could have been chosen (the
        random arm draws from these)."""
        return [c for c in self.candidates if c.error is None]


def _stage(cands: list[Candidate], started: float, nbytes: int) -> dict:
    return {"candidates": len(cands), "bytes": nbytes, "seconds": round(time.perf_counter() - started, 4)}


def select(at: TaskAtHand, access: PeerAccess, cfg: SelectionConfig, strategy) -> Selection:
    """A selection among ``access.peers`` for the task at hand. ``access.history``: the node's memory of
    earlier selections, which orders the peers when at most ``cfg.max_candidates`` are probed (see
    .candidates)."""
    learner, task, data, clients = at.learner, at.task, at.data, access.clients
    started = time.perf_counter()
    history = access.history if access.history is not None else ProbeHistory()
    if cfg.max_candidates:
        history.forget({p for p, _ in access.peers})
        access = dataclasses.replace(access, peers=history.pick(access.peers, cfg.max_candidates, task))
    want = Want.of(strategy, data)
    probed = probe_candidates(at, access, cfg, want, parts=False)
    receiver = Receiver(learner, task, at.require_data(), cfg.euc_weight)
    answered = [c for c in probed if c.error is None]
    if cfg.cheap:
        apply_score(cfg.score, answered, receiver, cfg.log_scores)
    stages = {"probe": _stage(answered, started, sum(c.probe.bytes for c in probed))}
    second = time.perf_counter()
    shortlist, mode = shortlist_of(answered, cfg)
    fetch_all(learner, task, shortlist, clients, cfg, want)
    while mode == CONFIRM and not any(c.error is None for c in shortlist):
        # peers that win stage 1 and fail stage 2 must not deny the selection: the next ones, twice as
        # many each round (a few rounds, each under the deadline, even against many such peers)
        more = [c for c in ranked(answered) if not c.scores.shortlisted][: 2 * len(shortlist)]
        if not more:
            break
        for c in more:
            c.scores.shortlisted = True
        fetch_all(learner, task, more, clients, cfg, want)
        shortlist += more
    if mode == CHEAP:  # the cheap score alone: the payload of its best candidate that can hand it over
        next((c for c in ranked(answered)
              if fetch_parts(clients.get(c.address, c.peer), c, learner, task, want,
                             reprobe_with(learner, task, cfg))), None)
    else:
        name = cfg.score if mode == PAYLOAD else cfg.confirm
        apply_score(name, [c for c in shortlist if c.error is None], receiver, cfg.log_scores)
        rank = cfg.score if mode == CONFIRM else name  # what each candidate is listed as ranked by
        for c in shortlist:
            c.scores.rank = c.scores.by_name.get(rank) if c.error is None else None
    skipped = [c for c in probed if c.failure is not None and c.failure.skipped]  # stage 2 can skip too (freqkd)
    cands = [c for c in probed if c not in skipped]
    chosen, reason, name = decide(cands, shortlist, mode, cfg)
    fetched = [c for c in cands if c.payload.bytes or c.payload.parts is not None]
    stages["payload"] = _stage(fetched, second, sum(c.payload.bytes for c in cands))
    if chosen is not None and chosen.payload.parts is None:
        reason = f"{chosen.peer}: {chosen.error}"
        chosen = None
    history.record(probed, chosen.peer if chosen else None)
    return Selection(chosen, reason, cands, skipped, name, stages)


PAYLOAD, CHEAP, CONFIRM, UNRANKED = "payload", "cheap", "confirm", "unranked"  # how a selection decides


def shortlist_of(answered: list[Candidate], cfg: SelectionConfig) -> tuple[list[Candidate], str]:
    """(the candidates whose payload stage 2 fetches, how the selection decides):

    - ``payload``: a payload score ranks every answered candidate;
    - ``cheap``: ``shortlist: 0``, the cheap score alone (no shortlist: only the winner's payload);
    - ``confirm``: the cheap score's top ``cfg.shortlist`` (every candidate for ``all``), ranked by
      ``cfg.confirm``;
    - ``unranked``: no candidate has the cheap score (e.g. kv_motion without a swarm genesis): every
      answered candidate is confirmed."""
    if not cfg.cheap:
        shortlist, mode = answered, PAYLOAD
    elif not ranked(answered):
        shortlist, mode = answered, UNRANKED
    elif cfg.shortlist == 0:
        shortlist, mode = [], CHEAP
    else:
        top = None if cfg.shortlist == "all" else int(cfg.shortlist)
        shortlist, mode = ranked(answered)[:top], CONFIRM
    for c in shortlist:
        c.scores.shortlisted = True
    return shortlist, mode


def decide(cands: list[Candidate], shortlist: list[Candidate], mode: str,
           cfg: SelectionConfig) -> tuple[Candidate | None, str, str]:
    """(the chosen candidate, why, the score that decided) among ``cands`` (failed ones never win), from
    scores already computed. Shortlisted candidates the confirming score cannot judge (a payload of
    other shapes: any-shape strategies) are decided by the cheap score if none of them can be."""
    if mode in (PAYLOAD, CHEAP):
        return (*choose(cands), cfg.score)
    if not shortlist:  # nobody there, or nobody answered: nothing was ranked or confirmed
        return (*choose(cands), cfg.score)
    chosen, reason = choose(shortlist, cfg.confirm)
    if mode == UNRANKED:
        return chosen, f"{reason}: no candidate has {cfg.score}, so every one was confirmed", cfg.confirm
    if chosen is None:
        chosen, reason = choose(shortlist)
        return chosen, f"{reason}: no shortlisted candidate has {cfg.confirm}", cfg.score
    return chosen, f"{reason} among the top {len(shortlist)} by {cfg.score}", cfg.confirm
