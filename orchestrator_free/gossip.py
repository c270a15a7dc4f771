"""The membership loop: every interval, exchange peer lists with every known peer and seed (in parallel,
each call under its deadline), then run the failure detector. Runs in its own thread.

An answer is contact only when the channel proves the id that answered (``PeerClient.proves``); an
answer that does not (with TLS: a seed dialled before its id was known) names a candidate instead,
which the next round dials expecting that id."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc

from crossback.proto.v1 import peer_pb2 as pb

from .membership import DEFAULT_MAX_PEERS, Membership

MAX_REPLY_ENTRIES = 4 * DEFAULT_MAX_PEERS
from .transport import PROTOCOL, ClientPool


class GossipLoop:
    def __init__(self, membership: Membership, clients: ClientPool, self_entry: Callable[[], pb.PeerEntry],
                 peer_entries: Callable[[], list[pb.PeerEntry]], interval: float, on_error=lambda *a: None):
        self.membership, self.clients = membership, clients
        self.self_entry, self.peer_entries, self.interval, self.on_error = self_entry, peer_entries, interval, on_error
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gossip")
        self._thread = threading.Thread(target=self._run, name="gossip", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def round(self) -> None:
        message = pb.PeerList(protocol=PROTOCOL, sender=self.self_entry(), peers=self.peer_entries())
        list(self._pool.map(lambda address: self._exchange(address, message), self.membership.targets()))
        self.membership.check_failures()

    def _exchange(self, address: str, message: pb.PeerList) -> None:
        client = self.clients.get(address, self.membership.expected_id(address))
        try:
            reply = client.exchange_peers(message)
        except grpc.RpcError as exc:
            self.on_error(address, exc)
            return
        sender = reply.sender
        if sender.node_id and client.proves(sender.node_id):  # we dialled this address and this id answered
            self.membership.heard_from(sender.node_id, address, sender.snapshot_version)
        elif sender.node_id:
            self.membership.learn(sender.node_id, address)
        for entry in list(reply.peers)[:MAX_REPLY_ENTRIES]:
            self.membership.learn(entry.node_id, entry.address)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # the loop must outlive any single bad round
                self.on_error("round", exc)
            self._stop.wait(self.interval)
