"""A node's Prometheus metrics: fed by its log, payloads, server and refusals, served over HTTP, and
bounded in series whatever callers and peers send."""
from __future__ import annotations

import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import start_inprocess_node, tiny_node_config
from prometheus_client.parser import text_string_to_metric_families

from crossback.config.errors import ConfigError, StateInUse
from crossback.config.node import write_node_config
from crossback.node.metrics import (
    ARMS,
    EVENTS,
    PEER_STATES,
    PHASES,
    REFUSERS,
    SECONDS,
    SELECTION_SECONDS,
    TRAFFIC_KINDS,
    NodeMetrics,
)
from crossback.node.metrics_http import MAX_CONNECTIONS, MAX_PER_ADDRESS, TIMEOUT, serve_metrics
from crossback.node.node_config import load_node_config
from crossback.node.rpc_metrics import METHODS, OTHER
from crossback.node.transport import CallPolicy, PeerClient
from crossback.orchestrator_free.reasons import KINDS, STATUS_CODES, bad_payload, call_failed, injection_failed, late, skip
from crossback.proto.v1 import peer_pb2 as pb
from crossback.proto.v1 import peer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "bench", "node", "orchestrator_free", "transfer", "models", "data")


ALLOWED = {"grpc_method": {*METHODS.values(), OTHER}, "grpc_code": {*STATUS_CODES, OTHER},
           "kind": {*TRAFFIC_KINDS, OTHER}, "event": {*EVENTS, OTHER}, "state": set(PEER_STATES),
           "by": {*REFUSERS, OTHER}, "reason": {*KINDS, *(r for rs in REFUSERS.values() for r in rs), OTHER},
           "phase": {*PHASES, OTHER}, "kept": {*ARMS, OTHER}, "result": {"chosen", "none"},
           "le": {*(repr(float(b)) for b in SECONDS + SELECTION_SECONDS), "+Inf"},
           "node_id": {"victim"}, "modality": {""}, "method": {""}, "software": {""}}


def sample(metrics: NodeMetrics, name: str, **labels) -> float:
    return metrics.registry.value(name, **labels) or 0.0


def test_every_event_the_code_writes_has_its_own_label():
    emitted = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            emitted |= set(re.findall(r'(?:emit|on_event)\(\s*"([a-z_]+)"', path.read_text(encoding="utf-8")))
    assert emitted == EVENTS


@pytest.mark.parametrize("reason, kind, text", [
    (skip("other_genesis", "genesis (none) is not ours (ab12)"), "other_genesis",
     "skipped: genesis (none) is not ours (ab12)"),
    (skip("no_task_yet", "no finished task yet"), "no_task_yet", "skipped: no finished task yet"),
    (skip("no_match", "learned no task with this label set"), "no_match",
     "skipped: learned no task with this label set"),
    (late(5.0, "probe"), "deadline", "no answer within the 5.0s deadline (probe)"),
    (bad_payload("truncated", "task fetch"), "bad_payload", "task fetch failed: bad payload: truncated"),
    (injection_failed("shapes differ"), "injection_failed", "injection failed: shapes differ"),
    (call_failed("UNAVAILABLE", "b is busy"), "refused", "UNAVAILABLE: b is busy"),
    (call_failed("PERMISSION_DENIED", "not on the allow-list", "match"), "refused",
     "match failed: PERMISSION_DENIED: not on the allow-list"),
    (call_failed("INTERNAL", "boom", "outer_grad"), "rpc_error", "outer_grad failed: INTERNAL: boom"),
    (call_failed("WHATEVER_A_PEER_SAYS", "hello"), "other", "WHATEVER_A_PEER_SAYS: hello"),
])
def test_every_reason_is_made_with_its_kind_and_renders_the_text_the_log_shows(reason, kind, text):
    assert (reason.kind, str(reason)) == (kind, text) and kind in KINDS
    assert reason.skipped == text.startswith("skipped:")


def test_the_log_records_drive_the_task_and_selection_counters():
    m = NodeMetrics("n", process=False)
    m.observe({"event": "task_started", "index": 1})
    assert sample(m, "crossback_task_index") == 1
    m.progress("compact3", 4, 5, 0.25)
    m.observe({"event": "backbone_selected", "chosen": "b", "seconds": 0.3, "bytes": 4096,
               "candidates": [{"peer": "b"}, {"peer": "c"}],
               "skipped": [{"peer": "d", "reason": "skipped: no finished task yet", "kind": "no_task_yet"},
                           {"peer": "e", "reason": "UNAVAILABLE: e is busy", "kind": "refused"}]})
    m.observe({"event": "transfer_done", "kept": "selected"})
    m.observe({"event": "task_finished", "index": 1, "accuracy": 0.75, "accuracies": [0.5, 0.75]})
    assert sample(m, "crossback_tasks_finished_total") == 1 and sample(m, "crossback_task_index") == -1
    assert sample(m, "crossback_task_accuracy") == 0.75 and sample(m, "crossback_average_accuracy") == 0.625
    assert sample(m, "crossback_train_epochs_total", phase="compact") == 1 and sample(m, "crossback_train_loss") == 0.25
    assert sample(m, "crossback_selections_total", result="chosen") == 1
    assert sample(m, "crossback_candidates_probed_total") == 4 and sample(m, "crossback_candidates_scored_total") == 2
    assert sample(m, "crossback_candidates_skipped_total", reason="no_task_yet") == 1
    assert sample(m, "crossback_candidates_skipped_total", reason="refused") == 1
    assert sample(m, "crossback_selection_bytes_total") == 4096
    assert sample(m, "crossback_transfers_total", kept="selected") == 1
    assert sample(m, "crossback_events_total", event="backbone_selected") == 1


def test_ten_thousand_hostile_values_through_every_feed_add_no_series():
    """Whatever a peer controls (ids, kinds, reasons, arm names, method-like strings) maps onto fixed labels."""
    m = NodeMetrics("n", process=False)

    def hostile(i: int) -> None:
        junk = f"evil-{i}-\u202e{'x' * (i % 7)}"
        m.observe({"event": junk, "peer": junk})
        m.observe({"event": "backbone_selected", "chosen": junk, "candidates": [{"peer": junk}],
                   "skipped": [{"peer": junk, "reason": f"{junk}: {junk}"}, {"peer": junk, "reason": i}, "x"],
                   "seconds": "slow", "bytes": junk})
        m.observe({"event": "transfer_done", "kept": junk})
        m.observe({"event": "task_finished", "accuracy": junk, "accuracies": [junk, None]})
        m.sent(junk, 10)
        m.fetched(f"{junk}_request", 10)
        m.refused(junk, junk)
        m.refused("peer_auth", junk)
        m.progress(junk, i, i, 0.5)

    for i in range(10):
        hostile(i)
    settled = m.series()
    for i in range(10, 10_000):
        hostile(i)
    assert m.series() == settled
    assert sample(m, "crossback_events_total", event="other") == 10_000
    assert sample(m, "crossback_payload_bytes_sent_total", kind="other") == 100_000


@pytest.fixture
def victim(tmp_path):
    metrics = NodeMetrics("victim", process=False)
    address, membership, stop = start_inprocess_node(tmp_path, "victim", metrics=metrics)
    yield address, metrics
    stop()


def test_a_grpc_flood_of_distinct_callers_peers_and_kinds_adds_no_series(victim):
    address, m = victim
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.PeerServiceStub(channel)
    raw = lambda method: channel.unary_unary(method, request_serializer=lambda b: b,  # noqa: E731
                                             response_deserializer=lambda b: b)
    proto = pb.PROTOCOL_VERSION_1

    def flood(first: int, count: int) -> None:
        calls, streams = [], []
        for i in range(first, first + count):
            calls += [stub.GetInfo.future(pb.InfoRequest(protocol=proto, caller_id=f"caller-{i}"), timeout=10),
                      stub.ExchangePeers.future(pb.PeerList(protocol=proto, sender=pb.PeerEntry(
                          node_id=f"peer-{i}", address=f"10.{i % 250}.0.1:{1000 + i}", alive=True)), timeout=10),
                      raw("/crossback.v1.PeerService/GetInfo").future(b"\xff" * (i % 5 + 1), timeout=10),
                      raw(f"/crossback.v1.PeerService/Made-Up-{i}").future(b"", timeout=10)]
            streams.append(stub.FetchPayload(pb.PayloadRequest(protocol=proto, caller_id=f"caller-{i}",
                                                               kind=f"kind-{i}"), timeout=10))
        for call in calls:
            call.exception()
        for stream in streams:
            with pytest.raises(grpc.RpcError):
                list(stream)

    try:
        flood(0, 500)
    finally:
        channel.close()
    for name, labels, _ in m.registry.samples():  # every label value is one of a fixed list, none a caller's string
        for key, value in labels.items():
            assert value in ALLOWED[key], f"{name}{{{key}={value!r}}}"
    handled = {(labels["grpc_method"], labels["grpc_code"]): value
               for name, labels, value in m.registry.samples() if name == "crossback_grpc_server_handled_total"}
    calls = lambda method: sum(v for (name, _), v in handled.items() if name == method)  # noqa: E731
    assert calls("ExchangePeers") == 500 and calls("FetchPayload") == 500 and calls("GetInfo") == 1000
    assert {code for name, code in handled if name == "FetchPayload"} <= {"INVALID_ARGUMENT", "UNAVAILABLE"}
    assert handled.get(("GetInfo", "INVALID_ARGUMENT"), 0) >= 500 - sample(m, "crossback_requests_refused_total",
                                                                          by="admission", reason="control")
    assert sample(m, "crossback_grpc_server_handling_seconds_count", grpc_method="GetInfo") == 1000
    assert sample(m, "crossback_payloads_sent_total", kind="membership") == handled.get(("ExchangePeers", "OK"))
    assert m.series() < 400


def test_a_client_counts_the_bytes_of_every_reply_by_kind(victim):
    address, _ = victim
    fetched: dict[str, int] = {}
    client = PeerClient(address, "me", CallPolicy(timeout=5.0, attempts=1),
                        on_fetched=lambda kind, n: fetched.__setitem__(kind, fetched.get(kind, 0) + n))
    try:
        info = client.get_info()
        reply = client.exchange_peers(pb.PeerList(protocol=pb.PROTOCOL_VERSION_1))
        with pytest.raises(grpc.RpcError):
            client.fetch_kv()  # no snapshot: nothing arrives, nothing is counted
    finally:
        client.close()
    assert info.node_id == "victim"
    assert fetched["membership"] == reply.ByteSize() and fetched["info"] > 0 and "kv" not in fetched


def test_the_endpoint_serves_the_text_format_and_bounds_open_connections():
    m = NodeMetrics("n")
    m.sent("kv", 123)
    server, address = serve_metrics("127.0.0.1:0", m.registry)
    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["crossback_payload_bytes_sent"].samples[0].value == 123
        assert "process_resident_memory_bytes" in text
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{address}/secrets", timeout=5)
        assert err.value.code == 404
        host, port = address.rsplit(":", 1)
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
        try:  # connections that send nothing hold back no scrape
            started = time.monotonic()
            assert urllib.request.urlopen(f"http://{address}/metrics", timeout=5).status == 200
            assert time.monotonic() - started < 1.0
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        bare = socket.create_connection((host, int(port)), timeout=5)
        bare.sendall(b"GET /metrics\n\n")  # a request line with bare newlines is read too
        assert bare.recv(100).startswith(b"HTTP/1.1 200 OK")
        bare.close()
        slow = socket.create_connection((host, int(port)), timeout=10)
        slow.sendall(b"GET /metrics HTTP/1.0\r\n")  # never finishes its request
        started = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - started <= TIMEOUT + 2  # dropped after the timeout
        slow.close()
        with pytest.raises(StateInUse, match="node.metrics.listen"):
            serve_metrics(address, m.registry)
    finally:
        server.close()


def _open_idle(address: str, count: int, sources: list[str]) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=5, source_address=(sources[i % len(sources)], 0))
            for i in range(count)]


def _scrape_seconds(address: str) -> float:
    started = time.monotonic()
    assert urllib.request.urlopen(f"http://{address}/metrics", timeout=5).status == 200
    return time.monotonic() - started


@pytest.mark.parametrize("addresses", [1, 100])
def test_a_scrape_gets_in_past_300_idle_connections_from_one_address_or_many(addresses):
    server, address = serve_metrics("127.0.0.1:0", NodeMetrics("n").registry)
    sources = ["127.0.0.1"] if addresses == 1 else [f"127.0.1.{i + 1}" for i in range(addresses)]
    idle = []
    try:
        idle = _open_idle(address, 300, sources)
        held = MAX_PER_ADDRESS if addresses == 1 else MAX_CONNECTIONS
        closed = []
        deadline = time.monotonic() + 20  # accepting is paced while young connections are evicted
        while len(closed) < 300 - held and time.monotonic() < deadline:
            closed += [s for s in select.select([s for s in idle if s not in closed], [], [], 0.1)[0]
                       if s.recv(1) == b""]
        while server.open_connections() != held and time.monotonic() < deadline:  # the last accept may be mid-way
            time.sleep(0.05)
        assert server.open_connections() == held, (server.open_connections(), len(closed))
        assert sorted(map(idle.index, closed)) == list(range(300 - held))  # the oldest went first
        assert max(_scrape_seconds(address) for _ in range(5)) < 1.0
    finally:
        for s in idle:
            s.close()
        server.close()


def test_a_scrape_gets_in_while_idle_connections_are_reopened_as_fast_as_they_are_dropped():
    server, address = serve_metrics("127.0.0.1:0", NodeMetrics("n").registry)
    sources = [f"127.0.2.{i + 1}" for i in range(50)]
    stop, reopened = threading.Event(), []

    def churn():
        conns = _open_idle(address, 300, sources)
        deadline = time.monotonic() + 20  # bounded however the test goes
        while not stop.is_set() and time.monotonic() < deadline:
            for s in select.select(conns, [], [], 0.05)[0]:
                conns.remove(s)
                s.close()
                conns += _open_idle(address, 1, sources)
                reopened.append(1)
        for s in conns:
            s.close()

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        # Opening 300 can stall on a full backlog while accepting is paced (a SYN is retried after 1 s),
        # so scrape only once the churn is under way, not after a fixed sleep.
        deadline = time.monotonic() + 15
        while len(reopened) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        churning_before = len(reopened)
        times = [_scrape_seconds(address) for _ in range(10)]
        time.sleep(0.3)
        churning_after = len(reopened)
    finally:
        stop.set()
        worker.join(25)
        server.close()
    assert churning_before >= 20 and churning_after > churning_before, (churning_before, churning_after)
    assert max(times) < 1.0, times


def test_the_text_format_parses_back_to_every_sample_with_prometheus_own_parser():
    m = NodeMetrics("n\\o\"de\n", modality="image", process=False)  # needs escaping
    m.handled("GetInfo", "OK", 0.003)
    m.handled("GetInfo", "OK", 7.0)
    m.handled("FetchKV", "UNAVAILABLE", 120.0)  # past the last bucket: only +Inf
    m.sent("kv", 4096)
    m.observe({"event": "backbone_selected", "chosen": None, "seconds": 0.2, "candidates": [], "skipped": []})
    m.loss.set(float("nan"))
    parsed = {(s.name, tuple(sorted(s.labels.items())), s.value)
              for family in text_string_to_metric_families(m.registry.render().decode()) for s in family.samples}
    ours = {(name, tuple(sorted(labels.items())), value) for name, labels, value in m.registry.samples()}
    nan = lambda rows: {r for r in rows if r[2] != r[2]}  # noqa: E731  (NaN != NaN)
    assert {r[:2] for r in nan(parsed)} == {r[:2] for r in nan(ours)} == {("crossback_train_loss", ())}
    assert parsed - nan(parsed) == ours - nan(ours)
    assert m.registry.value("crossback_grpc_server_handling_seconds_bucket", grpc_method="GetInfo", le="0.005") == 1
    assert m.registry.value("crossback_grpc_server_handling_seconds_bucket", grpc_method="FetchKV", le="60.0") == 0
    assert m.registry.value("crossback_grpc_server_handling_seconds_bucket", grpc_method="FetchKV", le="+Inf") == 1
    with pytest.raises(ValueError, match="crossback_payloads_sent_total"):
        m.payloads_sent.labels("kv", "extra")


def test_two_nodes_in_one_process_count_apart():
    a, b = NodeMetrics("a", process=False), NodeMetrics("b", process=False)
    a.observe({"event": "task_finished"})
    assert sample(a, "crossback_tasks_finished_total") == 1 and sample(b, "crossback_tasks_finished_total") == 0


def test_the_setting_comes_from_the_file_the_environment_or_the_flag(tmp_path):
    cfg = tiny_node_config(0, [{"name": "a", "classes": ["0", "1"]}], 0.5, 2.0)
    path = write_node_config(tmp_path / "n.yaml", {**cfg, "node": {**cfg["node"], "node_id": "n",
                                                                  "metrics": {"listen": "127.0.0.1:9100"}}})
    assert load_node_config(path, environ={}).node.metrics.listen == "127.0.0.1:9100"
    env = {"CROSSBACK_METRICS": "0.0.0.0:9200"}
    assert load_node_config(path, environ=env).node.metrics.listen == "0.0.0.0:9200"
    assert load_node_config(path, {"metrics": "[::]:9300"}, environ=env).node.metrics.listen == "[::]:9300"
    plain = write_node_config(tmp_path / "off.yaml", {**cfg, "node": {**cfg["node"], "node_id": "n"}})
    assert not load_node_config(plain, environ={}).node.metrics.enabled
    with pytest.raises(ConfigError, match=r"n\.yaml.*node\.metrics\.listen: '9100' is not host:port"):
        load_node_config(path, {"metrics": "9100"}, environ={})


def test_a_health_watch_stream_through_the_counting_interceptor_still_streams(victim):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address, m = victim
    channel = grpc.insecure_channel(address)
    try:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    assert sample(m, "crossback_grpc_server_handled_total", grpc_method="Health.Watch", grpc_code="OK") == 1
    assert sample(m, "crossback_grpc_server_handled_total", grpc_method="Health.Check", grpc_code="OK") == 1
