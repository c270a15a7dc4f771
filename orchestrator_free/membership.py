"""Who is in the swarm: seed addresses, gossiped candidates, proven peers and a SWIM-like failure detector.

Pure bookkeeping (no network): the gossip loop and the server feed it what they hear. Nothing anyone
*says* makes a peer: a node id or address named in a request or in someone's gossip is only a
*candidate address* to dial. A peer is admitted, or its address changed, only by a direct contact —
this node dialled the address and the node there answered with that id (``heard_from``).

Failure detection does not need every node to contact every other each round. Each round the loop
probes ``fanout`` proven peers, least recently probed first (so each is probed every ⌈peers/fanout⌉
rounds), plus every *suspect*: a peer whose last probe failed directly and through ``indirect`` helper
peers (``probe_failed``). A suspect answering again is alive (``heard_from``, ``heard_indirectly``); one
that stays unreachable for ``failure_timeout`` seconds of probing is *dead*. Gossip that names a peer
dead (``rumour``) moves it to the front of this node's own probe queue; only if this node's own probe
and its helpers' then fail too does it die at once. Hearsay alone never kills.
``fanout=None`` probes every peer every round. Dead peers stay in the rotation (a return is noticed),
and one that calls this node itself (``learn`` with ``direct``) is dialled the next round, however long
it was gone: dead, or forgotten and then a fresh direct candidate.

Bounds: at most ``max_peers`` proven peers and as many candidates, of which at most
CANDIDATES_PER_ROUND are dialled per round; a candidate that never answers is dropped after
CANDIDATE_ATTEMPTS dials or ``candidate_ttl``, a peer dead for ``dead_ttl`` is forgotten.

Admission under a flood: each candidate remembers its *source* (who told us: a caller's certificate
id under TLS, else its IP address; a proven peer for what its gossip reply named), and one source holds
at most ``per_source`` hearsay candidates, so one sender cannot fill the table. A *direct* candidate —
the sender of a request that reached us, under TLS proven to hold that id's certificate — sits in a
small table of its own (at most DIRECT_PER_SOURCE per source, the newest kept) and is dialled ahead of
all hearsay. Among equals the order is least recently dialled, then a per-node hash: never address
order, which a flood of low-sorting addresses could win every round. Ids and
addresses are validated (``.identity``) before anything is stored. Without TLS the proof is only that
the address answers with the id: a process that controls an address can still claim any id there.
With TLS the gossip loop dials each address expecting an id (``expected_id``: the proven peer's, else
the id the candidate was named with, else none for a bare seed) and only a handshake against that id's
certificate counts as contact; ``allow`` (non-empty) admits only those ids, as peers or as candidates.

``on_event(name, **fields)`` reports ``peer_joined``, ``peer_dead``, ``peer_returned``, ``peer_evicted``.
"""
from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable

from crossback.config.node import DEFAULT_MAX_PEERS

from .identity import valid_peer

CANDIDATES_PER_ROUND = 8  # candidate addresses dialled per gossip round, least recently tried first
CANDIDATE_ATTEMPTS = 3  # a candidate that never answers is dropped after this many dials
PER_SOURCE = 16  # hearsay candidates one source may hold
DIRECT_PER_SOURCE = 2  # direct contacts one source may hold (the newest replace the oldest)
MAX_DIRECT = 64


@dataclass
class CandidateAddress:
    node_id: str  # the id it was named with
    named: float  # when first named
    source: str | None = None  # who named it (None: this node's own config or code)
    direct: bool = False  # the sender of a request that reached us, not hearsay
    dialled: float = -1.0
    dials: int = 0


@dataclass(frozen=True)
class ViewSettings:
    """How a view is bounded and timed (see the module's text): its peer and candidate table sizes, how
    long a candidate and a dead peer are kept (None: 3 and 10 failure timeouts), the probe fan-out (None:
    every peer), hearsay per source, the ids admitted (empty: any) and its clock."""
    max_peers: int = DEFAULT_MAX_PEERS
    candidate_ttl: float | None = None
    dead_ttl: float | None = None
    fanout: int | None = None
    per_source: int = PER_SOURCE
    allow: frozenset[str] = frozenset()
    clock: Callable[[], float] = time.monotonic


@dataclass
class Peer:
    node_id: str
    address: str
    alive: bool = False
    last_seen: float | None = None  # monotonic time of the last direct contact
    snapshot_version: int = 0
    ever_alive: bool = False
    suspect_since: float | None = None  # monotonic time of the first failed probe since the last contact
    last_probed: float = -1.0  # when this node last chose it as a probe target


class Membership:
    def __init__(self, node_id: str, address: str, seeds: list[str], failure_timeout: float,
                 on_event: Callable[..., None] = lambda *a, **k: None, view: ViewSettings = ViewSettings()):
        self.node_id, self.address = node_id, address
        self.per_source = view.per_source
        self.failure_timeout, self.on_event, self.clock = failure_timeout, on_event, view.clock
        self.max_peers, self.allow, self.fanout = view.max_peers, frozenset(view.allow), view.fanout
        self.candidate_ttl = 3 * failure_timeout if view.candidate_ttl is None else view.candidate_ttl
        self.dead_ttl = max(60.0, 10 * failure_timeout) if view.dead_ttl is None else view.dead_ttl
        self.seeds = [s for s in seeds if s != address]
        self._peers: dict[str, Peer] = {}
        self._candidates: dict[str, CandidateAddress] = {}  # address -> what we know of it
        self._own: set[str] = {address}  # addresses that turned out to be this node
        self._dead_since: dict[str, float] = {}
        self._rumoured: set[str] = set()  # peers someone's gossip calls dead: probed every round until contact
        self._returning: set[str] = set()  # dead peers that called us: probed next round
        self._lock = threading.Lock()

    def _admits(self, node_id: str, address: str) -> bool:
        return valid_peer(node_id, address) and (not self.allow or node_id in self.allow or node_id == self.node_id)

    def heard_from(self, node_id: str, address: str, snapshot_version: int = 0) -> None:
        """A direct, successful exchange: this node dialled ``address`` and ``node_id`` answered."""
        if not self._admits(node_id, address):
            return
        with self._lock:
            self._candidates.pop(address, None)
            if node_id == self.node_id:
                self._own.add(address)
                return
            peer = self._peers.get(node_id)
            if peer is None:
                if len(self._peers) >= self.max_peers and not self._evict_one_dead():
                    return
                peer = self._peers[node_id] = Peer(node_id, address)
            was_alive, ever = peer.alive, peer.ever_alive
            peer.address, peer.alive, peer.last_seen = address, True, self.clock()
            peer.snapshot_version, peer.ever_alive = max(0, int(snapshot_version)), True
            peer.suspect_since = None
            self._dead_since.pop(node_id, None)
            self._rumoured.discard(node_id)
            self._returning.discard(node_id)
        if not ever:
            self.on_event("peer_joined", peer=node_id, address=address)
        elif not was_alive:
            self.on_event("peer_returned", peer=node_id, address=address, snapshot_version=snapshot_version)

    def learn(self, node_id: str, address: str, source: str | None = None, direct: bool = False) -> None:
        """A peer named in a request or in someone's gossip: at most a candidate address to dial.
        ``source``: who named it (bounded per source); ``direct``: the request's own sender."""
        if not self._admits(node_id, address):
            return
        with self._lock:
            if node_id == self.node_id or address in self._own:
                return
            at = next((p for p in self._peers.values() if p.address == address), None)
            if at is not None:
                if direct and not at.alive:  # a dead or suspect peer calling again: dial it next round
                    self._returning.add(at.node_id)
                return
            known = self._candidates.get(address)
            if known is not None:
                if direct and not known.direct:  # heard of it, and now it called us itself: a fresh contact,
                    # with fresh dials and time to live (the hearsay's may be spent: it would be dropped)
                    self._admit_direct(address, CandidateAddress(node_id, self.clock(), source, True))
                return
            candidate = CandidateAddress(node_id, self.clock(), source, direct)
            if direct:
                self._admit_direct(address, candidate)
                return
            if len(self._candidates) >= self.max_peers:
                return
            if source is not None and sum(1 for c in self._candidates.values()
                                          if c.source == source and not c.direct) >= self.per_source:
                return
            self._candidates[address] = candidate

    def _admit_direct(self, address: str, candidate: CandidateAddress) -> None:
        """Keep a direct contact, making room among its source's own (lock held)."""
        mine = sorted((c.named, a) for a, c in self._candidates.items()
                      if c.direct and c.source == candidate.source and a != address)
        for _, oldest in mine[: max(0, len(mine) - DIRECT_PER_SOURCE + 1)]:
            del self._candidates[oldest]
        direct = sum(1 for a, c in self._candidates.items() if c.direct and a != address)
        if direct >= MAX_DIRECT:
            return
        if address not in self._candidates and len(self._candidates) >= self.max_peers:
            # the table is full of hearsay: a direct contact displaces the hearsay of the largest source
            counts: dict = {}
            for c in self._candidates.values():
                if not c.direct:
                    counts[c.source] = counts.get(c.source, 0) + 1
            if not counts:
                return
            biggest = max(counts, key=lambda k: (counts[k], str(k)))
            victim = max((c.named, a) for a, c in self._candidates.items() if not c.direct and c.source == biggest)[1]
            del self._candidates[victim]
        self._candidates[address] = candidate

    def heard_indirectly(self, node_id: str, snapshot_version: int = 0) -> None:
        """A helper peer reached ``node_id`` at the address it holds for it (our own probe had failed):
        alive, at the address we already have."""
        with self._lock:
            peer = self._peers.get(node_id)
            address = peer.address if peer else None
        if address is not None:
            self.heard_from(node_id, address, snapshot_version)

    def probe_failed(self, node_id: str, sent_at: float | None = None) -> bool:
        """A proven peer did not answer our probe (sent at ``sent_at``; None: now), nor any helper's. It
        is a suspect from when that probe was sent, probed every round from now on, and dead at the
        first failed probe once it has been one for ``failure_timeout`` seconds — or at once if a peer's
        gossip already called it dead (the rumour and our own failed probes agree). True when it dies
        now."""
        now = self.clock()
        with self._lock:
            peer = self._peers.get(node_id)
            if peer is None or not peer.alive:
                return False
            if peer.suspect_since is None:
                peer.suspect_since = now if sent_at is None else min(now, sent_at)
            corroborated = node_id in self._rumoured
            if now - peer.suspect_since < self.failure_timeout and not corroborated:
                return False
            self._rumoured.discard(node_id)
            peer.alive = False
            self._dead_since[node_id] = now
            silent = now - (peer.last_seen if peer.last_seen is not None else now)
        self.on_event("peer_dead", peer=node_id, silent_for=round(silent, 3),
                      reason="unreachable, and reported dead by a peer" if corroborated
                      else f"unreachable for {self.failure_timeout} s of probes")
        return True

    def rumour(self, node_id: str) -> None:
        """Someone's gossip says ``node_id`` is dead: if it is an alive peer of ours, probe it next round."""
        with self._lock:
            peer = self._peers.get(node_id)
            if peer is not None and peer.alive and len(self._rumoured) < self.max_peers:
                self._rumoured.add(node_id)

    def address_of(self, node_id: str) -> str | None:
        with self._lock:
            peer = self._peers.get(node_id)
            return peer.address if peer else None

    def helpers(self, exclude: str, k: int, rng) -> list[Peer]:
        """Up to ``k`` alive peers, other than ``exclude``, drawn at random to probe it for us."""
        alive = [p for p in self.alive() if p.node_id != exclude]
        return rng.sample(alive, min(k, len(alive)))

    def _evict_one_dead(self) -> bool:
        """Make room for a proven newcomer by forgetting the peer dead the longest (lock held)."""
        if not self._dead_since:
            return False
        oldest = min(self._dead_since, key=lambda n: (self._dead_since[n], n))
        del self._peers[oldest], self._dead_since[oldest]
        self._returning.discard(oldest)
        return True

    def check_failures(self) -> list[str]:
        """Forget peers dead past ``dead_ttl`` and candidates past their TTL or attempts; returns the
        peers forgotten (deaths themselves come from ``probe_failed``)."""
        now, evicted = self.clock(), []
        with self._lock:
            for node_id, since in list(self._dead_since.items()):
                if now - since > self.dead_ttl:
                    del self._peers[node_id], self._dead_since[node_id]
                    self._returning.discard(node_id)
                    evicted.append(node_id)
            self._candidates = {a: c for a, c in self._candidates.items()
                                if now - c.named <= self.candidate_ttl and c.dials < CANDIDATE_ATTEMPTS}
        for node_id in evicted:
            self.on_event("peer_evicted", peer=node_id, dead_for=round(self.dead_ttl, 3))
        return evicted

    def targets(self) -> list[str]:
        """Addresses to contact this round: ``fanout`` proven peers least recently probed first (all of
        them with ``fanout`` None; dead ones too, to notice a return), every suspect and rumoured peer,
        every seed not yet known, and at most CANDIDATES_PER_ROUND candidates, least recently dialled
        first (so a flood of unanswering addresses cannot stretch a round past the failure timeout)."""
        now = self.clock()
        with self._lock:
            # ties (peers never probed yet) in an order of this node's own, so that nodes which learned the
            # swarm together do not all probe the same peer in the same round and skip the same others
            peers = sorted(self._peers.values(),
                           key=lambda p: (p.last_probed, zlib.crc32(f"{self.node_id}/{p.node_id}".encode())))
            urgent = [p for p in peers if p.suspect_since is not None or p.node_id in self._rumoured
                      or p.node_id in self._returning]
            self._returning.clear()  # dialled once now; a later call of theirs asks again
            urgent_ids = {p.node_id for p in urgent}
            rest = [p for p in peers if p.node_id not in urgent_ids]
            chosen = urgent + (rest if self.fanout is None else rest[: max(0, self.fanout)])
            for peer in chosen:
                peer.last_probed = now
            known = {p.address for p in self._peers.values()}
            due = sorted(self._candidates, key=lambda a: (not self._candidates[a].direct, self._candidates[a].dialled,
                                                          zlib.crc32(f"{self.node_id}/{a}".encode())))
            due = due[:CANDIDATES_PER_ROUND]
            for address in due:
                self._candidates[address].dialled = now
                self._candidates[address].dials += 1
            seeds = {s for s in self.seeds if s not in known}
            return sorted(({p.address for p in chosen} | seeds | set(due)) - self._own)

    def peer_at(self, address: str) -> str | None:
        """The proven peer whose address this is (None: a seed or a candidate)."""
        with self._lock:
            return next((p.node_id for p in self._peers.values() if p.address == address), None)

    def expected_id(self, address: str) -> str | None:
        """The node id this node expects to answer at ``address``: a proven peer's, else the id a
        candidate was named with, else None (a seed known only by its address)."""
        with self._lock:
            for peer in self._peers.values():
                if peer.address == address:
                    return peer.node_id
            candidate = self._candidates.get(address)
            return candidate.node_id if candidate else None

    def peers(self) -> list[Peer]:
        """Proven peers only (what this node gossips on)."""
        with self._lock:
            return [Peer(**vars(p)) for p in sorted(self._peers.values(), key=lambda p: p.node_id)]

    def alive(self) -> list[Peer]:
        return [p for p in self.peers() if p.alive]

    def candidates(self) -> list[str]:
        with self._lock:
            return sorted(self._candidates)

    def direct_candidates(self) -> list[str]:
        with self._lock:
            return sorted(a for a, c in self._candidates.items() if c.direct)
