"""The hostile-caller campaign against one real `crossback node` (the compose image model), measured:

    python benchmarks/perf/hostile.py                 # prints a JSON report
    python benchmarks/perf/hostile.py --json out.json

Phases, each against the serving node on loopback:
- ``watch``: 100 open grpc.health.v1.Health/Watch streams; Health/Check latency (2 s of checks) and
  whether GetInfo / ExchangePeers still answer;
- ``burst``: 200 concurrent GetInfo calls, then 200 concurrent FetchKV calls; Health/Check latency
  meanwhile and every call's status;
- ``probes``: 6 callers each sending 40 of the largest probes the default budget admits (512 pairs x
  32 tokens x C = 64) at once; the node's peak resident memory (VmHWM) before and after, its resident
  memory once idle, and every probe's status.

Goals (issue 26): Health p99 < 20 ms in the first two phases, peak RSS <= 600 MiB in the third.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_node import compose_config, print_report, start_node  # noqa: E402


def mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(times: list[float]) -> dict:
    ordered = sorted(times)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
    return {"count": len(times), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 2)}


CHECKER = """
import json, sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
times, failed, end = [], 0, time.monotonic() + float(sys.argv[2])
stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
print("ready", flush=True)
while time.monotonic() < end:
    started = time.perf_counter()
    try:
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        times.append(time.perf_counter() - started)
    except grpc.RpcError:
        failed += 1
    time.sleep(0.005)
print(json.dumps([times, failed]))
"""


class HealthChecker:
    """Health/Check in a process of its own (as a compose healthcheck is), so the campaign's client
    threads do not add their own GIL waits to the latency measured."""

    def __init__(self, address: str, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", CHECKER, address, str(seconds)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self) -> tuple[list[float], int]:
        out, _ = self.proc.communicate(timeout=120)
        times, failed = json.loads(out)
        return times, failed


def phase_watch(address: str) -> dict:
    from crossback.node.transport import PROTOCOL, CallPolicy, PeerClient
    from crossback.proto.v1 import peer_pb2 as pb

    channel = grpc.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    streams = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(100)]
    opened = Counter()
    for s in streams:
        try:
            next(s)
            opened["open"] += 1
        except grpc.RpcError as exc:
            opened[exc.code().name] += 1
    times, failed = HealthChecker(address, 2.0).result()
    client = PeerClient(address, "watcher", CallPolicy(timeout=2.0, attempts=1))
    others = {}
    for name, call in (("GetInfo", client.get_info),
                       ("ExchangePeers", lambda: client.exchange_peers(pb.PeerList(protocol=PROTOCOL)))):
        try:
            call()
            others[name] = "OK"
        except grpc.RpcError as exc:
            others[name] = exc.code().name
    for s in streams:
        s.cancel()
    client.close()
    channel.close()
    return {"streams": dict(opened), "health": percentiles(times), "health_failed": failed, "others": others}


def phase_burst(address: str) -> dict:
    from crossback.node.transport import CallPolicy, PeerClient

    channel = grpc.insecure_channel(address)
    clients = [PeerClient(address, f"burst{i}", CallPolicy(timeout=20.0, attempts=1)) for i in range(20)]
    result = {}

    def outcome(call):
        try:
            call()
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    checker = HealthChecker(address, 3.0)
    with ThreadPoolExecutor(200) as pool:
        result["GetInfo"] = dict(Counter(pool.map(lambda i: outcome(clients[i % 20].get_info), range(200))))
        result["FetchKV"] = dict(Counter(pool.map(lambda i: outcome(clients[i % 20].fetch_kv), range(200))))
    times, failed = checker.result()
    for c in clients:
        c.close()
    channel.close()
    return {**result, "health": percentiles(times), "health_failed": failed}


def phase_probes(address: str, pid: int) -> dict:
    from crossback.config.selection import ProbeSpec
    from crossback.node.transport import CallPolicy, PeerClient

    spec = ProbeSpec(seed=1, pair_count=512, token_count=32)  # 512 x 32 x 64 = the default budget
    before = {"rss_mib": round(mib(pid, "VmRSS"), 1), "hwm_mib": round(mib(pid, "VmHWM"), 1)}
    clients = [PeerClient(address, f"prober{i}", CallPolicy(timeout=60.0, attempts=1)) for i in range(6)]

    def outcome(i):
        try:
            clients[i % 6].probe_ddv(spec)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    started = time.perf_counter()
    checker = HealthChecker(address, 3.0)
    with ThreadPoolExecutor(240) as pool:
        statuses = Counter(pool.map(outcome, range(240)))
    seconds = time.perf_counter() - started
    times, failed = checker.result()
    time.sleep(2.0)
    for c in clients:
        c.close()
    return {"statuses": dict(statuses), "seconds": round(seconds, 2), "before": before,
            "health": percentiles(times), "health_failed": failed,
            "peak_rss_mib": round(mib(pid, "VmHWM"), 1), "idle_rss_mib": round(mib(pid, "VmRSS"), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(Path(tmp), "target", epochs=2, tasks=1, serve=["kv", "ddv", "backbone"])
        proc, address = start_node(Path(tmp), cfg, until="serving", timeout=600)
        try:
            report = {"watch": phase_watch(address), "burst": phase_burst(address),
                      "probes": phase_probes(address, proc.pid),
                      "node_alive": proc.poll() is None}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
