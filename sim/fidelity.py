"""How closely a link is realised: round trip and throughput each way, measured over real TCP through a
probe device's faces, beside what the scenario configured (goal: within 10 %)."""
from __future__ import annotations

import dataclasses
import json
import socket
import statistics
import subprocess
import sys
import threading
import time

from crossback.config.scenario import Link

from .relay import Relay, raise_priority

PINGS = 31
MIN_BYTES, MAX_BYTES = 64 << 10, 8 << 20
UNLIMITED_BYTES = 4 << 20  # what an unlimited direction is measured with


class _Sink:
    """A TCP server on loopback: ``E`` echoes a line, ``U n`` reads n bytes then answers, ``D n`` sends n."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.create_server((host, 0))
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while line := f.readline():
                cmd, *arg = line.split()
                if cmd == b"E":
                    conn.sendall(line)
                elif cmd == b"U":
                    left = int(arg[0])
                    while left > 0:
                        chunk = f.read1(min(1 << 16, left))
                        if not chunk:
                            return
                        left -= len(chunk)
                    conn.sendall(b"ok\n")
                elif cmd == b"D":
                    conn.sendall(b"x" * int(arg[0]))

    def close(self) -> None:
        self.sock.close()


def _size(mbit: float | None, seconds: float) -> int:
    if not mbit:
        return UNLIMITED_BYTES
    return int(min(MAX_BYTES, max(MIN_BYTES, mbit * 1e6 / 8 * seconds)))


def _error(measured: float, configured: float | None) -> float | None:
    return None if not configured else round(measured / configured - 1.0, 4)


def calibrate(relay: Relay, nets=None) -> float:
    """Measure the relay's path unshaped and tell the relay to leave that much out of every latency it
    adds; the one-way overhead in seconds."""
    base = _measure(relay, Link("calibration"), 0.2, "probe-calibration", nets)
    relay.calibrate(base["rtt_ms"]["measured"] / 2e3)
    return relay.overhead


def measure_link(relay: Relay, link: Link, seconds: float = 1.5, name: str | None = None, nets=None) -> dict:
    """Measure ``link`` through a probe device's proxy face: median RTT of small messages and throughput
    of about ``seconds`` of bulk data each way (the round trip taken out). Loss is left out: it is
    emulated as retransmission delay, which lowers goodput as TCP's own loss response would, so rate and
    latency are checked on the link without it, and loss's goodput apart (``lossy``). ``nets``: the
    run's ``Namespaces`` — the probe then sits in a namespace of its own behind token buckets, as devices do."""
    name = name or f"probe-{link.name}-{len(relay.devices)}"
    result = _measure(relay, dataclasses.replace(link, loss=0.0), seconds, name, nets)
    if link.loss:
        lossy = _measure(relay, link, seconds, f"{name}-lossy", nets)
        result["lossy"] = {"loss": link.loss, "rtt_ms": lossy["rtt_ms"]["measured"],
                           "up_mbit": lossy["up_mbit"]["measured"], "down_mbit": lossy["down_mbit"]["measured"]}
    return result


def _measure(relay: Relay, link: Link, seconds: float, name: str, nets=None) -> dict:
    faces = relay.add_device(name, link, kernel_rate=nets is not None)
    prefix = []
    if nets is not None:
        nets.add(name)
        nets.shape(name, link)
        prefix = nets.devices[name].exec_prefix()
    up_bytes, down_bytes = _size(link.up_mbit, seconds), _size(link.down_mbit, seconds)
    # the probe's client and its sink run in processes of their own, as devices do: in the relay's process
    # they would share its interpreter lock and measure themselves
    sink = subprocess.Popen([sys.executable, "-m", "crossback.sim.fidelity", "sink", relay.host],
                            stdout=subprocess.PIPE, text=True)
    try:
        address = sink.stdout.readline().strip()
        done = subprocess.run([*prefix, sys.executable, "-m", "crossback.sim.fidelity", "probe", faces.proxy, address,
                               str(up_bytes), str(down_bytes)], capture_output=True, text=True, timeout=600)
    finally:
        sink.kill()
        sink.wait()
    if done.returncode != 0:
        raise ConnectionError(f"the link probe failed: {done.stderr[-1000:]}")
    got = json.loads(done.stdout)
    rtts, rtt = got["rtts"], statistics.median(got["rtts"])
    up = up_bytes * 8 / max(1e-6, got["up_seconds"] - rtt) / 1e6
    down = down_bytes * 8 / max(1e-6, got["down_seconds"] - rtt) / 1e6
    configured_rtt = 2 * link.latency_ms  # one way per direction: out and back over one link
    return {"link": link.name,
            "rtt_ms": {"configured": round(configured_rtt, 3), "measured": round(rtt * 1e3, 3),
                       "p10": round(sorted(rtts)[len(rtts) // 10] * 1e3, 3),
                       "p90": round(sorted(rtts)[-1 - len(rtts) // 10] * 1e3, 3),
                       "error": _error(rtt * 1e3, configured_rtt)},
            "up_mbit": {"configured": link.up_mbit, "measured": round(up, 3), "bytes": up_bytes,
                        "error": _error(up, link.up_mbit)},
            "down_mbit": {"configured": link.down_mbit, "measured": round(down, 3), "bytes": down_bytes,
                          "error": _error(down, link.down_mbit)}}


def probe(proxy: str, sink: str, up_bytes: int, down_bytes: int) -> dict:
    """Through the CONNECT proxy at ``proxy`` to ``sink``: round trips, upload and download times."""
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as conn, conn.makefile("rb") as f:
        conn.sendall(f"CONNECT {sink} HTTP/1.1\r\nHost: {sink}\r\n\r\n".encode())
        if b" 200 " not in f.readline():
            raise ConnectionError("the relay refused the probe")
        f.readline()
        rtts = []
        for _ in range(PINGS):
            t = time.perf_counter()
            conn.sendall(b"E ping\n")
            f.readline()
            rtts.append(time.perf_counter() - t)
        t = time.perf_counter()
        conn.sendall(b"U %d\n" % up_bytes + b"u" * up_bytes)
        f.readline()
        up = time.perf_counter() - t
        t = time.perf_counter()
        conn.sendall(b"D %d\n" % down_bytes)
        got = 0
        while got < down_bytes:
            chunk = f.read1(1 << 16)
            if not chunk:
                raise ConnectionError("the probe's download ended early")
            got += len(chunk)
        return {"rtts": rtts, "up_seconds": up, "down_seconds": time.perf_counter() - t}


def main(argv: list[str]) -> None:
    """``sink HOST``: serve, printing the address; ``probe PROXY SINK UP DOWN``: measure, printing JSON."""
    raise_priority()
    if argv[0] == "sink":
        sink = _Sink(argv[1])
        print(sink.address, flush=True)
        threading.Event().wait()
    else:
        print(json.dumps(probe(argv[1], argv[2], int(argv[3]), int(argv[4]))))


if __name__ == "__main__":
    main(sys.argv[1:])
