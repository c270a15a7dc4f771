"""No cheap request freezes a node: Health/Watch streams hold no thread and are bounded, every RPC class
has threads no other class can take, and bursts are refused by class before Health ever is."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import tiny_config, wait_for

from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig
from crossback.models.methods import learn_task
from crossback.models.perceiver import kv_shapes
from crossback.config.model import TrainOptions
from crossback.node.admission import AdmissionLimits, ClassLimits
from crossback.models.persistence import save_checkpoint
from crossback.node.events import EventLog
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.membership import Membership
from crossback.node.transport import PROTOCOL, CallPolicy, PeerClient
from crossback.proto.v1 import peer_pb2 as pb


@pytest.fixture(scope="module")
def snapshot(digits_tasks, tmp_path_factory):
    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    learn_task(learner, digits_tasks[0], MethodConfig(), TrainOptions(epochs=1, batch_size=64))
    return Snapshot.from_checkpoint(save_checkpoint(tmp_path_factory.mktemp("adm") / "ckpt", learner, {}))


def start(tmp_path, snapshot, admission=None, servicer_hook=None):
    events = EventLog("n", tmp_path / "n.jsonl", console=None)
    # with events: the RpcGuard wrapper is in the chain too, and must keep Watch non-blocking
    server, port = bind("127.0.0.1:0", workers=6, admission=admission, events=events)
    address = f"127.0.0.1:{port}"
    servicer = PeerServicer(NodeIdentity("n", address, "image", "packnet", 32, kv_shapes(snapshot.learner.cfg)),
                            lambda: snapshot, Membership("n", address, [], 60.0), events)
    if servicer_hook:
        servicer_hook(servicer)
    serve(server, servicer)

    def stop():
        server.stop(grace=None)
        events.close()
    return server, address, stop


def health_ok(channel, n: int = 50, timeout: float = 2.0) -> int:
    """How many of ``n`` health checks answered SERVING within ``timeout`` each."""
    stub = health_pb2_grpc.HealthStub(channel)
    ok = 0
    for _ in range(n):
        try:
            ok += stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status == \
                health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            pass
    return ok


def open_watches(channel, n: int):
    stub = health_pb2_grpc.HealthStub(channel)
    return [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(n)]


def test_a_hundred_open_watch_streams_hold_no_worker(tmp_path, snapshot):
    server, address, stop = start(tmp_path, snapshot)
    channel = grpc.insecure_channel(address)
    streams = open_watches(channel, 100)
    try:
        firsts = [next(s).status for s in streams]  # every stream is open and answered
        assert firsts == [health_pb2.HealthCheckResponse.SERVING] * 100
        assert server.admission.open_watches() == 100
        assert health_ok(channel) == 50
        client = PeerClient(address, "g", CallPolicy(timeout=2.0, attempts=1))
        assert client.get_info().node_id == "n"
        assert client.exchange_peers(pb.PeerList(protocol=PROTOCOL)).sender.node_id == "n"
        assert client.fetch_kv()[1] == 1
        client.close()
        for s in streams:
            s.cancel()
        wait_for(lambda: server.admission.open_watches() == 0, 5, "closed streams counted down")
    finally:
        for s in streams:
            s.cancel()
        channel.close()
        stop()


def test_watch_streams_past_the_bounds_are_refused_and_health_still_answers(tmp_path, snapshot):
    limits = AdmissionLimits(watch_total=6, watch_per_caller=4)
    _, address, stop = start(tmp_path, snapshot, limits)
    channel = grpc.insecure_channel(address)
    streams = []
    try:
        for _ in range(4):  # one at a time: which one is refused is then known
            streams += open_watches(channel, 1)
            next(streams[-1])
        streams += open_watches(channel, 1)
        with pytest.raises(grpc.RpcError) as err:
            next(streams[4])
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per caller" in err.value.details()
        assert health_ok(channel, 10) == 10
    finally:
        for s in streams:
            s.cancel()
        channel.close()
        stop()


def test_a_burst_of_200_calls_is_answered_or_refused_by_class_and_never_refuses_health(tmp_path, snapshot):
    _, address, stop = start(tmp_path, snapshot)
    channel = grpc.insecure_channel(address)
    clients = [PeerClient(address, f"c{i}", CallPolicy(timeout=20.0, attempts=1)) for i in range(20)]
    done = threading.Event()
    health_results = []

    def keep_checking():
        while not done.is_set():
            health_results.append(health_ok(channel, 1))

    def outcome(call):
        try:
            call()
            return "ok"
        except grpc.RpcError as exc:
            return exc.code().name

    try:
        watcher = threading.Thread(target=keep_checking)
        watcher.start()
        with ThreadPoolExecutor(64) as pool:
            infos = list(pool.map(lambda i: outcome(clients[i % 20].get_info), range(200)))
            kvs = list(pool.map(lambda i: outcome(clients[i % 20].fetch_kv), range(200)))
        done.set()
        watcher.join()
    finally:
        done.set()
        for c in clients:
            c.close()
        channel.close()
        stop()
    assert infos == ["ok"] * 200  # the control class queues a burst this size
    assert "ok" in kvs and set(kvs) <= {"ok", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert len(health_results) >= 5 and all(health_results), health_results


def test_a_full_class_is_refused_at_once_while_other_classes_answer(tmp_path, snapshot):
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hook(servicer):
        original = servicer.GetInfo

        def slow_info(request, context):
            entered.release()
            release.wait(20)
            return original(request, context)
        servicer.GetInfo = slow_info

    limits = AdmissionLimits(control=ClassLimits(workers=2, queue=1))
    _, address, stop = start(tmp_path, snapshot, limits, hook)
    channel = grpc.insecure_channel(address)
    client = PeerClient(address, "c", CallPolicy(timeout=20.0, attempts=1))
    try:
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(client.get_info) for _ in range(3)]  # two running, one queued
            entered.acquire(timeout=10), entered.acquire(timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                PeerClient(address, "d", CallPolicy(timeout=5.0, attempts=1)).get_info()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "control calls" in err.value.details()
            assert health_ok(channel, 10) == 10  # health has threads of its own
            assert client.fetch_kv()[1] == 1  # and so do the expensive calls
            release.set()
            assert all(f.result().node_id == "n" for f in held)
    finally:
        release.set()
        client.close()
        channel.close()
        stop()
