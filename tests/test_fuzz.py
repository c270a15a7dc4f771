"""A bounded hostile campaign against a live node process: every PeerService RPC gets random bytes,
messages with random or extreme field values, and streams cancelled as they start, eight at a time,
while Health is timed. ``CROSSBACK_FUZZ_REQUESTS`` (default 120 per RPC and kind) runs a longer one.

Asserts: the process lives; no UNKNOWN or INTERNAL status and no handler exception in its log; Health
stays SERVING and fast; the peer view stays bounded; RSS growth stays bounded; FetchKV's bytes are
unchanged afterwards."""
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import node_events, start_serving, tiny_node_config

from crossback.config.node import DEFAULT_MAX_PEERS
from crossback.proto.v1 import peer_pb2 as pb

REQUESTS = int(os.environ.get("CROSSBACK_FUZZ_REQUESTS", "120"))
SERVICE = pb.DESCRIPTOR.services_by_name["PeerService"]
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
STRINGS = ["", "a", "x" * 70, "é" * 40, "unix:/tmp/s", "127.0.0.1:1", "h:0", "kv", "backbone", "features",
           "emoji/0.2/crossback-public-v1", "\x00\x01", "b" * 5000]
INTS = [0, 1, -1, 2, 7, 255, 512, 1024, 2**31 - 1, -2**31, 2**62]
FLOATS = [0.0, -1.0, 0.1, 1e-30, 1e30, 3e38, float("nan"), float("inf"), -float("inf")]


def _value(field, rng: random.Random, depth: int):
    t = field.type
    if t == FD.TYPE_MESSAGE:
        return random_message(field.message_type._concrete_class, rng, depth + 1)
    if t == FD.TYPE_STRING:
        return rng.choice(STRINGS)
    if t == FD.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 16, 31, 32, 200, 3000]))
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_ENUM:
        return rng.choice([0, 1, 2, 7])
    value = rng.choice(INTS)
    unsigned = t in (FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64)
    bits = 32 if t in (FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_SINT32, FD.TYPE_FIXED32, FD.TYPE_SFIXED32) else 64
    return abs(value) % (2**bits) if unsigned else max(-2**(bits - 1), min(2**(bits - 1) - 1, value))


def random_message(cls, rng: random.Random, depth: int = 0):
    msg = cls()
    if depth > 2:
        return msg
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.is_repeated:
            values = [_value(field, rng, depth) for _ in range(rng.choice([0, 1, 3, 40]))]
            target = getattr(msg, field.name)
            if field.type == FD.TYPE_MESSAGE:
                for v in values:
                    target.add().CopyFrom(v)
            else:
                target.extend(values)
        elif field.type == FD.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(_value(field, rng, depth))
        else:
            setattr(msg, field.name, _value(field, rng, depth))
    if "protocol" in cls.DESCRIPTOR.fields_by_name and rng.random() < 0.7:
        msg.protocol = pb.PROTOCOL_VERSION_1  # get past the version check most of the time
    return msg


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    procs = {}
    cfg = tiny_node_config(0, [{"name": "a", "classes": ["0", "1", "2"]}], 0.5, 5.0)
    cfg["node"]["serve"] = ["kv", "ddv", "latents", "block", "backbone"]
    address = start_serving(root, procs, "target", cfg, [])
    yield root, address, procs["target"]
    procs["target"].terminate()
    procs["target"].wait(timeout=20)


def _kv_bytes(channel) -> bytes:
    call = channel.unary_stream(f"/{SERVICE.full_name}/FetchKV", request_serializer=pb.KVRequest.SerializeToString,
                                response_deserializer=pb.TensorChunk.FromString)
    return b"".join(c.data for c in call(pb.KVRequest(protocol=1, caller_id="check"), timeout=10))


def test_a_hostile_campaign_leaves_the_node_alive_fast_bounded_and_unchanged(node):
    root, address, proc = node
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    before_kv, rss_before = _kv_bytes(channel), _rss_kib(proc.pid)
    rng = random.Random(0)
    jobs = []
    for method in SERVICE.methods:
        path = f"/{SERVICE.full_name}/{method.name}"
        request_cls = method.input_type._concrete_class
        for i in range(REQUESTS):
            kind = ("raw", "message", "cancel")[i % 3]
            body = rng.randbytes(rng.choice([1, 7, 64, 900])) if kind == "raw" else random_message(request_cls, rng)
            jobs.append((path, method.server_streaming, kind, body))
    rng.shuffle(jobs)
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def fire(job):
        path, streaming, kind, body = job
        serialize = (lambda b: b) if kind == "raw" else type(body).SerializeToString
        factory = channel.unary_stream if streaming else channel.unary_unary
        call = factory(path, request_serializer=serialize, response_deserializer=lambda b: b)
        code = grpc.StatusCode.OK
        try:
            if streaming:
                stream = call(body, timeout=15)
                if kind == "cancel":
                    stream.cancel()
                for _ in stream:
                    pass
            else:
                call(body, timeout=15)
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            statuses[f"{path.rsplit('/', 1)[1]}:{code.name}"] = statuses.get(f"{path.rsplit('/', 1)[1]}:{code.name}", 0) + 1
        return code

    stop, latencies = threading.Event(), []

    def watch():
        while not stop.is_set():
            started = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=5)
            latencies.append((time.perf_counter() - started, reply.status))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(fire, jobs))
    finally:
        stop.set()
        watcher.join(10)
    assert proc.poll() is None, "the node died under the campaign"
    assert not FORBIDDEN & set(codes), {k: v for k, v in statuses.items() if "UNKNOWN" in k or "INTERNAL" in k}
    assert node_events(root, "target", "rpc_failed") == []  # no handler raised past its checks
    times = sorted(t for t, _ in latencies)
    p99 = times[int(0.99 * (len(times) - 1))]
    assert all(s == health_pb2.HealthCheckResponse.SERVING for _, s in latencies) and len(times) >= 3
    # 0.25 s, not the 0.1 s an idle machine meets (11 ms p99 over 8,000 requests): CI builds a Docker engine beside it
    assert p99 < 0.25, f"Health p99 {p99 * 1000:.0f} ms over {len(times)} checks"
    gossip = channel.unary_unary(f"/{SERVICE.full_name}/ExchangePeers", request_serializer=pb.PeerList.SerializeToString,
                                 response_deserializer=pb.PeerList.FromString)
    view = gossip(pb.PeerList(protocol=1, sender=pb.PeerEntry(node_id="check", address="127.0.0.1:9")), timeout=5)
    assert len(view.peers) <= DEFAULT_MAX_PEERS
    assert _kv_bytes(channel) == before_kv
    assert _rss_kib(proc.pid) - rss_before < 300 * 1024, "RSS grew by more than 300 MiB"
    channel.close()
