"""The relay that shapes each simulated device's link: rates and latency measured over real TCP within
10 % of the configured values, a link changed at run time, partitions that blackhole and heal."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from crossback.config.scenario import Link
from crossback.sim.fidelity import measure_link
from crossback.sim.link_model import Direction, Shape
from crossback.sim.relay import Relay

LTE = Link("lte-test", up_mbit=8.0, down_mbit=20.0, latency_ms=20.0, jitter_ms=4.0)


@pytest.fixture
def relay():
    r = Relay(seed=1)
    yield r
    r.close()


def test_a_shaped_link_measures_within_ten_percent(relay):
    m = measure_link(relay, LTE, seconds=1.0)
    assert abs(m["rtt_ms"]["error"]) <= 0.10, m
    assert abs(m["up_mbit"]["error"]) <= 0.10, m
    assert abs(m["down_mbit"]["error"]) <= 0.10, m


def test_a_link_changed_at_run_time_changes_what_it_carries(relay):
    slow = Link("slow", up_mbit=2.0, down_mbit=2.0, latency_ms=40.0)
    before = measure_link(relay, LTE, seconds=0.8, name="dev")
    relay.set_link("dev", slow)
    after = _through(relay, "dev", 250_000)
    assert before["up_mbit"]["measured"] > 6.0
    assert 1.7 < after < 2.3, after  # 2 Mbit/s within 15 % once the link has been switched


def _through(relay: Relay, device: str, nbytes: int) -> float:
    """Mbit/s of an upload of ``nbytes`` through ``device``'s proxy face to a plain sink."""
    sink = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def drain():
        conn, _ = sink.accept()
        got = 0
        while got < nbytes:
            got += len(conn.recv(1 << 16))
        conn.sendall(b"k")
        done.set()
        conn.close()

    threading.Thread(target=drain, daemon=True).start()
    host, port = relay.devices[device].proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as c:
        c.sendall(f"CONNECT 127.0.0.1:{sink.getsockname()[1]} HTTP/1.1\r\n\r\n".encode())
        assert b" 200 " in c.recv(1024)
        t = time.perf_counter()
        c.sendall(b"x" * nbytes)
        c.recv(1)
        seconds = time.perf_counter() - t
    sink.close()
    return nbytes * 8 / seconds / 1e6


def _echo_server() -> tuple[socket.socket, str]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, f"127.0.0.1:{server.getsockname()[1]}"


def _connect(relay: Relay, src: str, dst: str) -> socket.socket:
    host, port = relay.devices[src].proxy.rsplit(":", 1)
    c = socket.create_connection((host, int(port)), timeout=5)
    c.sendall(f"CONNECT {relay.devices[dst].inbound} HTTP/1.1\r\n\r\n".encode())
    return c


def test_a_partition_blackholes_new_and_open_connections_until_the_heal(relay):
    server, address = _echo_server()
    free = Link("free")
    for device in ("a", "b", "c"):
        relay.add_device(device, free)
        host, port = address.rsplit(":", 1)
        relay.set_target(device, host, int(port))
    open_ab = _connect(relay, "a", "b")
    assert b" 200 " in open_ab.recv(1024)
    open_ab.sendall(b"ping")
    assert open_ab.recv(16) == b"ping"
    relay.partition(["a"], ["b"])
    time.sleep(0.1)
    open_ab.settimeout(0.6)
    open_ab.sendall(b"held")
    with pytest.raises(socket.timeout):
        open_ab.recv(16)  # the open connection delivers nothing across the cut
    new_ab = _connect(relay, "a", "b")
    new_ab.settimeout(0.6)
    with pytest.raises(socket.timeout):
        new_ab.recv(1024)  # a new one gets no answer at all
    other = _connect(relay, "a", "c")  # a device on neither side is still reachable
    assert b" 200 " in other.recv(1024)
    relay.heal(["a"], ["b"])
    open_ab.settimeout(5)
    assert open_ab.recv(16) == b"held"  # what was held arrives after the heal
    new_ab.settimeout(5)
    assert b" 200 " in new_ab.recv(1024)
    assert relay.counters()["a"]["blackholed"] == 1
    for s in (open_ab, new_ab, other, server):
        s.close()


def test_an_inbound_face_without_its_node_refuses_and_counts(relay):
    faces = relay.add_device("down", Link("free"))
    host, port = faces.inbound.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as c:
        assert c.recv(16) == b""
    time.sleep(0.05)
    assert relay.counters()["down"]["refused"] == 1


def test_the_link_model_queues_shares_and_keeps_order():
    import random

    d = Direction(Shape(rate=1000.0, latency=0.05, jitter=0.0, loss=0.0), random.Random(0))
    first = d.delivery(1000, now=0.0)  # one second on the wire, then the latency
    second = d.delivery(500, now=0.2)  # waits behind the first
    assert first == pytest.approx(1.05) and second == pytest.approx(1.55)
    lossy = Direction(Shape(rate=None, latency=0.01, jitter=0.0, loss=0.5), random.Random(0))
    late = [lossy.delivery(1448 * 4, now=0.0) for _ in range(200)]
    assert lossy.retransmits > 150 and max(late) >= 0.2  # a lost packet costs at least the minimum RTO


def test_a_kernel_shaped_link_from_a_namespace_measures_within_ten_percent():
    """As root: the probe in its own network namespace behind tc token buckets, the relay on the bridge
    adding only latency and jitter."""
    from crossback.sim import netns

    why = netns.unavailable()
    if why:
        pytest.skip(f"no network namespaces here: {why}")
    nets = netns.Namespaces(os.getpid())
    relay = Relay(host=nets.gateway, seed=1)
    try:
        m = measure_link(relay, LTE, seconds=1.0, nets=nets)
        assert relay.devices[next(iter(relay.devices))].kernel_rate
        (probe,) = nets.devices.values()
        shown = subprocess.run(["tc", "-n", probe.netns, "qdisc", "show", "dev", probe.device_if],
                               capture_output=True, text=True).stdout
        assert "tbf" in shown and "8Mbit" in shown, shown
    finally:
        relay.close()
        nets.close()
    for key in ("rtt_ms", "up_mbit", "down_mbit"):
        assert abs(m[key]["error"]) <= 0.10, m
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert probe.netns not in names, "the namespaces are removed"
