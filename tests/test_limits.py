"""Bounded work per request: the expensive-call pool, ProbeDDV's cost budget, non-finite and
half-precision probe K/V; Health and gossip stay fast while the most expensive admissible probes run."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import kv_shapes
from crossback.config.model import TrainOptions
from crossback.models.persistence import save_checkpoint
from crossback.node.events import EventLog
from crossback.node.limits import Busy, CallLimiter
from crossback.config.node import CallLimits
from crossback.config.node import DEFAULT_PROBE_BUDGET
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.config.selection import ProbeSpec
from crossback.orchestrator_free.ddv import ddv
from crossback.orchestrator_free.membership import Membership
from crossback.node.transport import PROTOCOL, CallPolicy, PeerClient
from crossback.proto.v1 import peer_pb2 as pb

from conftest import tiny_config
from crossback.sim.source_address import FromAddress

LIMITS = CallLimits(slots=2, waiting=4, per_caller=2, wait=20.0)
# the most expensive spec the default budget admits at C = 32
MAX_SPEC = ProbeSpec(seed=1, pair_count=512, token_count=DEFAULT_PROBE_BUDGET // (512 * 32))


def test_the_pool_admits_slots_plus_waiting_and_refuses_the_rest_at_once():
    limiter = CallLimiter(CallLimits(slots=1, waiting=1, per_caller=1, wait=5.0))
    release, entered = threading.Event(), threading.Event()

    def hold():
        with limiter.admit("a"):
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    with pytest.raises(Busy, match="caller 'a'"):  # one in flight for a already
        with limiter.admit("a"):
            pass
    waiter_done = threading.Event()

    def wait_then_hold():
        with limiter.admit("b"):
            waiter_done.wait(5)

    waiter = threading.Thread(target=wait_then_hold)
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(Busy, match="running or waiting"):  # one running, one waiting: full
        with limiter.admit("c"):
            pass
    assert time.monotonic() - started < 0.1  # refused at once, holding nothing
    release.set()
    holder.join(5)
    time.sleep(0.2)  # the waiter now holds the slot
    assert limiter.in_flight() == 1
    waiter_done.set()
    waiter.join(5)
    with pytest.raises(RuntimeError):  # a failing body releases its slot and its caller count
        with limiter.admit("d"):
            raise RuntimeError()
    assert limiter.in_flight() == 0
    short = CallLimiter(CallLimits(slots=1, waiting=1, per_caller=2, wait=0.1))
    with short.admit("x"), pytest.raises(Busy, match="no free slot"):
        with short.admit("y"):
            pass


@pytest.fixture(scope="module")
def node(digits_tasks, tmp_path_factory):
    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    learn_task(learner, digits_tasks[0], MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1)),
               TrainOptions(epochs=1, batch_size=64))
    root = tmp_path_factory.mktemp("limits")
    snap = Snapshot.from_checkpoint(save_checkpoint(root / "ckpt", learner, {}))
    server, port = bind("127.0.0.1:0", workers=LIMITS.threads + 8)
    address = f"127.0.0.1:{port}"
    identity = NodeIdentity("n", address, "image", "packnet", 32, kv_shapes(learner.cfg))
    events = EventLog("n", root / "n.jsonl", console=None)
    membership = Membership("n", address, [], 60.0)
    serve(server, PeerServicer(identity, lambda: snap, membership, events, limiter=CallLimiter(LIMITS)))
    yield address, snap
    server.stop(grace=None)
    events.close()


def test_a_probe_over_the_budget_is_refused_naming_it(node):
    address, _ = node
    client = PeerClient(address, "rx")
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.probe_ddv(ProbeSpec(pair_count=512, token_count=1024))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "512 x 1024 x 32" in err.value.details() and str(DEFAULT_PROBE_BUDGET) in err.value.details()
        assert len(client.probe_ddv(MAX_SPEC).ddv) == 512  # the largest admissible one is answered
    finally:
        client.close()


def test_half_precision_inline_kv_is_probed_and_huge_values_are_refused(node):
    address, snap = node
    client = PeerClient(address, "rx")
    spec = ProbeSpec(seed=2, pair_count=8, token_count=4, kv_source="inline")
    try:
        half = {n: t.to(torch.float16) for n, t in snap.kv.items()}
        reply = client.probe_ddv(spec, inline_kv=half)
        expected = ddv(snap.learner, snap.task, {n: t.float() for n, t in half.items()}, spec)
        assert torch.allclose(torch.tensor(list(reply.ddv)), expected, atol=1e-6)
        huge = {n: torch.full_like(t, 3e38) for n, t in snap.kv.items()}
        with pytest.raises(grpc.RpcError) as err:
            client.probe_ddv(spec, inline_kv=huge)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in err.value.details()
    finally:
        client.close()


def _latency(call, stop: threading.Event) -> list[float]:
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        time.sleep(0.01)
    return times


def _eight_probes(clients: list[PeerClient]) -> list:
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(c.probe_ddv, MAX_SPEC) for c in clients]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(len(f.result().ddv))
        except grpc.RpcError as exc:
            outcomes.append((exc.code(), exc.details()))
    return outcomes


def test_health_and_gossip_stay_fast_while_eight_maximum_cost_probes_run(node):
    """Eight callers at eight addresses: slots + waiting answered, the rest refused at once."""
    address, _ = node
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    gossip = PeerClient(address, "g")
    hosts = [FromAddress(address, f"127.0.0.{i + 2}") for i in range(8)]
    clients = [PeerClient(h.address, f"p{i}", CallPolicy(timeout=60.0, attempts=1)) for i, h in enumerate(hosts)]
    stop = threading.Event()
    check = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)  # noqa: E731
    peers = pb.PeerList(protocol=PROTOCOL, sender=pb.PeerEntry(node_id="g", address="127.0.0.1:1"))
    try:
        with ThreadPoolExecutor(2) as pool:
            watchers = [pool.submit(_latency, check, stop), pool.submit(_latency, lambda: gossip.exchange_peers(peers), stop)]
            time.sleep(0.3)
            outcomes = _eight_probes(clients)
            stop.set()
            health_times, gossip_times = (w.result() for w in watchers)
    finally:
        stop.set()
        for c in [gossip, *clients]:
            c.close()
        for h in hosts:
            h.close()
        channel.close()
    assert outcomes.count(512) == LIMITS.threads, outcomes  # two running, four waiting: all answered
    refused = [o for o in outcomes if o != 512]
    assert len(refused) == 8 - LIMITS.threads and all(  # the rest refused at once
        code == grpc.StatusCode.UNAVAILABLE and "running or waiting" in why for code, why in refused), refused
    for times in (health_times, gossip_times):
        assert len(times) >= 5 and sorted(times)[int(0.95 * len(times))] < 0.1, times


def test_one_address_claiming_eight_ids_gets_one_callers_share(node):
    """Fairness is keyed on what a caller cannot choose (its address here, its certificate under TLS)."""
    address, _ = node
    clients = [PeerClient(address, f"claimed-{i}", CallPolicy(timeout=60.0, attempts=1)) for i in range(8)]
    try:
        outcomes = _eight_probes(clients)
    finally:
        for c in clients:
            c.close()
    assert outcomes.count(512) == LIMITS.per_caller, outcomes
    refused = [o for o in outcomes if o != 512]
    assert all(code == grpc.StatusCode.UNAVAILABLE and "caller 'ip:127.0.0.1' already has 2" in why
               for code, why in refused), refused


def test_a_malformed_caller_id_is_refused_before_anything_is_done_or_logged(node, tmp_path):
    address, _ = node
    for caller in ("x" * 5000, "bad id", "a/b"):
        client = PeerClient(address, caller)
        try:
            for call in (client.get_info, client.fetch_kv, lambda: client.probe_ddv(ProbeSpec())):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "caller_id" in err.value.details()
                assert len(err.value.details()) < 300
        finally:
            client.close()


def test_gossip_with_a_malformed_entry_is_refused_and_nothing_of_it_is_kept(tmp_path):
    server, port = bind("127.0.0.1:0", workers=4)
    address = f"127.0.0.1:{port}"
    membership = Membership("n", address, [], 60.0)
    events = EventLog("n", tmp_path / "n.jsonl", console=None)
    serve(server, PeerServicer(NodeIdentity("n", address, "image", "packnet", 32, {}), lambda: None, membership, events))
    client = PeerClient(address, "g")
    good = pb.PeerEntry(node_id="g", address="127.0.0.1:9999")
    try:
        for bad in (pb.PeerEntry(node_id="x", address="unix:/tmp/s"), pb.PeerEntry(node_id="y" * 100, address="h:1")):
            with pytest.raises(grpc.RpcError) as err:
                client.exchange_peers(pb.PeerList(protocol=PROTOCOL, sender=good, peers=[good, bad]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        many = [pb.PeerEntry(node_id=f"p{i}", address=f"127.0.0.1:{i + 1}") for i in range(2000)]
        with pytest.raises(grpc.RpcError) as err:
            client.exchange_peers(pb.PeerList(protocol=PROTOCOL, sender=good, peers=many))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert membership.candidates() == [] and membership.peers() == []  # nothing kept from a refused request
        reply = client.exchange_peers(pb.PeerList(protocol=PROTOCOL, sender=good, peers=many[:3]))
        assert list(reply.peers) == []  # claims are not gossiped on: only proven peers are
        assert membership.peers() == [] and len(membership.candidates()) == 4  # candidates to dial
    finally:
        client.close()
        server.stop(grace=None)
        events.close()


def test_undecodable_bodies_get_invalid_argument_and_handler_failures_reach_the_log(tmp_path):
    from crossback.node.events import read_events

    log = tmp_path / "n.jsonl"
    events = EventLog("n", log, console=None)
    server, port = bind("127.0.0.1:0", workers=4, events=events)
    address = f"127.0.0.1:{port}"

    def broken_snapshot():
        raise RuntimeError("the snapshot store is gone")

    serve(server, PeerServicer(NodeIdentity("n", address, "image", "packnet", 32, {}), broken_snapshot,
                               Membership("n", address, [], 60.0), events))
    channel = grpc.insecure_channel(address)
    try:
        for method in ("GetInfo", "FetchKV", "ExchangePeers"):
            call = (channel.unary_stream if method == "FetchKV" else channel.unary_unary)(
                f"/crossback.v1.PeerService/{method}")
            with pytest.raises(grpc.RpcError) as err:
                result = call(b"\xff\xff\xff\xff", timeout=5)
                list(result) if method == "FetchKV" else None
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        client = PeerClient(address, "rx")
        with pytest.raises(grpc.RpcError) as err:
            client.get_info()
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        client.close()
    finally:
        channel.close()
        server.stop(grace=None)
        events.close()
    (failure,) = [e for e in read_events(log) if e["event"] == "rpc_failed"]
    assert failure["method"].endswith("GetInfo") and "snapshot store is gone" in failure["traceback"]


def test_the_memory_budget_admits_by_estimated_bytes_and_refuses_what_alone_exceeds_it():
    from crossback.node.limits import TooLarge

    limiter = CallLimiter(CallLimits(slots=4, waiting=0, per_caller=4, wait=0.2, memory_mib=8))
    with pytest.raises(TooLarge, match="more than the node's budget of 8 MiB"):
        with limiter.reserve(9 << 20):
            pass
    with limiter.reserve(5 << 20):
        assert limiter.reserved() == 5 << 20
        with pytest.raises(Busy, match="5 of 8 MiB held"):  # does not fit beside it within `wait`
            with limiter.reserve(4 << 20):
                pass
        with limiter.reserve(3 << 20):  # fits
            assert limiter.reserved() == 8 << 20
    assert limiter.reserved() == 0
    patient = CallLimiter(CallLimits(wait=5.0, memory_mib=8))
    holding = threading.Event()

    def hold():
        with patient.reserve(6 << 20):
            holding.set()
            time.sleep(0.2)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    started = time.monotonic()
    with patient.reserve(4 << 20):  # waits for the holder to finish, then fits
        assert time.monotonic() - started >= 0.1 and patient.reserved() == 4 << 20
    holder.join(5)


def test_a_chunked_probe_answers_what_one_forward_pass_answers(node):
    from crossback.orchestrator_free import ddv as ddv_module

    _, snap = node
    spec = ProbeSpec(seed=3, pair_count=150, token_count=4)
    chunked = ddv(snap.learner, snap.task, snap.kv, spec)
    x, x_prime = ddv_module.probe_pairs(spec, snap.learner.cfg.token_dim)
    a = ddv_module.attn_rep(snap.learner, snap.task, snap.kv, x)
    b = ddv_module.attn_rep(snap.learner, snap.task, snap.kv, x_prime)
    whole = 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert chunked.shape == (150,) and torch.allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def _stops_when_the_caller_goes(call) -> float:
    """Seconds from the caller giving up (``call(stub)`` returns that moment) until the handler's
    still_wanted check ended its loop, on a real gRPC server."""
    from crossback.node.expensive_work import ExpensiveWork

    work = ExpensiveWork(CallLimiter(LIMITS), "n")
    stopped = threading.Event()
    stopped_at = []

    def handler(request, context):
        check = work.still_wanted(context)
        try:
            for _ in range(2000):  # 20 s at most
                check()
                time.sleep(0.01)
        finally:
            stopped_at.append(time.monotonic())
            stopped.set()
        return b""

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.T", {"Work": grpc.unary_unary_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        gave_up = call(channel.unary_unary("/t.T/Work", request_serializer=bytes, response_deserializer=bytes))
        assert stopped.wait(5), "the handler went on after its caller left"
        return stopped_at[0] - gave_up
    finally:
        channel.close()
        server.stop(grace=None)


def test_expensive_work_stops_once_the_deadline_passes_or_the_caller_cancels():
    def deadline(stub):
        with pytest.raises(grpc.RpcError) as err:
            stub(b"", timeout=0.3)
        # the caller's own timer, or (on a busy host, where the handler's check wins the race) the server's
        # abort for a call whose deadline has passed: either way the call ended at its deadline
        assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        return time.monotonic()

    def cancel(stub):
        future = stub.future(b"", timeout=30)
        time.sleep(0.3)
        future.cancel()
        return time.monotonic()

    assert _stops_when_the_caller_goes(deadline) < 0.5
    assert _stops_when_the_caller_goes(cancel) < 0.5
