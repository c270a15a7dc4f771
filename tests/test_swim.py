"""SWIM-like failure detection between real in-process gRPC nodes: a peer this node cannot reach
itself stays alive while a helper reaches it (ProbePeer), dies once nobody can, and a helper probes
only peers it holds itself, at its own address for them."""
import time

import grpc
import pytest

from crossback.node.transport import PROTOCOL, CallPolicy, PeerClient
from crossback.proto.v1 import peer_pb2 as pb

from conftest import start_inprocess_node, wait_for

POLICY = CallPolicy(timeout=0.5, attempts=1)


def test_a_peer_unreachable_from_us_but_reachable_by_a_helper_stays_alive_and_dies_when_nobody_reaches_it(tmp_path):
    stops = {}
    try:
        b_addr, b_view, stops["b"] = start_inprocess_node(tmp_path, "b", interval=0.2, failure_timeout=1.0)
        c_addr, c_view, stops["c"] = start_inprocess_node(tmp_path, "c", seeds=[b_addr], interval=0.2,
                                                          failure_timeout=1.0)
        cut = {"on": False}

        def a_dials(address, expected):  # a's route to c can be cut; b's cannot
            target = "127.0.0.1:1" if cut["on"] and address == c_addr else address
            return PeerClient(target, "a", POLICY, expected_id=expected)

        a_addr, a_view, stops["a"] = start_inprocess_node(tmp_path, "a", seeds=[b_addr], interval=0.2,
                                                          failure_timeout=1.0,
                                                          client_factory=lambda a, e: _Switch(a, e, a_dials, cut))
        wait_for(lambda: {p.node_id for p in a_view.alive()} == {"b", "c"}, 20, "a knows b and c")
        cut["on"] = True
        time.sleep(3.0)  # three failure timeouts of a's own probes failing
        assert {p.node_id for p in a_view.alive()} == {"b", "c"}, "b's indirect probes keep c alive for a"
        stops.pop("c")()
        wait_for(lambda: "c" not in {p.node_id for p in a_view.alive()}, 20, "a calls c dead once b cannot reach it")
        assert {p.node_id for p in a_view.alive()} == {"b"}  # and nobody else died with it
    finally:
        for stop in stops.values():
            stop()


class _Switch:
    """A client that re-resolves its route on every call, so the test can cut a's link to c mid-run."""

    def __init__(self, address, expected, factory, cut):
        self.address, self.expected, self.factory, self.cut = address, expected, factory, cut
        self._clients = {}

    def _client(self):
        key = self.cut["on"]
        if key not in self._clients:
            self._clients[key] = self.factory(self.address, self.expected)
        return self._clients[key]

    def __getattr__(self, name):
        return getattr(self._client(), name)

    def close(self):
        for client in self._clients.values():
            client.close()


def test_probe_peer_answers_only_for_peers_it_holds(tmp_path):
    stops = []
    try:
        b_addr, _, stop = start_inprocess_node(tmp_path, "b", interval=0.2)
        stops.append(stop)
        c_addr, _, stop = start_inprocess_node(tmp_path, "c", seeds=[b_addr], interval=0.2)
        stops.append(stop)
        client = PeerClient(b_addr, "x", POLICY)
        try:
            def reachable():
                try:
                    return client.probe_peer("c").reachable
                except grpc.RpcError as exc:  # NOT_FOUND until b has proven c
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    return False

            wait_for(reachable, 20, "b probes c for a caller")
            for node_id, code in (("zz", grpc.StatusCode.NOT_FOUND), ("bad id", grpc.StatusCode.INVALID_ARGUMENT)):
                with pytest.raises(grpc.RpcError) as err:
                    client.probe_peer(node_id)
                assert err.value.code() == code, node_id
        finally:
            client.close()
        assert {f.name for f in pb.PeerProbeRequest.DESCRIPTOR.fields} == {"protocol", "caller_id", "node_id"}
        assert PROTOCOL == pb.PROTOCOL_VERSION_1  # no address field: a caller can never point a node at a target
    finally:
        for stop in stops:
            stop()


@pytest.mark.slow
def test_a_peer_back_after_a_minute_away_is_readmitted_within_seconds_of_its_announce(tmp_path):
    """Devices leave and come back: a peer dead for 60 s (evicted from the view by then) that starts
    again at its address and announces itself is a peer again within two gossip rounds and a reconnect
    (before: up to 36 s, gRPC's reconnect backoff to a long-dead address)."""
    stops = {}
    try:
        a_addr, a_view, stops["a"] = start_inprocess_node(tmp_path, "a", interval=0.5, failure_timeout=1.5, fanout=3)
        b_addr, _, stops["b"] = start_inprocess_node(tmp_path, "b", seeds=[a_addr], interval=0.5,
                                                     failure_timeout=1.5, fanout=3)
        wait_for(lambda: "b" in {p.node_id for p in a_view.alive()}, 20, "a admits b")
        stops.pop("b")()
        wait_for(lambda: "b" not in {p.node_id for p in a_view.alive()}, 20, "a calls b dead")
        time.sleep(60.0)
        started = time.monotonic()
        _, _, stops["b"] = start_inprocess_node(tmp_path, "b", seeds=[a_addr], interval=0.5, failure_timeout=1.5,
                                                fanout=3, listen=b_addr)
        wait_for(lambda: "b" in {p.node_id for p in a_view.alive()}, 20, "a admits b again")
        assert time.monotonic() - started < 3.0
    finally:
        for stop in stops.values():
            stop()
