"""The ``/metrics`` HTTP endpoint of one node: Prometheus' text format from that node's registry.

One thread serves every connection without blocking on any (a selector), so connections that send
nothing cannot hold back a scrape: each must send its request (at most ``MAX_REQUEST`` bytes) and take
its answer within ``TIMEOUT`` seconds, and only ``GET /metrics`` does any work. At most
``MAX_CONNECTIONS`` are open at once and ``MAX_PER_ADDRESS`` from one address: a new connection beyond
either bound takes the place of the oldest one still waiting for its request (from its own address
first), so a scraper, which sends its request the moment it connects, always gets in, however many
idle connections are held open against it. A client that re-opens every dropped connection at once
would keep this thread accepting and evicting flat out: evicting a connection younger than
``MIN_AGE`` pauses accepting for the rest of that age (new connections wait in the kernel's backlog),
so each connection slot turns over at most once per ``MIN_AGE``. A minimal one-request-per-connection exchange is all
Prometheus needs; http.server's machinery cost half a millisecond per scrape on 2 cores, and a handful
of idle connections could hold every thread of a pool.
"""
from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from crossback.config.errors import StateInUse

from .prom import CONTENT_TYPE, Registry

MAX_CONNECTIONS = 256
MAX_PER_ADDRESS = 32
MIN_AGE = 0.1  # evicting a connection younger than this pauses accepting for the rest of it
TIMEOUT = 5.0
MAX_REQUEST = 8192
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


@dataclass
class _Exchange:
    deadline: float
    address: str
    received: bytearray = field(default_factory=bytearray)
    reply: bytes | None = None  # what is left to send, once the request is complete


class MetricsServer:
    def __init__(self, sock: socket.socket, registry: Registry):
        self.registry, self._sock = registry, sock
        self._selector = selectors.DefaultSelector()
        self._wake, self._waker = socket.socketpair()
        self._open: dict[socket.socket, _Exchange] = {}  # oldest first
        self._per_address: dict[str, int] = {}
        self._paused_until: float | None = None  # accepting paused (connections churn) until then
        for s in (sock, self._wake):
            s.setblocking(False)
            self._selector.register(s, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            now = time.monotonic()
            if self._paused_until is not None and now >= self._paused_until:
                self._paused_until = None
                self._selector.register(self._sock, selectors.EVENT_READ)
            soonest = min((x.deadline for x in self._open.values()), default=now + 1.0)
            if self._paused_until is not None:
                soonest = min(soonest, self._paused_until)
            for key, events in self._selector.select(max(0.0, soonest - time.monotonic())):
                if key.fileobj is self._wake:
                    return
                if key.fileobj is self._sock:
                    self._accept()
                elif key.fileobj not in self._open:  # evicted by an accept in this same batch
                    continue
                elif events & selectors.EVENT_WRITE:
                    self._send(key.fileobj)
                else:
                    self._receive(key.fileobj)
            now = time.monotonic()
            for conn in [c for c, x in self._open.items() if x.deadline <= now]:  # too slow: dropped
                self._drop(conn)

    def _accept(self) -> None:
        try:
            conn, peer = self._sock.accept()
        except OSError:
            return
        address = str(peer[0]) if isinstance(peer, tuple) else "?"
        crowded = self._per_address.get(address, 0) >= MAX_PER_ADDRESS
        if crowded or len(self._open) >= MAX_CONNECTIONS:
            age = self._evict_oldest_waiting(address if crowded else None)
            if age is None:  # every one of them is being answered: the newcomer waits for nothing
                conn.close()
                return
            if age < MIN_AGE:  # evicting young connections: someone re-opens them as fast as they drop
                self._pause_accepting(MIN_AGE - age)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._open[conn] = _Exchange(time.monotonic() + TIMEOUT, address)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self._selector.register(conn, selectors.EVENT_READ)

    def _evict_oldest_waiting(self, address: str | None) -> float | None:
        """Close the oldest connection still waiting for its request (from ``address``, or any); its age
        in seconds, or None when there is none."""
        for conn, exchange in self._open.items():
            if exchange.reply is None and (address is None or exchange.address == address):
                self._drop(conn)
                return time.monotonic() - (exchange.deadline - TIMEOUT)
        return None

    def _pause_accepting(self, seconds: float) -> None:
        """Leave new connections in the kernel's backlog for ``seconds``: a client that re-opens each
        dropped connection at once would otherwise keep this thread accepting and evicting flat out."""
        if self._paused_until is None:
            self._selector.unregister(self._sock)
        self._paused_until = time.monotonic() + seconds

    def open_connections(self) -> int:
        return len(self._open)

    def _receive(self, conn: socket.socket) -> None:
        exchange = self._open[conn]
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        exchange.received += chunk
        if not chunk or len(exchange.received) > MAX_REQUEST:
            self._drop(conn)
        elif b"\n\r\n" in exchange.received or b"\n\n" in exchange.received:
            exchange.reply = self._reply(bytes(exchange.received))
            self._selector.modify(conn, selectors.EVENT_WRITE)

    def _send(self, conn: socket.socket) -> None:
        exchange = self._open[conn]
        try:
            sent = conn.send(exchange.reply)
        except BlockingIOError:
            return
        except OSError:
            sent = len(exchange.reply)
        exchange.reply = exchange.reply[sent:]
        if not exchange.reply:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        address = self._open.pop(conn).address
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
        conn.close()

    def _reply(self, request: bytes) -> bytes:
        method, _, rest = request.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method not in ("GET", "HEAD"):
            status, body, kind = 405, b"only GET /metrics\n", "text/plain"
        elif path == "/metrics":
            status, body, kind = 200, self.registry.render(), CONTENT_TYPE
        elif path == "/":
            status, body, kind = 200, b'<a href="/metrics">/metrics</a>\n', "text/html"
        else:
            status, body, kind = 404, b"not found: this port serves /metrics\n", "text/plain"
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode("latin-1")
        return head + (body if method == "GET" else b"")

    def close(self) -> None:
        self._waker.send(b"x")
        self._thread.join(timeout=2 * TIMEOUT)
        for conn in list(self._open):
            self._drop(conn)
        self._selector.close()
        for s in (self._sock, self._wake, self._waker):
            s.close()


def serve_metrics(listen: str, registry: Registry) -> tuple[MetricsServer, str]:
    """Start serving ``registry`` on ``listen`` (``host:port``; port 0 picks a free one); (server, the
    ``host:port`` it is bound to). ``server.close()`` stops it."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StateInUse(f"node.metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    return MetricsServer(sock, registry), f"{listen.rpartition(':')[0]}:{sock.getsockname()[1]}"


def scrape_config(targets: dict[str, str], interval: float = 5.0) -> dict:
    """A Prometheus config scraping each node's ``/metrics``; ``targets``: node id -> host:port (its
    metrics address). Every series gets a ``node`` label, the node's id."""
    return {"global": {"scrape_interval": f"{interval:g}s", "scrape_timeout": f"{interval:g}s"},
            "scrape_configs": [{"job_name": "crossback", "metrics_path": "/metrics", "static_configs": [
                {"targets": [address], "labels": {"node": node}} for node, address in targets.items()]}]}
