"""The hostile-caller campaign against one real `crossback node` (the compose image model), measured:

    python benchmarks/perf/hostile.py                 # prints a JSON report
    python benchmarks/perf/hostile.py --json out.json

Phases, each against the serving node on loopback:
- ``watch``: 100 open grpc.health.v1.Health/Watch streams; Health/Check latency (2 s of checks) and
  whether GetInfo / ExchangePeers still answer;
- ``burst``: 200 concurrent GetInfo calls, then 200 concurrent FetchKV calls, from 20 callers at 20
  addresses; Health/Check latency meanwhile and every call's status;
- ``probes``: 6 callers at 6 addresses each sending 40 of the largest probes the default budget admits
  (512 pairs x 32 tokens x C = 64) at once; the node's peak resident memory (VmHWM) before and after, its resident
  memory once idle, and every probe's status.

- ``classify``: one Classify request of 256 copies of a 2 KB PNG that decodes to 4096 x 4096 (the
  node's CPU-seconds for it); six of them at once under six claimed ids with 10 s deadlines; then six
  callers at six claimed ids each sending the heaviest request the decode budget admits with a 0.3 s
  deadline, for 5 s; meanwhile a legitimate one-image Classify and a peer's FetchKV every 0.5 s. The
  node's CPU use from 1 s after the last deadline, its resident memory before and after;
- ``metrics``: 300 idle connections to /metrics from one address, then from 100 addresses, each held
  open; then 300 re-opened as fast as the node drops them; scrape latency meanwhile, and the node's CPU.

Goals (issue 26): Health p99 < 20 ms in the first two phases, peak RSS <= 600 MiB in the third.
Goals (issue 37): the bomb request refused or answered in <= 1 CPU-second; the node idle within 1 s of
the deadlines; the legitimate Classify and FetchKV never fail; RSS back within 50 MB; a scrape within
1 s with 300 idle connections held.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import select
import socket
import subprocess
import threading
import urllib.request
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

from crossback.sim.source_address import FromAddress  # noqa: E402


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
    hosts = [FromAddress(address, f"127.0.1.{i + 1}") for i in range(20)]  # 20 callers, 20 addresses
    clients = [PeerClient(h.address, f"burst{i}", CallPolicy(timeout=20.0, attempts=1)) for i, h in enumerate(hosts)]
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
    for h in hosts:
        h.close()
    channel.close()
    return {**result, "health": percentiles(times), "health_failed": failed}


def phase_probes(address: str, pid: int) -> dict:
    from crossback.config.selection import ProbeSpec
    from crossback.node.transport import CallPolicy, PeerClient

    spec = ProbeSpec(seed=1, pair_count=512, token_count=32)  # 512 x 32 x 64 = the default budget
    before = {"rss_mib": round(mib(pid, "VmRSS"), 1), "hwm_mib": round(mib(pid, "VmHWM"), 1)}
    hosts = [FromAddress(address, f"127.0.2.{i + 1}") for i in range(6)]  # 6 callers, 6 addresses
    clients = [PeerClient(h.address, f"prober{i}", CallPolicy(timeout=60.0, attempts=1)) for i, h in enumerate(hosts)]

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
    for h in hosts:
        h.close()
    return {"statuses": dict(statuses), "seconds": round(seconds, 2), "before": before,
            "health": percentiles(times), "health_failed": failed,
            "peak_rss_mib": round(mib(pid, "VmHWM"), 1), "idle_rss_mib": round(mib(pid, "VmRSS"), 1)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _png(size: tuple[int, int], mode: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, 0).save(out, "PNG")
    return out.getvalue()


def _outcome(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


class Legitimate:
    """A one-image Classify and a peer's FetchKV every 0.5 s, each under its 5 s deadline, in a thread;
    each caller at an address of its own (127.0.0.2 and .3), as an app and a peer are."""

    def __init__(self, address: str, task: str, image: bytes):
        from crossback.node.transport import CallPolicy, PeerClient

        self.hosts = [FromAddress(address, "127.0.0.2"), FromAddress(address, "127.0.0.3")]
        self.client = PeerClient(self.hosts[0].address, "legit", CallPolicy(timeout=5.0, attempts=1))
        self.peer = PeerClient(self.hosts[1].address, "peer", CallPolicy(timeout=5.0, attempts=1))
        self.statuses: dict[str, Counter] = {"Classify": Counter(), "FetchKV": Counter()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(task, image))
        self._thread.start()

    def _run(self, task: str, image: bytes) -> None:
        while not self._stop.wait(0.5):
            self.statuses["Classify"][_outcome(lambda: self.client.classify(task, images=[image]))] += 1
            self.statuses["FetchKV"][_outcome(self.peer.fetch_kv)] += 1

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(30)
        self.client.close()
        self.peer.close()
        for host in self.hosts:
            host.close()
        return {k: dict(v) for k, v in self.statuses.items()}


def _idle_after(pid: int, seconds: float = 2.0) -> float:
    """The node's CPU use (cores) over ``seconds``, from now."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return round((cpu_seconds(pid) - before) / seconds, 3)


def finished_task(address: str) -> str:
    from crossback.node.transport import PeerClient

    client = PeerClient(address, "asker")
    try:
        return client.get_info().finished_tasks[0]
    finally:
        client.close()


def phase_classify(address: str, pid: int, task: str) -> dict:
    from crossback.node.transport import CallPolicy, PeerClient

    time.sleep(2.0)
    rss_before = round(mib(pid, "VmRSS"), 1)
    bomb = _png((4096, 4096), "1")
    legit = Legitimate(address, task, _png((64, 64), "RGB"))
    report = {"bomb_png_bytes": len(bomb), "rss_before_mib": rss_before}
    client = PeerClient(address, "bomber", CallPolicy(timeout=120.0, attempts=1))
    cpu, started = cpu_seconds(pid), time.perf_counter()
    report["one_request"] = {"status": _outcome(lambda: client.classify(task, images=[bomb] * 256)),
                             "node_cpu_s": round(cpu_seconds(pid) - cpu, 3),
                             "wall_s": round(time.perf_counter() - started, 3)}
    client.close()
    bombers = [PeerClient(address, f"bomber-{i}", CallPolicy(timeout=10.0, attempts=1)) for i in range(6)]
    cpu = cpu_seconds(pid)
    with ThreadPoolExecutor(6) as pool:
        statuses = Counter(pool.map(lambda c: _outcome(lambda: c.classify(task, images=[bomb] * 256)), bombers))
    report["six_at_once"] = {"statuses": dict(statuses), "node_cpu_s": round(cpu_seconds(pid) - cpu, 3),
                             "node_cores_from_1s_after": _idle_after(pid)}
    heaviest = [_png((4096, 4096), "1")] * 2 + [_png((32, 32), "RGB")] * 254  # just within the decode budget
    for c in bombers:
        c.close()
    bombers = [PeerClient(address, f"heavy-{i}", CallPolicy(timeout=0.3, attempts=1)) for i in range(6)]
    stop_at = time.monotonic() + 5.0

    def send_until(c):
        seen = Counter()
        while time.monotonic() < stop_at:
            seen[_outcome(lambda: c.classify(task, images=heaviest))] += 1
        return seen

    cpu = cpu_seconds(pid)
    with ThreadPoolExecutor(6) as pool:
        statuses = sum(pool.map(send_until, bombers), Counter())
    last_deadline = time.monotonic()
    time.sleep(1.0)
    report["heaviest_with_short_deadlines"] = {
        "statuses": dict(statuses), "node_cpu_s_while_sent": round(cpu_seconds(pid) - cpu, 3),
        "node_cores_from_1s_after_the_last_deadline": _idle_after(pid),
        "measured_from_s_after_deadline": round(time.monotonic() - last_deadline - 2.0, 2)}
    for c in bombers:
        c.close()
    report["legitimate"] = legit.stop()
    time.sleep(2.0)  # the heap is handed back a quiet second after the expensive work drains
    report["rss_after_mib"] = round(mib(pid, "VmRSS"), 1)
    report["rss_growth_mib"] = round(report["rss_after_mib"] - rss_before, 1)
    return report


def _scrape_seconds(url: str) -> float | str:
    started = time.perf_counter()
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError as exc:
        return type(exc).__name__
    return round(time.perf_counter() - started, 4)


def _idle(host: str, port: int, count: int, sources: list[str]) -> list[socket.socket]:
    return [socket.create_connection((host, port), timeout=5, source_address=(sources[i % len(sources)], 0))
            for i in range(count)]


def phase_metrics(metrics_url: str, pid: int) -> dict:
    host, port = metrics_url.split("//")[1].split("/")[0].rsplit(":", 1)
    port, report = int(port), {}
    for name, sources in (("one_address", ["127.0.0.1"]), ("100_addresses", [f"127.0.3.{i + 1}" for i in range(100)])):
        held = _idle(host, port, 300, sources)
        time.sleep(0.3)
        report[f"300_idle_from_{name}"] = {"scrapes_s": [_scrape_seconds(metrics_url) for _ in range(5)]}
        for s_ in held:
            s_.close()
    stop, reopened = threading.Event(), [0]

    def churn():
        sources = [f"127.0.4.{i + 1}" for i in range(50)]
        conns = _idle(host, port, 300, sources)
        while not stop.is_set():
            for s_ in select.select(conns, [], [], 0.05)[0]:
                conns.remove(s_)
                s_.close()
                conns += _idle(host, port, 1, sources)
                reopened[0] += 1
        for s_ in conns:
            s_.close()

    worker = threading.Thread(target=churn)
    worker.start()
    time.sleep(0.5)
    cpu, started = cpu_seconds(pid), time.monotonic()
    scrapes = []
    while time.monotonic() - started < 5.0:
        scrapes.append(_scrape_seconds(metrics_url))
        time.sleep(0.25)
    cores = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
    stop.set()
    worker.join(30)
    ok = [x for x in scrapes if isinstance(x, float)]
    report["300_reopened_as_dropped"] = {"scrapes": len(scrapes), "failed": len(scrapes) - len(ok),
                                         "slowest_s": max(ok) if ok else None, "reopened": reopened[0],
                                         "node_cores": round(cores, 3)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(Path(tmp), "target", epochs=2, tasks=1, serve=["kv", "ddv", "backbone", "classify"])
        cfg["node"]["metrics"] = {"listen": "127.0.0.1:0"}
        proc, address = start_node(Path(tmp), cfg, until="serving", timeout=600)
        started = json.loads(next(x for x in (Path(tmp) / "logs" / "target.jsonl").read_text().splitlines()
                                  if '"node_started"' in x))
        try:
            report = {"watch": phase_watch(address), "burst": phase_burst(address),
                      "probes": phase_probes(address, proc.pid),
                      "classify": phase_classify(address, proc.pid, finished_task(address)),
                      "metrics": phase_metrics(started["metrics"], proc.pid),
                      "node_alive": proc.poll() is None}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
