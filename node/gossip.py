"""The membership loop. Every interval: exchange a bounded sample of this node's view with the peers
``Membership.targets`` names (in parallel, each call under its deadline); for a proven peer that did not
answer, ask up to ``indirect`` other peers to probe it (``ProbePeer``) before calling it a failed probe;
then expire what the view no longer needs. Runs in its own thread.

Per node and round that is at most ``fanout`` + suspects + seeds + a few candidates exchanges, each
carrying at most ``entries`` peer entries, so membership traffic per node does not grow with the swarm.
An answer is contact only when the channel proves the id that answered (``PeerClient.proves``); an
answer that does not (with TLS: a seed dialled before its id was known) names a candidate instead,
which the next round dials expecting that id. An entry that says a peer is dead is a rumour: it only
makes this node probe that peer itself next round."""
from __future__ import annotations

import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc

from crossback.config.node import DEFAULT_ENTRIES, DEFAULT_INDIRECT, DEFAULT_MAX_PEERS
from crossback.node.transport import PROTOCOL, ClientPool
from crossback.orchestrator_free.membership import Membership
from crossback.proto.v1 import peer_pb2 as pb

MAX_REPLY_ENTRIES = 4 * DEFAULT_MAX_PEERS


def detection_bound(peers: int, fanout: int | None, interval: float, call_seconds: float,
                    failure_timeout: float) -> float:
    """Seconds within which every node that keeps its rounds going calls a peer that stopped answering
    dead, with ``peers`` other peers, ``fanout`` probed per round (None: all) and ``call_seconds`` the
    longest one gossip call can take (attempts x timeout + backoff). A round is at most the interval, its
    exchanges and its indirect probes (``interval + 2 * call_seconds``: a frozen peer's calls hang to
    their deadline); the silent peer is probed within ⌈peers / fanout⌉ rounds (the rotation), is a
    suspect from that probe's sending and dies at the first failed probe ``failure_timeout`` after it.
    A machine too loaded to keep its rounds going stretches every round by what it lags."""
    round_max = interval + 2 * call_seconds
    rotation = math.ceil(peers / fanout) if fanout else 1
    return rotation * round_max + failure_timeout + round_max


def sample_entries(entries: list[pb.PeerEntry], k: int, rng: random.Random) -> list[pb.PeerEntry]:
    """At most ``k`` entries: peers the view holds dead first (news of a failure travels fastest), then
    alive ones at random."""
    if len(entries) <= k:
        return entries
    dead = [e for e in entries if not e.alive]
    alive = [e for e in entries if e.alive]
    chosen = rng.sample(dead, min(k, len(dead)))
    return chosen + rng.sample(alive, min(k - len(chosen), len(alive)))


class GossipLoop:
    def __init__(self, membership: Membership, clients: ClientPool, self_entry: Callable[[], pb.PeerEntry],
                 peer_entries: Callable[[], list[pb.PeerEntry]], interval: float, on_error=lambda *a: None,
                 entries: int = DEFAULT_ENTRIES, indirect: int = DEFAULT_INDIRECT, seed: int = 0):
        self.membership, self.clients = membership, clients
        self.self_entry, self.peer_entries, self.interval, self.on_error = self_entry, peer_entries, interval, on_error
        self.entries, self.indirect = entries, indirect
        self._rng = random.Random(f"{membership.node_id}/{seed}")
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gossip")
        self._helpers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gossip-indirect")
        self._thread = threading.Thread(target=self._run, name="gossip", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._helpers.shutdown(wait=False, cancel_futures=True)

    def message(self) -> pb.PeerList:
        """This node's entry and a random sample of at most ``entries`` of its proven peers."""
        with self._rng_lock:
            peers = sample_entries(self.peer_entries(), self.entries, self._rng)
        return pb.PeerList(protocol=PROTOCOL, sender=self.self_entry(), peers=peers)

    def round(self) -> None:
        sent_at = self.membership.clock()
        message = self.message()
        targets = self.membership.targets()
        answered = list(self._pool.map(lambda address: self._exchange(address, message), targets))
        alive = {p.node_id for p in self.membership.alive()}
        failed = [self.membership.peer_at(a) for a, ok in zip(targets, answered) if not ok]
        # in parallel, so that a partition cutting off many peers does not stretch the round; a dead
        # peer's silence needs no second opinion
        list(self._pool.map(lambda n: self._indirect_or_failed(n, sent_at), [n for n in failed if n in alive]))
        self.membership.check_failures()

    def _exchange(self, address: str, message: pb.PeerList) -> bool:
        expected = self.membership.expected_id(address)
        client = self.clients.get(address, expected)
        try:
            reply = client.exchange_peers(message)
        except (grpc.RpcError, ValueError) as exc:  # ValueError: a channel closed while stopping
            self.on_error(address, exc)
            return False
        sender = reply.sender
        if sender.node_id and client.proves(sender.node_id):  # we dialled this address and this id answered
            self.membership.heard_from(sender.node_id, address, sender.snapshot_version)
        elif sender.node_id:
            self.membership.learn(sender.node_id, address)
        source = f"peer:{sender.node_id or address}"  # what one peer's replies name is bounded per peer
        for entry in list(reply.peers)[:MAX_REPLY_ENTRIES]:
            self.membership.learn(entry.node_id, entry.address, source)
            if not entry.alive:
                self.membership.rumour(entry.node_id)
        return bool(sender.node_id) and expected in (None, sender.node_id)

    def _indirect_or_failed(self, node_id: str, sent_at: float) -> None:
        """SWIM's indirect probe: helpers dial ``node_id`` at their own address for it; any answer keeps it."""
        with self._rng_lock:
            helpers = self.membership.helpers(node_id, self.indirect, self._rng)

        def ask(helper) -> int | None:
            try:
                reply = self.clients.get(helper.address, helper.node_id).probe_peer(node_id)
            except (grpc.RpcError, ValueError) as exc:
                self.on_error(helper.address, exc)
                return None
            return reply.snapshot_version if reply.reachable else None

        versions = [v for v in self._helpers.map(ask, helpers) if v is not None] if helpers else []
        if versions:
            self.membership.heard_indirectly(node_id, max(versions))
        else:
            self.membership.probe_failed(node_id, sent_at)

    def probe_for(self, node_id: str) -> tuple[bool, int]:
        """Probe a proven peer on a caller's behalf (the ProbePeer RPC): at the address *we* hold for it,
        never one the caller names. (reachable, its snapshot version); KeyError if we hold none."""
        address = self.membership.address_of(node_id)
        if address is None:
            raise KeyError(node_id)
        client = self.clients.get(address, node_id)
        try:
            reply = client.exchange_peers(self.message())
        except (grpc.RpcError, ValueError):  # ValueError: the node is stopping and closed its channels
            return False, 0
        if reply.sender.node_id != node_id or not client.proves(node_id):
            return False, 0
        self.membership.heard_from(node_id, address, reply.sender.snapshot_version)
        return True, int(reply.sender.snapshot_version)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # the loop must outlive any single bad round
                self.on_error("round", exc)
            self._stop.wait(self.interval)
