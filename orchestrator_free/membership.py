"""Who is in the swarm: seed addresses, gossiped peer lists, heartbeats and a timeout failure detector.

Pure bookkeeping (no network): the gossip loop and the server feed it what they hear. A peer is
*alive* while it was heard from directly within ``failure_timeout`` seconds, then *dead*; hearing from
it again re-admits it. ``on_event(name, **fields)`` reports ``peer_joined``, ``peer_dead`` and
``peer_returned``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable


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
                 on_event: Callable[..., None] = lambda *a, **k: None, clock: Callable[[], float] = time.monotonic):
        self.node_id, self.address = node_id, address
        self.failure_timeout, self.on_event, self.clock = failure_timeout, on_event, clock
        self.seeds = [s for s in seeds if s != address]
        self._peers: dict[str, Peer] = {}
        self._lock = threading.Lock()

    def heard_from(self, node_id: str, address: str, snapshot_version: int = 0) -> None:
        """A direct, successful exchange with this peer."""
        if node_id == self.node_id or not node_id:
            return
        with self._lock:
            peer = self._peers.setdefault(node_id, Peer(node_id, address))
            was_alive, ever = peer.alive, peer.ever_alive
            peer.address, peer.alive, peer.last_seen = address or peer.address, True, self.clock()
            peer.snapshot_version, peer.ever_alive = snapshot_version, True
        if not ever:
            self.on_event("peer_joined", peer=node_id, address=address)
        elif not was_alive:
            self.on_event("peer_returned", peer=node_id, address=address, snapshot_version=snapshot_version)

    def learn(self, node_id: str, address: str) -> None:
        """A peer named in someone's gossip: remember it, but only direct contact makes it alive."""
        if node_id == self.node_id or not node_id or not address:
            return
        with self._lock:
            if node_id not in self._peers:
                self._peers[node_id] = Peer(node_id, address)

    def check_failures(self) -> list[str]:
        now, dead = self.clock(), []
        with self._lock:
            for peer in self._peers.values():
                if peer.alive and peer.last_seen is not None and now - peer.last_seen > self.failure_timeout:
                    peer.alive = False
                    dead.append(peer.node_id)
        for node_id in dead:
            self.on_event("peer_dead", peer=node_id, silent_for=round(self.failure_timeout, 3))
        return dead

    def targets(self) -> list[str]:
        """Addresses to contact this round: every known peer (dead ones too, to notice a return) and
        every seed not yet known by id."""
        with self._lock:
            known = {p.address for p in self._peers.values()}
            return sorted(known | {s for s in self.seeds if s not in known})

    def peers(self) -> list[Peer]:
        with self._lock:
            return [Peer(**vars(p)) for p in sorted(self._peers.values(), key=lambda p: p.node_id)]

    def alive(self) -> list[Peer]:
        return [p for p in self.peers() if p.alive]
