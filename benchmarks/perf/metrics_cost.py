"""What a node's Prometheus metrics cost: training with them on vs off, an RPC answered with the
counting interceptor vs without, a scrape of a busy node, and the series a flood of hostile ids adds.

    python benchmarks/perf/metrics_cost.py --json benchmarks/results/perf-metrics.json
    python benchmarks/perf/metrics_cost.py --flood 200 --scrapes 50 --repeats 3      (a quick look)

Training: the same task learned from the same seed with the node's per-epoch metrics update and event
listener, and without, alternating, ratio of medians; also the metrics' own work per training step,
timed alone. RPCs: GetInfo answered by two in-process nodes, one counting, one not, alternating calls.
Scrape: HTTP GETs of /metrics from a node whose registry holds every method, code, kind and reason it
can, after the flood: ``--flood`` GetInfo calls with distinct caller ids and as many ExchangePeers with
distinct sender ids, through real gRPC. Goals (issue 29): <= 2 % of a training step, <= 1 ms p99 per
scrape on 2 cores, a fixed number of series whatever the flood.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_node import digits_node  # noqa: E402
from masked_step import machine  # noqa: E402

from crossback.config.run import parse_config  # noqa: E402
from crossback.data.prepare import prepare_tasks  # noqa: E402
from crossback.models.learner import new_learner  # noqa: E402
from crossback.models.methods import learn_task  # noqa: E402
from crossback.node.events import EventLog  # noqa: E402
from crossback.node.metrics import ARMS, TRAFFIC_KINDS, NodeMetrics  # noqa: E402
from crossback.node.metrics_http import serve_metrics  # noqa: E402
from crossback.node.rpc_metrics import METHODS  # noqa: E402
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve  # noqa: E402
from crossback.orchestrator_free.membership import Membership  # noqa: E402
from crossback.orchestrator_free.reasons import KINDS, STATUS_CODES  # noqa: E402
from crossback.proto.v1 import peer_pb2 as pb  # noqa: E402
from crossback.proto.v1 import peer_pb2_grpc as pb_grpc  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def training(repeats: int, folder: Path) -> dict:
    """A digits task learned with the metrics on and off, alternating; and the metrics' work per step."""
    run = parse_config(digits_node(0, tasks=1, epochs=3), "bench", folder)
    (task,), _ = prepare_tasks(run)
    on, off = [], []
    metrics = NodeMetrics("bench", process=False)
    log = EventLog("bench", None, console=None, listeners=(metrics.observe,))
    for _ in range(repeats):
        for arm, times in (("on", on), ("off", off)):
            learner = new_learner(run)
            started = time.perf_counter()
            if arm == "on":
                log.emit("task_started", task=task.name, index=0)
                learn_task(learner, task, run.method, run.train, metrics.progress)
                log.emit("task_finished", task=task.name, index=0, accuracy=0.5, accuracies=[0.5])
            else:
                learn_task(learner, task, run.method, run.train)
            times.append(time.perf_counter() - started)
    steps = -(-len(task.train) // run.train.batch_size) * (run.train.epochs + run.method.packnet.retrain_epochs)
    calls = 10_000
    started = time.perf_counter()
    for i in range(calls):
        metrics.progress("train", i, calls, 0.5)
    per_epoch = (time.perf_counter() - started) / calls
    started = time.perf_counter()
    for _ in range(calls // 10):
        log.emit("task_started", task="t", index=0)
    per_event = (time.perf_counter() - started) / (calls // 10)
    step = statistics.median(off) / steps
    epochs = run.train.epochs + run.method.packnet.retrain_epochs
    own = (epochs * per_epoch + 2 * per_event) / steps  # the metrics' work, spread over the task's steps
    return {"task_s": {"metrics_on": statistics.median(on), "metrics_off": statistics.median(off)},
            "ratio": statistics.median(on) / statistics.median(off), "steps": steps, "step_s": step,
            "metrics_per_epoch_us": per_epoch * 1e6, "event_with_listener_us": per_event * 1e6,
            "metrics_share_of_a_step": own / step}


def _node(metrics: NodeMetrics | None, folder: Path, name: str):
    events = EventLog(name, None, console=None, listeners=(metrics.observe,) if metrics else ())
    server, port = bind("127.0.0.1:0", workers=4, events=events, metrics=metrics)
    address = f"127.0.0.1:{port}"
    membership = Membership(name, address, [], 30.0, on_event=events.emit)
    servicer = PeerServicer(NodeIdentity(name, address, "image", "packnet", 32, {}), lambda: None, membership,
                            events, metrics=metrics)
    if metrics:
        metrics.watch(membership, lambda: None, servicer.limiter)
    serve(server, servicer)
    return server, address


def rpc_cost(calls: int, folder: Path) -> dict:
    """GetInfo answered with and without the counting interceptor, alternating one call each."""
    plain, plain_address = _node(None, folder, "plain")
    counted, counted_address = _node(NodeMetrics("counted", process=False), folder, "counted")
    channels = {arm: grpc.insecure_channel(a) for arm, a in (("off", plain_address), ("on", counted_address))}
    stubs = {arm: pb_grpc.PeerServiceStub(channel) for arm, channel in channels.items()}
    times = {"on": [], "off": []}
    request = pb.InfoRequest(protocol=pb.PROTOCOL_VERSION_1, caller_id="bench")
    for i in range(calls + 50):
        for arm, stub in stubs.items():
            started = time.perf_counter()
            stub.GetInfo(request, timeout=10)
            if i >= 50:  # warm-up
                times[arm].append(time.perf_counter() - started)
    for channel in channels.values():
        channel.close()
    plain.stop(None)
    counted.stop(None)
    return {"getinfo_us": {arm: statistics.median(t) * 1e6 for arm, t in times.items()},
            "ratio": statistics.median(times["on"]) / statistics.median(times["off"])}


# what a serving node's registry holds after a swarm's traffic: the RPCs a swarm makes, answered OK or refused
TYPICAL_METHODS = ("GetInfo", "ExchangePeers", "ProbePeer", "FetchKV", "ProbeDDV", "FetchPayload", "Health.Check",
                   "Health.Watch")
TYPICAL_KINDS = ("info", "info_request", "membership", "kv", "kv_request", "ddv", "probe_spec", "backbone",
                 "backbone_request")


def fill(metrics: NodeMetrics, every: bool) -> None:
    """A busy node's label values (``every``: all a node can ever show: methods x codes, kinds, reasons)."""
    for method in METHODS.values() if every else TYPICAL_METHODS:
        for code in STATUS_CODES if every else ("OK", "UNAVAILABLE"):
            metrics.handled(method, code, 0.01)
    for kind in TRAFFIC_KINDS if every else TYPICAL_KINDS:
        metrics.sent(kind, 100)
        metrics.fetched(kind, 100)
    for reason in KINDS if every else ("no_task_yet", "refused"):
        metrics.observe({"event": "backbone_selected", "chosen": "x", "seconds": 0.5, "bytes": 10,
                         "candidates": [{}], "skipped": [{"reason": reason, "kind": reason}]})
    for arm in ARMS if every else ("none", "selected"):
        metrics.observe({"event": "transfer_done", "kept": arm})
    for event in ("node_started", "task_started", "task_finished", "snapshot_published", "peer_joined", "serving",
                  "payload_sent", "payload_summary"):
        metrics.observe({"event": event})
    for by, reasons in (("admission", ("bulk", "control")), ("expensive_work", ("busy", "too_large")),
                        ("peer_auth", ("not_allowed",))):
        for reason in reasons if every else reasons[:1]:
            metrics.refused(by, reason)


def flood(count: int, folder: Path) -> dict:
    """``count`` GetInfo calls with distinct caller ids and as many ExchangePeers with distinct sender ids."""
    metrics = NodeMetrics("victim")
    server, address = _node(metrics, folder, "victim")
    fill(metrics, every=False)
    before = {_series_name(n, labels) for n, labels, _ in metrics.registry.samples()}
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.PeerServiceStub(channel)
    started = time.perf_counter()
    for first in range(0, count, 200):
        calls = []
        for i in range(first, min(count, first + 200)):
            calls.append(stub.GetInfo.future(pb.InfoRequest(protocol=pb.PROTOCOL_VERSION_1, caller_id=f"evil-{i}"),
                                             timeout=30))
            calls.append(stub.ExchangePeers.future(pb.PeerList(protocol=pb.PROTOCOL_VERSION_1, sender=pb.PeerEntry(
                node_id=f"evil-{i}", address=f"10.{i // 60000 % 250}.{i // 250 % 240}.{i % 250 + 1}:50051",
                alive=True)), timeout=30))
        for call in calls:
            call.exception()
    seconds = time.perf_counter() - started
    channel.close()
    server.stop(None)
    after = {_series_name(n, labels) for n, labels, _ in metrics.registry.samples()}
    return {"distinct_caller_ids": count, "distinct_peer_ids": count, "seconds": seconds,
            "series_before": len(before), "series_after": len(after), "added": len(after - before),
            "added_series": sorted(after - before)}


def _series_name(name: str, labels: dict) -> str:
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


SCRAPER = """
import socket, sys, time, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for i in range(n + 20):
    started = time.perf_counter()
    s = socket.create_connection((host, port))
    s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n")
    while s.recv(1 << 16):
        pass
    s.close()
    times.append(time.perf_counter() - started)
print(json.dumps(times[20:]))
"""


def scrapes_of(metrics: NodeMetrics, count: int, rounds: int = 3) -> dict:
    """``rounds`` x ``count`` scrapes by a separate process (as Prometheus is), timed there and inside the
    node; p99 per round (a 2-core machine's scheduling moves it between rounds), and of all."""
    per_round = [_scrape_round(metrics, count) for _ in range(rounds)]
    inside = [t for r in per_round for t in r[0]]
    outside = [t for r in per_round for t in r[1]]
    return {"count": count * rounds, "series": metrics.series(), "bytes": len(metrics.registry.render()),
            "node_p50_ms": _pct(inside, 0.5) * 1e3, "node_p99_ms": _pct(inside, 0.99) * 1e3,
            "node_p99_ms_by_round": [_pct(r[0], 0.99) * 1e3 for r in per_round],
            "scraper_p50_ms": _pct(outside, 0.5) * 1e3, "scraper_p99_ms": _pct(outside, 0.99) * 1e3}


def _scrape_round(metrics: NodeMetrics, count: int) -> tuple[list[float], list[float]]:
    http, address = serve_metrics("127.0.0.1:0", metrics.registry)
    inside: list[float] = []
    reply = http._reply

    def timed(request):  # the node's work per scrape: render the registry and the response
        started = time.perf_counter()
        out = reply(request)
        inside.append(time.perf_counter() - started)
        return out
    http._reply = timed
    host, port = address.rsplit(":", 1)
    out = subprocess.run([sys.executable, "-c", SCRAPER, host, port, str(count)], capture_output=True, text=True,
                         timeout=600, check=True)
    http.close()
    return inside[20:], json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="training runs per arm")
    parser.add_argument("--calls", type=int, default=2000, help="GetInfo calls per arm")
    parser.add_argument("--flood", type=int, default=10_000, help="distinct hostile caller ids (and peer ids)")
    parser.add_argument("--scrapes", type=int, default=1000, help="scrapes per round (3 rounds)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    torch.manual_seed(0)
    sys.setswitchinterval(0.001)  # as `crossback node` runs (app/cli.py): gRPC handler threads hand the GIL on sooner
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = {"machine": machine(), "training": training(args.repeats, folder),
                  "rpc": rpc_cost(args.calls, folder), "flood": flood(args.flood, folder), "scrape": {}}
    for name, every in (("busy_node", False), ("every_label", True)):
        metrics = NodeMetrics(name)
        fill(metrics, every)
        report["scrape"][name] = scrapes_of(metrics, args.scrapes)
    t, r, f = report["training"], report["rpc"], report["flood"]
    print(f"machine: {report['machine']}")
    print(f"training: metrics on/off {t['ratio']:.3f}x (medians of {args.repeats}); the metrics' own work "
          f"{100 * t['metrics_share_of_a_step']:.4f} % of a {1e3 * t['step_s']:.2f} ms step")
    print(f"rpc: GetInfo {r['getinfo_us']['on']:.0f} us counted vs {r['getinfo_us']['off']:.0f} us ({r['ratio']:.3f}x)")
    print(f"flood: {f['distinct_caller_ids']} caller ids + {f['distinct_peer_ids']} peer ids added {f['added']} series "
          f"({f['series_before']} -> {f['series_after']}: {', '.join(f['added_series'])})")
    for name, s in report["scrape"].items():
        print(f"scrape, {name}: {s['series']} series ({s['bytes']} bytes), {s['count']} times: in the node p50 "
              f"{s['node_p50_ms']:.2f} ms, p99 {s['node_p99_ms']:.2f} ms (by round: "
              f"{', '.join(f'{p:.2f}' for p in s['node_p99_ms_by_round'])}); at the scraper p50 "
              f"{s['scraper_p50_ms']:.2f} ms, p99 {s['scraper_p99_ms']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
