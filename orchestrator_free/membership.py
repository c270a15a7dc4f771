"""Who is in the swarm: seed addresses, gossiped candidates, proven peers and a timeout failure detector.

Pure bookkeeping (no network): the gossip loop and the server feed it what they hear. Nothing anyone
*says* makes a peer: a node id or address named in a request or in someone's gossip is only a
*candidate address* to dial. A peer is admitted, or its address changed, only by a direct contact —
this node dialled the address and the node there answered with that id (``heard_from``). A proven peer
is *alive* while such contact happened within ``failure_timeout`` seconds, then *dead*; contact again
re-admits it. Bounds: at most ``max_peers`` proven peers and as many candidates, of which at most
CANDIDATES_PER_ROUND are dialled per round; a candidate that never answers is dropped after
CANDIDATE_ATTEMPTS dials or ``candidate_ttl``, a peer dead for ``dead_ttl`` is forgotten. Ids and
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
from dataclasses import dataclass
from typing import Callable

from .identity import valid_peer

DEFAULT_MAX_PEERS = 256
CANDIDATES_PER_ROUND = 8  # candidate addresses dialled per gossip round, least recently tried first
CANDIDATE_ATTEMPTS = 3  # a candidate that never answers is dropped after this many dials


@dataclass
class Peer:
    node_id: str
    address: str
    alive: bool = False
    last_seen: float | None = None  # monotonic time of the last direct contact
    snapshot_version: int = 0
    ever_alive: bool = False


class Membership:
    def __init__(self, node_id: str, address: str, seeds: list[str], failure_timeout: float,
                 on_event: Callable[..., None] = lambda *a, **k: None, clock: Callable[[], float] = time.monotonic,
                 max_peers: int = DEFAULT_MAX_PEERS, candidate_ttl: float | None = None, dead_ttl: float | None = None,
                 allow: frozenset[str] = frozenset()):
        self.node_id, self.address = node_id, address
        self.failure_timeout, self.on_event, self.clock = failure_timeout, on_event, clock
        self.max_peers, self.allow = max_peers, frozenset(allow)
        self.candidate_ttl = 3 * failure_timeout if candidate_ttl is None else candidate_ttl
        self.dead_ttl = max(60.0, 10 * failure_timeout) if dead_ttl is None else dead_ttl
        self.seeds = [s for s in seeds if s != address]
        self._peers: dict[str, Peer] = {}
        self._candidates: dict[str, list] = {}  # address -> [first named, last dialled, dials, claimed id]
        self._own: set[str] = {address}  # addresses that turned out to be this node
        self._dead_since: dict[str, float] = {}
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
            self._dead_since.pop(node_id, None)
        if not ever:
            self.on_event("peer_joined", peer=node_id, address=address)
        elif not was_alive:
            self.on_event("peer_returned", peer=node_id, address=address, snapshot_version=snapshot_version)

    def learn(self, node_id: str, address: str) -> None:
        """A peer named in a request or in someone's gossip: at most a candidate address to dial."""
        if not self._admits(node_id, address):
            return
        with self._lock:
            if node_id == self.node_id or address in self._own or address in self._candidates:
                return
            if any(p.address == address for p in self._peers.values()):
                return
            if len(self._candidates) < self.max_peers:
                self._candidates[address] = [self.clock(), -1.0, 0, node_id]

    def _evict_one_dead(self) -> bool:
        """Make room for a proven newcomer by forgetting the peer dead the longest (lock held)."""
        if not self._dead_since:
            return False
        oldest = min(self._dead_since, key=lambda n: (self._dead_since[n], n))
        del self._peers[oldest], self._dead_since[oldest]
        return True

    def check_failures(self) -> list[str]:
        now, dead, evicted = self.clock(), [], []
        with self._lock:
            for peer in self._peers.values():
                if peer.alive and peer.last_seen is not None and now - peer.last_seen > self.failure_timeout:
                    peer.alive = False
                    self._dead_since[peer.node_id] = now
                    dead.append(peer.node_id)
            for node_id, since in list(self._dead_since.items()):
                if now - since > self.dead_ttl:
                    del self._peers[node_id], self._dead_since[node_id]
                    evicted.append(node_id)
            self._candidates = {a: c for a, c in self._candidates.items()
                                if now - c[0] <= self.candidate_ttl and c[2] < CANDIDATE_ATTEMPTS}
        for node_id in dead:
            self.on_event("peer_dead", peer=node_id, silent_for=round(self.failure_timeout, 3))
        for node_id in evicted:
            self.on_event("peer_evicted", peer=node_id, dead_for=round(self.dead_ttl, 3))
        return dead

    def targets(self) -> list[str]:
        """Addresses to contact this round: every proven peer (dead ones too, to notice a return), every
        seed not yet known, and at most CANDIDATES_PER_ROUND candidates, least recently dialled first
        (so a flood of unanswering addresses cannot stretch a round past the failure timeout)."""
        with self._lock:
            known = {p.address for p in self._peers.values()}
            due = sorted(self._candidates, key=lambda a: (self._candidates[a][1], a))[:CANDIDATES_PER_ROUND]
            for address in due:
                self._candidates[address][1] = self.clock()
                self._candidates[address][2] += 1
            seeds = {s for s in self.seeds if s not in known}
            return sorted((known | seeds | set(due)) - self._own)

    def expected_id(self, address: str) -> str | None:
        """The node id this node expects to answer at ``address``: a proven peer's, else the id a
        candidate was named with, else None (a seed known only by its address)."""
        with self._lock:
            for peer in self._peers.values():
                if peer.address == address:
                    return peer.node_id
            candidate = self._candidates.get(address)
            return candidate[3] if candidate else None

    def peers(self) -> list[Peer]:
        """Proven peers only (what this node gossips on)."""
        with self._lock:
            return [Peer(**vars(p)) for p in sorted(self._peers.values(), key=lambda p: p.node_id)]

    def alive(self) -> list[Peer]:
        return [p for p in self.peers() if p.alive]

    def candidates(self) -> list[str]:
        with self._lock:
            return sorted(self._candidates)
