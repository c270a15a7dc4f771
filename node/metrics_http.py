"""The ``/metrics`` HTTP endpoint of one node: Prometheus' text format from that node's registry.

Bounded like the gRPC port: ``WORKERS`` threads accept and answer one connection at a time each (more
wait in the listen backlog), a request must arrive whole within ``TIMEOUT`` seconds and ``MAX_REQUEST``
bytes, and only ``GET /metrics`` does any work. A minimal HTTP/1.0-style exchange (one request per
connection) is all Prometheus needs; http.server's machinery cost half a millisecond per scrape on 2 cores.
"""
from __future__ import annotations

import socket
import threading
import time

from crossback.config.errors import StateInUse

from .prom import CONTENT_TYPE, Registry

WORKERS = 4
TIMEOUT = 5.0
MAX_REQUEST = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsServer:
    def __init__(self, sock: socket.socket, registry: Registry):
        self.registry, self._sock = registry, sock
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, name=f"metrics-http-{i}", daemon=True)
                         for i in range(WORKERS)]
        for t in self._threads:
            t.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()  # blocking: the kernel wakes one waiting worker per connection
            except OSError:  # the listening socket was shut down
                return
            with conn:
                try:
                    self._answer(conn)
                except OSError:  # the scraper went away or was too slow
                    pass

    def _answer(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline, data = time.monotonic() + TIMEOUT, b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or len(data) > MAX_REQUEST:
                return
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        method, _, rest = data.partition(b"\r\n")[0].decode("latin-1").partition(" ")
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
        conn.sendall(head + (body if method == "GET" else b""))

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the workers blocked in accept()
        except OSError:
            pass
        self._sock.close()
        for t in self._threads:
            t.join(timeout=2 * TIMEOUT)


def serve_metrics(listen: str, registry: Registry) -> tuple[MetricsServer, str]:
    """Start serving ``registry`` on ``listen`` (``host:port``; port 0 picks a free one); (server, the
    ``host:port`` it is bound to). ``server.close()`` stops it."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, int(port)))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise StateInUse(f"node.metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    return MetricsServer(sock, registry), f"{listen.rpartition(':')[0]}:{sock.getsockname()[1]}"
