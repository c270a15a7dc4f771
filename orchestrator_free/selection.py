"""Backbone selection without an orchestrator (Algorithm 1 of CrossBack, steps 2-4).

For every alive candidate (compatible KV shapes, a finished task, within ``scope``), in parallel and
under one deadline: fetch its published K/V, compute the local DDV ``a = DDV(attnRep(M_loc, KV_k))``,
and ask the peer for ``b = DDV(attnRep(M_k, KV_k))`` on the identical probes.

Score (larger is better), documented once here:

    cos   = cosine(z(a), z(b))                      shape agreement of the z-scored DDVs, in [-1, 1]
    euc   = ||a - b||_2 / (||a||_2 + ||b||_2)       scale disagreement of the raw DDVs, in [0, 1]
    score = cos - euc_weight * euc

(z-scoring removes the common offset that makes raw all-positive DDVs look alike; after it the
Euclidean distance would only restate the cosine, so it is taken on the raw vectors.) Ties break by
peer id. Failed or late peers are skipped and reported; with no candidate there is no backbone.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from crossback.config.errors import PeerCallError, WireError
from crossback.config.selection import ProbeSpec, SelectionConfig
from crossback.models.borrowed import accept_parts, kv_parts, part_names
from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import KV_NAMES, kv_shapes
from crossback.models.task_data import TaskData
from crossback.orchestrator_free.ddv import ddv
from crossback.orchestrator_free.messages import PeerClients
from crossback.orchestrator_free.reasons import Reason, bad_payload, call_failed, late, skip
from crossback.transfer.pairs import NoPairs, Pairs, fetch_pairs

MAX_ORIGINS, MAX_NAME = 4096, 256  # bounds on a peer's advertised provenance
MAX_KV_DIM = 4096  # a foreign K/V (any-shape strategies) is at most this many rows and columns


@dataclass(frozen=True)
class Want:
    """What a selection asks every candidate for, as the strategy declares it (``Want.of``)."""

    borrow: str = "kv"  # the payload kind fetched in stage 2
    needs: frozenset[str] = frozenset()  # kinds a candidate must serve
    any_shape: bool = False  # candidates whose K/V shapes differ from ours are admitted (matrices of any shape)
    features: bool = False  # the payload is features on ``pairs`` (items both sides hold), not tensors
    pairs: Pairs | None = None

    @classmethod
    def of(cls, strategy, data=None) -> "Want":
        """``data``: the task's, from which a feature-borrowing strategy picks the items it asks about."""
        pairs = strategy.pairs_for(data) if strategy.borrows_features and data is not None else None
        return cls(strategy.borrow, frozenset(strategy.needs), strategy.any_shape, strategy.borrows_features, pairs)


def _want(want: Want | str) -> Want:
    return Want(borrow=want) if isinstance(want, str) else want


def can_average(strategy) -> bool:
    """Whether a strategy's payloads can be averaged: it borrows parts that run alone (mona's body
    travels with the peer's gradient for it, and a mean of bodies has none)."""
    return strategy.borrows_parts and strategy.extra is None


def check_combine(cfg: SelectionConfig, strategy) -> None:
    """ValueError when ``selection.combine: average`` meets a strategy that has no payload to average."""
    if cfg.combine == "average" and not can_average(strategy):
        raise ValueError(f"selection.combine: average averages borrowed payloads; transfer.strategy {strategy.name!r} "
                         "borrows none it could average (use crossback, or combine: best)")


@dataclass(frozen=True)
class TaskAtHand:
    """The task a receiver is deciding for: its learner, the task's index and its data (train, val, test)."""
    learner: ContinualLearner
    task: int
    data: TaskData | None = None  # None: a probe only (stage 1 needs the learner and the task alone)

    def require_data(self) -> TaskData:
        """The task's data, for a step that scores, adapts or evaluates on it."""
        if self.data is None:
            raise ValueError(f"task {self.task}: this step needs the task's data (TaskAtHand.data)")
        return self.data


@dataclass(frozen=True)
class PeerAccess:
    """Whom a selecting node can ask, and how: its id, the alive peers ``(node_id, address)``, a client
    pool (``clients.get(address, node_id)``), its swarm genesis id and its memory of earlier probes."""

    node_id: str
    peers: list[tuple[str, str]]
    clients: PeerClients
    genesis: str = ""
    history: Any = None  # candidates.ProbeHistory, or None


@dataclass
class Probe:
    """What stage 1 brought back from a candidate: its info, its published K/V and its DDV answer."""
    modality: str = "?"
    genesis: str = ""
    advertised: dict[str, str] = field(default_factory=dict, repr=False)  # the peer's provenance list
    kv: dict[str, Tensor] | None = field(default=None, repr=False)
    cos: float | None = None
    euc: float | None = None
    latency: float | None = None
    bytes: int = 0  # the K/V and DDV replies of stage 1
    reprobed: bool = False  # its snapshot moved between the stages: stage 1 ran again on the new one


@dataclass
class Payload:
    """What stage 2 brought (for a shortlisted, chosen or experiment candidate): the parts the strategy
    borrows with their provenance, and what a strategy's extra kind fetched for an arm (``fetch_extra``)."""
    parts: dict[str, Tensor] | None = field(default=None, repr=False)
    origins: dict[str, str] = field(default_factory=dict, repr=False)  # part name -> the node that learned it
    origin: str | None = None  # the node that learned most of what would be borrowed (provenance)
    arm_input: dict[str, Tensor] | None = field(default=None, repr=False)  # the parts plus the extra payload
    extra: dict | None = None  # the extra payload's summary (mona: the peer's outer-loss figures)
    bytes: int = 0
    seconds: float | None = None


@dataclass
class Scores:
    """How a candidate was ranked: every scoring function's value and compute time, the ranking score."""
    by_name: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    rank: float | None = None  # what the selection ranks by (None: not ranked)
    shortlisted: bool = False


@dataclass
class Candidate:
    """One peer in one selection: what each stage brought and how it scored. ``failure`` (None: it
    answered) says why it was skipped or failed; ``late``: it missed a stage's deadline (its call may
    still finish; its result is ignored)."""
    peer: str
    address: str
    probe: Probe = field(default_factory=Probe)
    payload: Payload = field(default_factory=Payload)
    scores: Scores = field(default_factory=Scores)
    snapshot_version: int = 0  # the snapshot everything it brought came from
    bytes: int = 0  # everything received from it in this selection (re-probes and extra payloads included)
    failure: Reason | None = None
    late: bool = False

    @property
    def error(self) -> str | None:
        """What the log shows of ``failure``."""
        return self.failure.text if self.failure is not None else None

    def public(self) -> dict:
        """What the log shows of it (one flat record)."""
        probe, payload, scores = self.probe, self.payload, self.scores
        return {"peer": self.peer, "address": self.address, "modality": probe.modality, "cos": probe.cos,
                "euc": probe.euc, "score": scores.rank, "latency": probe.latency, "bytes": self.bytes,
                "snapshot_version": self.snapshot_version, "scores": scores.by_name, "genesis": probe.genesis,
                "origin": payload.origin, "extra": payload.extra, "kv_bytes": probe.bytes,
                "payload_bytes": payload.bytes, "payload_seconds": payload.seconds, "shortlisted": scores.shortlisted,
                "late": self.late, "score_seconds": scores.seconds, "reprobed": probe.reprobed, "error": self.error,
                "error_kind": self.failure.kind if self.failure else None}


def zscore(v: Tensor) -> Tensor:
    std = v.std(unbiased=False)
    return (v - v.mean()) / std if float(std) > 0 else torch.zeros_like(v)


def score_ddvs(a: Tensor, b: Tensor, euc_weight: float) -> tuple[float, float, float]:
    a, b = a.double(), b.double()
    za, zb = zscore(a), zscore(b)
    denom = float(za.norm() * zb.norm())
    cos = float(za @ zb) / denom if denom > 0 else 0.0
    scale = float(a.norm() + b.norm())
    euc = float((a - b).norm()) / scale if scale > 0 else 0.0
    return cos, euc, cos - euc_weight * euc


def ddv_score(client, at: TaskAtHand, kv: dict[str, Tensor] | None, spec: ProbeSpec, euc_weight: float,
              version: int | None = None) -> tuple[tuple[float, float, float], int]:
    """((cos, euc, score), reply bytes): the local DDV through the peer's K/V (``kv``; None: through
    our own, for a peer whose K/V cannot run in our model) against the peer's own. ``version``: the
    snapshot the K/V came from; the peer's DDV must come from the same one."""
    reply = client.probe_ddv(spec)
    if version is not None and reply.snapshot_version != version:
        raise WireError(f"peer answered the probe from snapshot {reply.snapshot_version}, its K/V came from {version}")
    learner, task = at.learner, at.task
    local = ddv(learner, task, learner.extract_kv(task) if kv is None else kv, spec)
    remote = torch.tensor(list(reply.ddv), dtype=torch.float32)
    if remote.shape != local.shape or not bool(torch.isfinite(remote).all()):
        raise WireError(f"peer DDV has {remote.numel()} values (finite?), expected {local.numel()}")
    if not bool(torch.isfinite(local).all()):
        raise WireError("our DDV through the peer's K/V is not finite")
    return score_ddvs(local, remote, euc_weight), reply.nbytes


def _origins(info, peer: str) -> dict[str, str]:
    entries = info.origins
    if len(entries) > MAX_ORIGINS or any(len(o.name) > MAX_NAME or len(o.node_id) > MAX_NAME or not o.node_id
                                         for o in entries):
        raise WireError(f"peer {peer[:MAX_NAME]!r} advertises malformed provenance")
    return {o.name: o.node_id for o in entries}


def _dominant(origins: dict[str, str], parts: dict[str, Tensor]) -> str:
    weight: dict[str, int] = {}
    for name, t in parts.items():
        weight[origins[name]] = weight.get(origins[name], 0) + t.numel()
    return sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _bounded_matrix(t: Tensor) -> bool:
    return t.ndim == 2 and all(0 < d <= MAX_KV_DIM for d in t.shape)


def foreign_kv(kv: dict[str, Tensor], peer: str) -> dict[str, Tensor]:
    """A peer's K/V of shapes other than ours (for strategies that read any shape), checked for form."""
    if set(kv) != set(KV_NAMES):
        raise WireError(f"peer {peer[:MAX_NAME]!r} sent K/V tensors {sorted(kv)[:4]}, expected {list(KV_NAMES)}")
    shapes = {tuple(t.shape) for t in kv.values()}
    if len(shapes) != 1 or not all(_bounded_matrix(t) for t in kv.values()):
        raise WireError(f"peer {peer[:MAX_NAME]!r} sent K/V of shapes {sorted(shapes)}: not two equal matrices "
                        f"of at most {MAX_KV_DIM} x {MAX_KV_DIM}")
    return kv


def foreign_parts(kind: str, received: dict[str, Tensor], own: dict[str, tuple[int, ...]], peer: str) -> dict[str, Tensor]:
    """The matrices of payload ``kind`` from a peer whose shapes differ from ours (any-shape strategies)."""
    parts = {}
    for name in part_names(kind, own):
        t = received.get(name)
        if t is None or not _bounded_matrix(t):
            raise WireError(f"peer {peer[:MAX_NAME]!r}: payload {kind!r} lacks a matrix {name!r} of at most "
                            f"{MAX_KV_DIM} x {MAX_KV_DIM}")
        parts[name] = t
    return parts


def _eligibility(info, learner: ContinualLearner, cfg: SelectionConfig, needs: set[str], genesis: str,
                 any_shape: bool) -> Reason | None:
    """Why a peer (its ``PeerInfo``) is not a candidate (None: it is)."""
    expected = kv_shapes(learner.cfg)
    shapes = info.kv_shapes
    served = set(info.payload_kinds)
    if genesis and info.genesis != genesis:
        return skip("other_genesis", f"genesis {info.genesis or '(none)'} is not ours ({genesis})")
    if shapes != expected and not any_shape:
        return skip("kv_shapes", f"KV shapes {shapes} do not fit {expected}")
    if info.snapshot_version < 1:
        return skip("no_task_yet", "no finished task yet")
    if cfg.scope == "intra" and info.modality != learner.modality:
        return skip("out_of_scope", f"modality {info.modality} outside scope intra")
    if not needs <= served:
        return skip("not_served", f"does not serve {sorted(needs - served)} (serves {sorted(served)})")
    return None


def _probe_one(client, cand: Candidate, at: TaskAtHand, cfg: SelectionConfig, want: Want, genesis: str) -> Candidate:
    """Stage 1 of a selection: the candidate's info, eligibility, published K/V and DDV answer (where it
    serves them) — what every cheap score needs, a few % of the model."""
    started = time.perf_counter()
    expected = kv_shapes(at.learner.cfg)
    probe = cand.probe
    try:
        info = client.get_info()
        probe.modality, cand.snapshot_version, probe.genesis = info.modality, info.snapshot_version, info.genesis
        served = set(info.payload_kinds)
        required = {want.borrow} | set(want.needs) | cfg.kinds_needed()
        cand.failure = _eligibility(info, at.learner, cfg, required, genesis, want.any_shape)
        if cand.failure is None:
            probe.advertised = _origins(info, cand.peer)
            if "kv" in served:
                same = info.kv_shapes == expected
                kv, version = client.fetch_kv(expected=expected if same else None, min_version=1)
                probe.kv = kv if same else foreign_kv(kv, cand.peer)
                cand.snapshot_version = version
                probe.bytes += _nbytes(kv)
                if "ddv" in served:
                    (probe.cos, probe.euc, _), reply_bytes = ddv_score(client, at, kv if same else None, cfg.probe,
                                                                       cfg.euc_weight, version)
                    probe.bytes += reply_bytes
    except (PeerCallError, WireError, ValueError) as exc:
        _failed(cand, exc)
    probe.latency = round(time.perf_counter() - started, 4)
    cand.bytes += probe.bytes
    return cand


def _nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def fetch_parts(client, cand: Candidate, learner: ContinualLearner, task: int, want: Want | str,
                reprobe: Callable[[object, Candidate, int], None] | None = None) -> bool:
    """Stage 2, for a shortlisted or chosen candidate: what the strategy borrows (``cand.payload.parts``,
    with its provenance), from the snapshot its K/V came from. A peer that published a new snapshot since
    stage 1 is probed once more on it (``reprobe(client, cand, version)``, see ``reprobe_with``) and
    kept when its K/V and payload then agree. False (``cand.error`` says why) when it could not be had."""
    got = cand.payload
    if got.parts is not None:
        return True
    want = _want(want)
    started = time.perf_counter()
    try:
        got.parts = _fetch_parts(client, cand, learner.part_shapes(task), want, reprobe)
        got.origins = {n: cand.probe.advertised.get(n, cand.peer) for n in got.parts}
        got.origin = _dominant(got.origins, got.parts)
    except (PeerCallError, NoPairs, WireError, ValueError) as exc:
        _failed(cand, exc)
    cand.bytes += got.bytes
    got.seconds = round(time.perf_counter() - started, 4)
    if cand.error is not None:
        got.parts = None
    return cand.error is None


def _fetch_parts(client, cand: Candidate, own: dict[str, tuple[int, ...]], want: Want,
                 reprobe: Callable[[object, Candidate, int], None] | None) -> dict[str, Tensor]:
    """The parts ``want`` borrows from ``cand`` (``cand.payload.bytes``: what they took to receive)."""
    borrow, kv = want.borrow, cand.probe.kv
    if want.features:  # a teacher's features on our paired items (freqkd)
        if want.pairs is None:
            raise ValueError(f"borrowing {borrow} needs items to pair")
        parts, cand.snapshot_version, cand.payload.bytes = fetch_pairs(client, want.pairs, cand.peer)
        return parts
    if borrow == "kv" and kv is not None:
        return kv_parts(kv)
    received, version = client.fetch_payload(borrow, min_version=max(cand.snapshot_version, 1))
    if kv is not None and version != cand.snapshot_version:
        moved = f"peer sent {borrow} of snapshot {version}, its K/V came from {cand.snapshot_version}"
        if reprobe is None or cand.probe.reprobed:
            raise WireError(moved)
        cand.probe.reprobed = True  # it published between the stages (it learns too): once more, on the new one
        reprobe(client, cand, version)
        if version != cand.snapshot_version:
            raise WireError(f"{moved}; probed again, its K/V came from {cand.snapshot_version}")
    cand.snapshot_version = version
    cand.payload.bytes = _nbytes(received)
    fits = all(n in received and tuple(received[n].shape) == own[n] for n in part_names(borrow, own))
    return (foreign_parts(borrow, received, own, cand.peer) if want.any_shape and not fits
            else accept_parts(borrow, received, own))


def reprobe_with(learner: ContinualLearner, task: int, cfg: SelectionConfig):
    """Stage 1's tensors again for a candidate whose snapshot moved to ``version`` (or later): its K/V
    and, where it answered one, its DDV, both from the snapshot it serves now."""
    def reprobe(client, cand: Candidate, version: int) -> None:
        expected, probe = kv_shapes(learner.cfg), cand.probe
        same = probe.kv is not None and {n: tuple(t.shape) for n, t in probe.kv.items()} == expected
        kv, now = client.fetch_kv(expected=expected if same else None, min_version=version)
        probe.kv, cand.snapshot_version = (kv if same else foreign_kv(kv, cand.peer)), now
        cand.bytes += _nbytes(kv)
        if probe.cos is not None:
            (probe.cos, probe.euc, _), reply_bytes = ddv_score(client, TaskAtHand(learner, task), kv if same else None,
                                                               cfg.probe, cfg.euc_weight, now)
            cand.bytes += reply_bytes
    return reprobe


def _failed(cand: Candidate, exc: Exception) -> None:
    """Record why a probe or fetch failed, unless the deadline already did (a late call that fails when
    the selection closes its channels must not replace that reason)."""
    if cand.late:
        return
    if isinstance(exc, PeerCallError):
        cand.failure = call_failed(exc.status, exc.detail)
    elif isinstance(exc, NoPairs):
        cand.failure = skip("no_pairs", str(exc))
    else:
        cand.failure = bad_payload(exc)


def _parallel(fn, items: list, deadline: float, what: str) -> None:
    """``fn(item)`` for every item on at most 8 threads under one deadline; a late item's ``failure``
    says so. A hung peer must not hold the task loop."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=min(8, len(items)), thread_name_prefix="select")
    futures = {pool.submit(fn, item): item for item in items}
    _, unfinished = wait(futures, timeout=deadline)
    for f in unfinished:
        f.cancel()
        futures[f].late = True
        futures[f].failure = late(deadline, what)
        futures[f].scores.rank = None
    pool.shutdown(wait=False, cancel_futures=True)


def probe_candidates(at: TaskAtHand, access: PeerAccess, cfg: SelectionConfig, want: Want | str = "kv",
                     parts: bool = True) -> list[Candidate]:
    """Probe every peer of ``access`` in parallel under ``cfg.deadline``: its info, its K/V and DDV answer
    (stage 1, when it serves them), and with ``parts`` the payload ``want`` names (stage 2; a plain
    string: that payload kind). With a genesis id in ``access``, peers of another genesis are skipped;
    see ``Want`` for what the strategy's declarations admit and fetch."""
    want, clients = _want(want), access.clients
    cands = [Candidate(p, a) for p, a in access.peers]
    _parallel(lambda c: _probe_one(clients.get(c.address, c.peer), c, at, cfg, want, access.genesis),
              cands, cfg.deadline, "info, K/V and DDV")
    if parts:
        fetch_all(at.learner, at.task, [c for c in cands if c.error is None], clients, cfg, want)
    return sorted(cands, key=lambda c: c.peer)


def fetch_all(learner: ContinualLearner, task: int, cands: list[Candidate], clients, cfg: SelectionConfig,
              want: Want | str) -> None:
    """Stage 2 for every candidate in ``cands``, in parallel under ``cfg.deadline``."""
    want = _want(want)
    reprobe = reprobe_with(learner, task, cfg)
    _parallel(lambda c: fetch_parts(clients.get(c.address, c.peer), c, learner, task, want, reprobe),
              [c for c in cands if c.payload.parts is None], cfg.deadline, want.borrow)


def _value(name: str | None):
    """A candidate's score ``name`` (None: its ranking score), None where it has none."""
    return (lambda c: c.scores.rank) if name is None else (lambda c: c.scores.by_name.get(name))


def ranked(cands: list[Candidate], name: str | None = None) -> list[Candidate]:
    """The answered candidates that have score ``name`` (default: their ranking ``score``), best first,
    ties by peer id."""
    value = _value(name)
    return sorted((c for c in cands if c.error is None and value(c) is not None), key=lambda c: (-value(c), c.peer))


def choose(cands: list[Candidate], name: str | None = None) -> tuple[Candidate | None, str]:
    order = ranked(cands, name)
    if not order:
        return None, "no candidate answered" if cands else "no eligible peer"
    value = _value(name)
    best = order[0]
    margin = value(best) - value(order[1]) if len(order) > 1 else None
    label = f"highest {name}" if name else "highest score"
    return best, f"{label} {value(best):.4f}" + (f", margin {margin:.4f}" if margin is not None else ", only candidate")


def fetch_extra(client, cand: Candidate, strategy, own: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The payload an arm of a strategy with an ``extra`` kind runs on (``strategy.fetch_extra``, once
    per candidate, kept in ``cand.payload.arm_input``). Raises WireError / PeerCallError."""
    mine = cand.payload
    if mine.arm_input is not None:
        return mine.arm_input
    got = strategy.fetch_extra(client, cand.peer, mine.parts, cand.snapshot_version, own)
    mine.extra, cand.snapshot_version, mine.parts, mine.arm_input = got.summary, got.snapshot_version, got.parts, got.payload
    cand.bytes += got.nbytes
    return got.payload


def arm_payload(clients, cand: Candidate | None, strategy, own: dict[str, tuple[int, ...]]) -> dict[str, Tensor] | None:
    """What ``strategy`` adapts on for ``cand`` (None: no peer, or the extra payload could not be had,
    in which case ``cand.error`` says why and the candidate gets no arm)."""
    if cand is None or strategy.extra is None:
        return cand.payload.parts if cand else None
    try:
        return fetch_extra(clients.get(cand.address, cand.peer), cand, strategy, own)
    except PeerCallError as exc:
        cand.failure = call_failed(exc.status, exc.detail, strategy.extra)
    except (WireError, ValueError) as exc:
        cand.failure = bad_payload(exc, strategy.extra)
    return None
