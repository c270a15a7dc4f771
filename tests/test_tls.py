"""Mutual TLS: only holders of a swarm certificate get in, every claimed node id is the caller's
certificate's, a dial proves the id it expects, and nothing falls back to plaintext."""
import subprocess
import sys

import grpc
import pytest

from crossback.node.certs import init_ca, issue
from crossback.config.errors import ConfigError
from crossback.node.health_probe import ProbeError, check, tls_context
from crossback.node.metrics import NodeMetrics
from crossback.config.node import TlsSettings
from crossback.node.tls import check_tls, load_tls
from crossback.node.transport import PROTOCOL, CallPolicy, PeerClient
from crossback.proto.v1 import peer_pb2 as pb

from conftest import node_events, start_inprocess_node, start_serving, stop_nodes, tiny_node_config, wait_for

POLICY = CallPolicy(timeout=3.0, attempts=1)
SERVICE = "crossback.v1.PeerService"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A swarm CA with nodes a-e, and a rogue CA that issued its own 'b'."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "swarm")
    for node_id in "abcde":
        issue(root / "swarm", node_id)
    init_ca(root / "rogue")
    issue(root / "rogue", "b")
    return root


def material(pki, node_id, folder="swarm", allow=()):
    return load_tls(TlsSettings(dir=str(pki / folder), allow=tuple(allow)), node_id)


@pytest.fixture(scope="module")
def a_metrics():
    return NodeMetrics("a", process=False)


@pytest.fixture(scope="module")
def node_a(pki, tmp_path_factory, a_metrics):
    address, membership, stop = start_inprocess_node(tmp_path_factory.mktemp("a"), "a", material(pki, "a"),
                                                     metrics=a_metrics)
    yield address, membership
    stop()


def refusals(metrics: NodeMetrics, reason: str) -> float:
    """PeerAuth's refusals of ``reason`` counted in a node's metrics."""
    return metrics.registry.value("crossback_requests_refused_total", by="peer_auth", reason=reason) or 0.0


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""


def test_certificate_files_are_checked_and_errors_name_the_key_and_file(pki, tmp_path):
    assert load_tls(TlsSettings(), "a") is None  # not configured: plaintext
    assert material(pki, "a").node_id == "a"
    with pytest.raises(ConfigError, match=r"node.tls.cert: cannot read .*zz.pem.*crossback certs"):
        material(pki, "zz")
    with pytest.raises(ConfigError, match=r"node.tls.cert: .*b.pem is not signed by the CA"):
        load_tls(TlsSettings(ca=str(pki / "swarm/ca.pem"), cert=str(pki / "rogue/b.pem"),
                             key=str(pki / "rogue/b.key")), "b")
    with pytest.raises(ConfigError, match=r"is the certificate of \['c'\], not of this node 'b'"):
        load_tls(TlsSettings(dir=str(pki / "swarm"), cert=str(pki / "swarm/c.pem")), "b")
    with pytest.raises(ConfigError, match=r"node.tls.key: .*c.key is not the key of the certificate"):
        load_tls(TlsSettings(dir=str(pki / "swarm"), key=str(pki / "swarm/c.key")), "b")
    with pytest.raises(ConfigError, match=r"node.tls.ca: .*a.pem is not a CA certificate"):
        load_tls(TlsSettings(dir=str(pki / "swarm"), ca=str(pki / "swarm/a.pem")), "a")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"node.tls.ca: .*junk.pem is not a PEM certificate"):
        load_tls(TlsSettings(dir=str(pki / "swarm"), ca=str(tmp_path / "junk.pem")), "a")
    with pytest.raises(ConfigError, match=r"node.tls.key: required"):
        check_tls(TlsSettings(ca="x", cert="y"), "a")
    with pytest.raises(ConfigError, match=r"node.tls.allow\[1\]"):
        check_tls(TlsSettings(dir="d", allow=("b", "../x")), "a")
    assert material(pki, "a", allow=["b"]).allow == {"a", "b"}  # a node always admits itself


def test_a_member_that_claims_its_own_id_is_answered_and_the_dial_proves_the_servers_id(pki, node_a):
    address, _ = node_a
    client = PeerClient(address, "b", POLICY, tls=material(pki, "b"), expected_id="a")
    try:
        assert client.get_info().node_id == "a" and client.proves("a") and not client.proves("c")
    finally:
        client.close()
    shadow = PeerClient(address, "b", POLICY, tls=material(pki, "b"), expected_id="c")  # c is not at a's address
    try:
        code, details = code_of(shadow.get_info)
        assert code == grpc.StatusCode.UNAVAILABLE and "Hostname" in details
    finally:
        shadow.close()


def test_a_certificate_from_another_ca_never_gets_past_the_handshake(pki, node_a):
    address, membership = node_a
    rogue = PeerClient(address, "b", POLICY, tls=material(pki, "b", "rogue"))
    try:
        code, _ = code_of(lambda: rogue.exchange_peers(pb.PeerList(
            protocol=PROTOCOL, sender=pb.PeerEntry(node_id="b", address="127.0.0.1:9"))))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert membership.candidates() == [] and membership.peers() == []  # its claim never arrived
    finally:
        rogue.close()


def test_a_valid_certificate_that_claims_another_nodes_id_is_refused(pki, node_a, a_metrics):
    address, membership = node_a
    before = refusals(a_metrics, "claims_other_id")
    liar = PeerClient(address, "c", POLICY, tls=material(pki, "b"))  # b's certificate, c's id
    try:
        code, details = code_of(liar.get_info)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "claims node id 'c'" in details and "certificate is 'b'" in details
        code, _ = code_of(lambda: liar.exchange_peers(pb.PeerList(
            protocol=PROTOCOL, sender=pb.PeerEntry(node_id="c", address="127.0.0.1:9"))))
        assert code == grpc.StatusCode.PERMISSION_DENIED and membership.candidates() == []
        code, details = code_of(lambda: liar.fetch_kv())
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        liar.close()
    anonymous = PeerClient(address, "", POLICY, tls=material(pki, "b"))  # claiming to be nobody is refused too
    try:
        assert code_of(anonymous.get_info)[0] == grpc.StatusCode.PERMISSION_DENIED
        view = anonymous.exchange_peers(pb.PeerList(protocol=PROTOCOL))  # an empty sender only reads the view
        assert view.sender.node_id == "a"
    finally:
        anonymous.close()
    assert refusals(a_metrics, "claims_other_id") - before == 4  # each refusal counted once in the node's metrics


def test_plaintext_and_tls_never_meet(pki, node_a, tmp_path):
    address, _ = node_a
    plain = PeerClient(address, "b", POLICY)
    try:
        assert code_of(plain.get_info)[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()
    with pytest.raises(ProbeError):
        check(address, SERVICE, 3.0)  # the stdlib health probe, plaintext
    swarm = pki / "swarm"
    assert check(address, SERVICE, 3.0, tls_context(swarm / "ca.pem", swarm / "b.pem", swarm / "b.key")) == "SERVING"
    rogue = pki / "rogue"
    with pytest.raises(ProbeError, match="TLS"):
        check(address, SERVICE, 3.0, tls_context(rogue / "ca.pem", rogue / "b.pem", rogue / "b.key"))
    plain_address, _, stop = start_inprocess_node(tmp_path, "p", None)
    try:
        tls_client = PeerClient(plain_address, "b", POLICY, tls=material(pki, "b"))
        try:
            assert code_of(tls_client.get_info)[0] == grpc.StatusCode.UNAVAILABLE  # no fallback either way
        finally:
            tls_client.close()
    finally:
        stop()


def test_garbage_before_the_handshake_is_dropped_and_the_node_keeps_serving(pki, node_a):
    """What a process without a certificate can still send: bytes to the TLS port (random, a plaintext
    HTTP/2 preface, a truncated ClientHello). Each connection is closed; Health answers throughout."""
    import random
    import socket

    address, _ = node_a
    host, port = address.rsplit(":", 1)
    rng = random.Random(0)
    blobs = [rng.randbytes(rng.randint(1, 4096)) for _ in range(100)]
    blobs += [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(64), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]
    swarm = pki / "swarm"
    context = tls_context(swarm / "ca.pem", swarm / "b.pem", swarm / "b.key")
    for i, blob in enumerate(blobs):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(blob)
            sock.settimeout(1)
            try:
                while sock.recv(4096):  # whatever the TLS layer answers (an alert), then the close
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        if i % 25 == 0:
            assert check(address, SERVICE, 3.0, context) == "SERVING"
    assert check(address, SERVICE, 3.0, context) == "SERVING"


def test_the_allow_list_refuses_other_members(pki, tmp_path):
    metrics = NodeMetrics("a", process=False)
    address, _, stop = start_inprocess_node(tmp_path, "a", material(pki, "a", allow=["b"]), metrics=metrics)
    try:
        for node_id, expected in (("b", None), ("c", grpc.StatusCode.PERMISSION_DENIED)):
            client = PeerClient(address, node_id, POLICY, tls=material(pki, node_id))
            try:
                if expected is None:
                    assert client.get_info().node_id == "a"
                else:
                    code, details = code_of(client.get_info)
                    assert code == expected and "allow-list" in details
            finally:
                client.close()
        assert refusals(metrics, "not_allowed") == 1
    finally:
        stop()


def test_cli_status_and_health_speak_tls_with_the_named_certificate(pki, node_a):
    address, _ = node_a
    cli = [sys.executable, "-m", "crossback.app.cli"]
    tls = ["--tls-dir", str(pki / "swarm"), "--as", "b"]
    status = subprocess.run(cli + ["status", "--target", address, *tls], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "node      a at" in status.stdout, status.stderr
    health = subprocess.run(cli + ["health", "--target", address, *tls], capture_output=True, text=True, timeout=60)
    assert health.returncode == 0 and "SERVING" in health.stdout
    plain = subprocess.run(cli + ["health", "--target", address], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin"})
    assert plain.returncode == 3
    missing = subprocess.run(cli + ["status", "--target", address, "--tls-dir", str(pki / "swarm")],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 2 and "--as" in missing.stderr


def test_tls_gossip_proves_every_id_and_a_members_false_claim_never_shadows_a_node(pki, tmp_path):
    """c hears (from member d, before it knows anyone) that 'd' is at a's address; a is c's seed.
    c dials a's address expecting d: the handshake fails, the claim expires, and a is admitted as a."""
    stops = []
    try:
        a_addr, a_view, stop = start_inprocess_node(tmp_path, "a", material(pki, "a"), interval=0.2)
        stops.append(stop)
        c_addr, c_view, stop = start_inprocess_node(tmp_path, "c", material(pki, "c"), seeds=[a_addr], interval=0.2)
        stops.append(stop)
        c_view.learn("d", a_addr)  # what member d's gossip said
        b_addr, b_view, stop = start_inprocess_node(tmp_path, "b", material(pki, "b"), seeds=[a_addr], interval=0.2)
        stops.append(stop)
        want = {"a": a_addr, "b": b_addr, "c": c_addr}
        for me, view in (("a", a_view), ("b", b_view), ("c", c_view)):
            wait_for(lambda v=view, m=me: {p.node_id: p.address for p in v.alive()}
                     == {k: x for k, x in want.items() if k != m}, 20, f"{me} knows the other two")
        assert all(p.node_id != "d" for p in c_view.peers())
    finally:
        for stop in stops:
            stop()


# ------------------------------------------------------------ a live TLS swarm of node processes

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}]


def test_a_three_node_tls_swarm_selects_backbones(pki, tmp_path):
    procs = {}
    try:
        def config(seed):
            cfg = tiny_node_config(seed, TASKS, 0.25, 2.0)
            cfg["node"]["tls"] = {"dir": str(pki / "swarm")}
            cfg["swarm"] = {"genesis": 5}
            cfg["transfer"] = {"borrow": "backbone"}
            cfg["selection"]["score"] = "logme"
            return cfg

        a_addr = start_serving(tmp_path, procs, "a", config(0), [])
        start_serving(tmp_path, procs, "b", config(1), [a_addr])
        start_serving(tmp_path, procs, "c", config(2), [a_addr])
        for node_id in "abc":
            (tls,) = node_events(tmp_path, node_id, "tls")
            assert tls["identity"] == node_id and not node_events(tmp_path, node_id, "unauthenticated")
        selections = node_events(tmp_path, "c", "backbone_selected")
        assert [s["task"] for s in selections] == ["a", "b"]
        assert selections[-1]["chosen"] in {"a", "b"}
        scored = {c["peer"] for c in selections[-1]["candidates"] if c.get("score") is not None}
        assert scored == {"a", "b"}  # both peers proven over TLS and probed
        joined = {e["peer"]: e["address"] for e in node_events(tmp_path, "a", "peer_joined")}
        assert set(joined) == {"b", "c"}
        plain = PeerClient(a_addr, "c", POLICY)
        try:
            assert code_of(plain.get_info)[0] == grpc.StatusCode.UNAVAILABLE
        finally:
            plain.close()
    finally:
        stop_nodes(procs)


def _flood(address: str, tls, stop, rounds: list) -> None:
    """An insider (member e's certificate) sends 1,023 fresh well-formed junk addresses every 0.5 s."""
    client = PeerClient(address, "e", CallPolicy(timeout=3.0, attempts=1), tls=tls)
    sender = pb.PeerEntry(node_id="e", address="127.0.0.1:9")
    n = 0
    try:
        while not stop.is_set():
            junk = [pb.PeerEntry(node_id=f"j{n + i}", address=f"127.0.0.{1 + (n + i) // 60000 % 250}:{1 + (n + i) % 60000}")
                    for i in range(1023)]
            n += 1023
            client.exchange_peers(pb.PeerList(protocol=PROTOCOL, sender=sender, peers=junk))  # answered OK
            rounds.append(n)
            stop.wait(0.5)
    finally:
        client.close()


@pytest.mark.parametrize("flooded", [False, True])
def test_a_joiner_is_admitted_within_two_gossip_rounds_during_a_candidate_flood(pki, tmp_path, flooded):
    import threading
    import time

    from crossback.orchestrator_free.membership import PER_SOURCE

    interval, stops, stop_flood, rounds = 0.25, [], threading.Event(), []
    flooder = None
    try:
        a_addr, a_view, stop = start_inprocess_node(tmp_path, "a", material(pki, "a"), interval=interval)
        stops.append(stop)
        if flooded:
            flooder = threading.Thread(target=_flood, args=(a_addr, material(pki, "e"), stop_flood, rounds))
            flooder.start()
            wait_for(lambda: len(rounds) >= 3, 10, "the flood is running")
            assert sum(1 for c in a_view.candidates() if c.startswith("127.0.0.")) <= PER_SOURCE + 2
        started = time.monotonic()
        b_addr, b_view, stop = start_inprocess_node(tmp_path, "b", material(pki, "b"), seeds=[a_addr],
                                                    interval=interval)
        stops.append(stop)
        wait_for(lambda: "b" in {p.node_id for p in a_view.alive()}, 10, "a admits the joiner")
        took = time.monotonic() - started
        # b's first round reaches a (its sender entry: a direct contact), a's next round dials it back
        assert took <= 2 * interval + 0.75, f"admitted after {took:.2f} s"
        if flooded:
            assert len(rounds) >= 3 and flooder.is_alive()  # the flood was still being answered
    finally:
        stop_flood.set()
        if flooder:
            flooder.join(10)
        for stop in stops:
            stop()
