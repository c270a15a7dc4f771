"""Real node processes on 127.0.0.1 talking gRPC: membership, failure detection, KV, bad requests."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import tiny_node_config, wait_for
from prometheus_server import BINARY, query, running_prometheus

from crossback.models.persistence import latest_checkpoint, load_checkpoint
from crossback.node.events import read_events
from crossback.config.selection import ProbeSpec
from crossback.node.transport import CallPolicy, PeerClient
from crossback.node.wire import encode_all
from crossback.proto.v1 import peer_pb2 as pb
from crossback.proto.v1 import peer_pb2_grpc as pb_grpc

HEARTBEAT, TIMEOUT = 0.25, 2.0
CONFIG = tiny_node_config(0, [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}],
                          HEARTBEAT, TIMEOUT)
CONFIG["node"]["metrics"] = {"listen": "127.0.0.1:0"}  # every node serves /metrics on a free port


class NodeProc:
    def __init__(self, root: Path, node_id: str, seeds: list[str] = (), seed: int = 0):
        self.root, self.node_id, self.seeds = root, node_id, list(seeds)
        self.config = root / f"{node_id}.yaml"
        self.config.write_text(yaml.safe_dump({**CONFIG, "seed": seed}))
        self.log = root / "logs" / f"{node_id}.jsonl"
        self.proc = None

    def start(self) -> "NodeProc":
        args = [sys.executable, "-m", "crossback.app.cli", "node", "--config", str(self.config),
                "--node-id", self.node_id, "--listen", "127.0.0.1:0", "--state-dir", str(self.root / "state" / self.node_id),
                "--log-dir", str(self.root / "logs"), "--tensorboard", str(self.root / "tensorboard" / self.node_id)]
        if self.seeds:
            args += ["--seed-peers", ",".join(self.seeds)]
        self.started_at = len(read_events(self.log))
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def events(self, name: str | None = None, since_start: bool = False) -> list[dict]:
        evs = read_events(self.log)[self.started_at if since_start else 0 :]
        return [e for e in evs if name is None or e["event"] == name]

    @property
    def address(self) -> str:
        return wait_for(lambda: (self.events("node_started", since_start=True) or [None])[-1], 60)["address"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(address: str) -> PeerClient:
    return PeerClient(address, "test", CallPolicy(timeout=5.0, attempts=1))


def alive_view(address: str) -> set[str]:
    reply = client(address).exchange_peers(pb.PeerList(protocol=pb.PROTOCOL_VERSION_1))
    return {p.node_id for p in reply.peers if p.alive}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Three nodes seeded in a chain: a <- b <- c."""
    root = tmp_path_factory.mktemp("swarm")
    a = NodeProc(root, "a").start()
    b = NodeProc(root, "b", [a.address], seed=1).start()
    c = NodeProc(root, "c", [b.address], seed=2).start()
    nodes = {"a": a, "b": b, "c": c}
    for n in nodes.values():  # everyone finished its tasks and serves
        wait_for(lambda n=n: n.events("serving"), 120)
    yield nodes
    for n in nodes.values():
        n.stop()


def test_chain_seeded_nodes_all_learn_of_each_other(swarm):
    for name, node in swarm.items():
        others = set(swarm) - {name}
        wait_for(lambda: alive_view(node.address) >= others, 10 * TIMEOUT)


def test_fetched_kv_equals_the_snapshot_bit_for_bit(swarm):
    a = swarm["a"]
    kv, version = client(a.address).fetch_kv(expected={"cross_attn.key": (16, 32), "cross_attn.value": (16, 32)})
    learner, _ = load_checkpoint(latest_checkpoint(a.root / "state" / "a" / "checkpoints"))
    assert version == len(learner.tasks) == 2
    published = learner.extract_kv(version - 1)
    assert all(torch.equal(kv[n], published[n]) for n in published)
    sent = [e for e in a.events("payload_sent") if e["kind"] == "kv" and e["peer"] == "test"]
    assert sent and sent[-1]["bytes"] == 2 * 16 * 32 * 4


def test_ddv_probe_is_deterministic_and_sized(swarm):
    spec = ProbeSpec(seed=7, pair_count=12, token_count=5, perturbation=0.2)
    r1, r2 = client(swarm["b"].address).probe_ddv(spec), client(swarm["b"].address).probe_ddv(spec)
    assert len(r1.ddv) == 12 and list(r1.ddv) == list(r2.ddv) and r1.node_id == "b"
    foreign = {n: torch.randn(16, 32, generator=torch.Generator().manual_seed(5)) for n in ("cross_attn.key", "cross_attn.value")}
    inline = client(swarm["b"].address).probe_ddv(ProbeSpec(seed=7, pair_count=12, token_count=5,
                                                            perturbation=0.2, kv_source="inline"), inline_kv=foreign)
    assert len(inline.ddv) == 12 and list(inline.ddv) != list(r1.ddv)  # b's model, a K/V it never had


def raw_stub(address: str):
    channel = grpc.insecure_channel(address)
    return pb_grpc.PeerServiceStub(channel), health_pb2_grpc.HealthStub(channel)


def bad_kv(kind: str) -> list[pb.TensorChunk]:
    kv = {"cross_attn.key": torch.randn(16, 32), "cross_attn.value": torch.randn(16, 32)}
    if kind == "nan":
        kv["cross_attn.key"][0, 0] = float("nan")
    if kind == "shape":
        kv["cross_attn.value"] = torch.randn(16, 31)
    chunks = encode_all(kv)
    if kind == "checksum":
        chunks[0].sha256 = b"\1" * 32
    if kind == "dtype":
        chunks[0].dtype = "int64"
    if kind == "truncated":
        chunks[1].data = chunks[1].data[:-4]
    return chunks


def probe(spec: dict, kv=None, protocol=pb.PROTOCOL_VERSION_1) -> pb.ProbeRequest:
    base = {"seed": 1, "pair_count": 4, "token_count": 3, "perturbation": 0.1, "kv_source": pb.KV_SOURCE_SELF}
    return pb.ProbeRequest(protocol=protocol, caller_id="test", spec=pb.ProbeSpec(**{**base, **spec}), kv=kv or [])


@pytest.mark.parametrize("request_, code, needle", [
    (probe({}, protocol=7), grpc.StatusCode.FAILED_PRECONDITION, "protocol version 7"),
    (probe({"pair_count": 0}), grpc.StatusCode.INVALID_ARGUMENT, "pair_count"),
    (probe({"token_count": 10**6}), grpc.StatusCode.INVALID_ARGUMENT, "token_count"),
    (probe({"perturbation": float("nan")}), grpc.StatusCode.INVALID_ARGUMENT, "perturbation"),
    (probe({"kv_source": 9}), grpc.StatusCode.INVALID_ARGUMENT, "kv_source"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, bad_kv("nan")), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, bad_kv("shape")), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, bad_kv("checksum")), grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, bad_kv("dtype")), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, bad_kv("truncated")), grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    (probe({"kv_source": pb.KV_SOURCE_INLINE}, [pb.TensorChunk(name="x", data=b"\0" * (5 << 20))]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
], ids=["protocol", "pairs", "tokens", "perturbation", "kv_source", "nan", "shape", "checksum", "dtype",
        "truncated", "oversized"])
def test_malformed_requests_are_refused_and_the_node_keeps_serving(swarm, request_, code, needle):
    stub, health = raw_stub(swarm["c"].address)
    with pytest.raises(grpc.RpcError) as info:
        stub.ProbeDDV(request_, timeout=10)
    assert info.value.code() == code and needle in info.value.details()
    status = health.Check(health_pb2.HealthCheckRequest(service="crossback.v1.PeerService"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert len(client(swarm["c"].address).probe_ddv(ProbeSpec(pair_count=3)).ddv) == 3


def test_wrong_protocol_on_every_rpc(swarm):
    stub, _ = raw_stub(swarm["a"].address)
    for call, req in ((stub.GetInfo, pb.InfoRequest(protocol=2)), (stub.ExchangePeers, pb.PeerList()),
                      (lambda r, timeout: list(stub.FetchKV(r, timeout=timeout)), pb.KVRequest(protocol=0))):
        with pytest.raises(grpc.RpcError) as info:
            call(req, timeout=5)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def documented_queries() -> list[str]:
    """The PromQL lines the README and docs/metrics.md show (indented code lines naming crossback_ series)."""
    root = Path(__file__).resolve().parents[1]
    lines = [line.strip() for page in (root / "README.md", root / "docs" / "metrics.md")
             for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("    ")]
    queries = list(dict.fromkeys(q for q in lines if "crossback_" in q and not q.startswith(("crossback ", "prometheus "))))
    assert len(queries) >= 5, queries
    return queries


def logged_bytes(node: NodeProc) -> dict[str, int]:
    """Bytes sent per payload kind, as the node's own log counts them (kinds logged one payload per line)."""
    out: dict[str, int] = {}
    for e in node.events("payload_sent"):
        out[e["kind"]] = out.get(e["kind"], 0) + e["bytes"]
    return out


def prometheus_agrees(url: str, swarm: dict) -> list[str]:
    """What a real Prometheus reports that differs from the nodes' logs (empty: nothing)."""
    by_node = lambda promql: {labels["node"]: value for labels, value in query(url, promql)}  # noqa: E731
    problems = []
    finished = by_node("crossback_tasks_finished_total")
    selections = by_node("sum by (node) (crossback_selections_total)")
    fetched_kv = by_node('sum by (node) (crossback_grpc_server_handled_total{grpc_method="FetchKV",grpc_code="OK"})')
    for name, node in swarm.items():
        if finished.get(name) != len(node.events("task_finished")):
            problems.append(f"{name}: tasks finished {finished.get(name)} != {len(node.events('task_finished'))}")
        if selections.get(name) != len(node.events("backbone_selected")):
            problems.append(f"{name}: selections {selections.get(name)} != {len(node.events('backbone_selected'))}")
        kv_sent = [e for e in node.events("payload_sent") if e["kind"] == "kv"]
        if fetched_kv.get(name, 0) != len(kv_sent):
            problems.append(f"{name}: FetchKV answered {fetched_kv.get(name)} != {len(kv_sent)} kv payloads logged")
        sent = {labels["kind"]: v for labels, v in query(url, f'crossback_payload_bytes_sent_total{{node="{name}"}}')}
        for kind, nbytes in logged_bytes(node).items():
            if sent.get(kind) != nbytes:
                problems.append(f"{name}: {kind} bytes sent {sent.get(kind)} != {nbytes} logged")
    total = query(url, "sum(crossback_tasks_finished_total)")
    if not total or total[0][1] != sum(len(n.events("task_finished")) for n in swarm.values()):
        problems.append(f"sum(crossback_tasks_finished_total) = {total}")
    return problems


@pytest.mark.skipif(BINARY is None, reason="needs Debian's prometheus package (.ci/run installs it)")
def test_a_real_prometheus_scrapes_every_node_and_agrees_with_their_logs(swarm, tmp_path):
    targets = {name: node.events("node_started")[-1]["metrics"].split("/")[2] for name, node in swarm.items()}
    client(swarm["a"].address).fetch_kv()  # traffic of a kind logged per payload, after the nodes settled
    with running_prometheus(tmp_path / "prometheus", targets) as url:
        wait_for(lambda: len([v for _, v in query(url, "up") if v == 1]) == 3, 30, "every target up")
        problems = []

        def agrees() -> bool:
            nonlocal problems
            problems = prometheus_agrees(url, swarm)
            return not problems
        try:
            wait_for(agrees, 20, "prometheus agrees with the logs", step=0.5)
        except AssertionError:
            pytest.fail("\n".join(problems))
        alive = {labels["node"]: v for labels, v in query(url, 'crossback_peers{state="alive"}')}
        assert alive == {"a": 2, "b": 2, "c": 2}
        for promql in documented_queries():  # every query the README and docs/metrics.md show runs as written
            query(url, promql)
            if "tasks_finished" in promql or "payload_bytes_sent" in promql or "histogram_quantile" in promql:
                wait_for(lambda promql=promql: query(url, promql), 15, f"series for the documented query {promql}")
        assert all(v > 0 for _, v in query(url, "process_resident_memory_bytes"))
        assert {labels["node"]: v for labels, v in query(url, "crossback_snapshot_version")} == {"a": 2, "b": 2, "c": 2}


def test_each_node_writes_its_curves_matrix_and_selections_to_csv_and_tensorboard(swarm):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stream = "eval_phase/test_stream"
    for name, node in swarm.items():
        with open(node.root / "logs" / f"{name}.metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        board = EventAccumulator(str(node.root / "tensorboard" / name), size_guidance={"scalars": 0})
        board.Reload()
        tags = set(board.Tags()["scalars"])
        assert {r["metric"] for r in rows} == tags  # the same values in both
        for finished in node.events("task_finished"):  # the matrix's row i: what the node logged after task i
            i = finished["index"]
            for j, accuracy in enumerate(finished["accuracies"]):
                tag = f"Top1_Acc_Exp/{stream}/Task{j:03d}/Exp{j:03d}"
                assert [e.value for e in board.Scalars(tag) if e.step == i] == [pytest.approx(accuracy, rel=1e-6)]
        assert any(t.startswith("Loss_Epoch/train_phase/train_stream/Task001") for t in tags)
        assert f"StreamBWT/{stream}" in tags and f"Top1_Acc_Stream/{stream}" in tags
        for selected in node.events("backbone_selected"):
            for cand in (c for c in selected["candidates"] if c.get("scores")):
                score = next(iter(cand["scores"]))
                assert f"Selection/{score}/{cand['peer']}" in tags
        for done in node.events("transfer_done"):
            assert {f"Transfer/Top1_Acc/{arm}" for arm in done["accuracy"]} <= tags
    assert any(t.startswith("Selection/") for t in tags_of(swarm))  # someone scored a candidate


def tags_of(swarm: dict) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = set()
    for name, node in swarm.items():
        board = EventAccumulator(str(node.root / "tensorboard" / name))
        board.Reload()
        out |= set(board.Tags()["scalars"])
    return out


def test_sigkilled_node_is_reported_dead_then_readmitted_with_its_tasks(swarm):
    a, b, c = swarm["a"], swarm["b"], swarm["c"]
    wait_for(lambda: "b" in alive_view(a.address) and "b" in alive_view(c.address), 10 * TIMEOUT)
    killed_at = time.time()
    os.kill(b.proc.pid, signal.SIGKILL)
    b.proc.wait(timeout=10)
    for watcher in (a, c):
        dead = wait_for(lambda w=watcher: [e for e in w.events("peer_dead") if e["peer"] == "b" and e["ts"] >= killed_at],
                        4 * TIMEOUT)
        assert dead[0]["ts"] - killed_at <= TIMEOUT + 2.0  # the timeout plus detection granularity (heartbeat, deadline)
        assert "b" not in alive_view(watcher.address)
    b.start()  # same state dir, a fresh ephemeral port
    resumed = wait_for(lambda: b.events("resumed", since_start=True), 60)[0]
    assert resumed["finished_tasks"] == ["a", "b"]
    assert not b.events("task_started", since_start=True)  # nothing relearned
    info = client(b.address).get_info()
    assert list(info.finished_tasks) == ["a", "b"] and info.snapshot_version == 2
    for watcher in (a, c):
        wait_for(lambda w=watcher: [e for e in w.events("peer_returned") if e["peer"] == "b"], 4 * TIMEOUT)
        wait_for(lambda w=watcher: "b" in alive_view(w.address), 4 * TIMEOUT)


def test_cli_peers_and_status_against_a_live_node(swarm):
    run = lambda *args: subprocess.run([sys.executable, "-m", "crossback.app.cli", *args],
                                       capture_output=True, text=True, timeout=60)
    status = run("status", "--target", swarm["a"].address)
    assert status.returncode == 0 and "finished tasks: a, b" in status.stdout and "cross_attn.key [16, 32]" in status.stdout
    peers = run("peers", "--target", swarm["c"].address)
    assert peers.returncode == 0 and " a " in peers.stdout and "alive" in peers.stdout
    health = run("health", "--target", swarm["b"].address)
    assert health.returncode == 0 and "SERVING" in health.stdout
    dead = run("status", "--target", "127.0.0.1:1", "--timeout", "1")
    assert dead.returncode == 3 and "UNAVAILABLE" in dead.stderr
