"""The ``/metrics`` HTTP endpoint of one node: Prometheus' text format from that node's registry.

Bounded like the gRPC port: at most ``MAX_SCRAPES`` requests are answered at once (more are closed
unanswered), a connection that sends nothing for ``TIMEOUT`` seconds is dropped, and only ``GET
/metrics`` (and ``/``, which points there) does any work.
"""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crossback.config.errors import StateInUse

MAX_SCRAPES = 4
TIMEOUT = 5.0


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a second node on a port in use fails instead of sharing it

    def __init__(self, address: tuple[str, int], registry):
        self.registry = registry
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/":
            self._reply(200, b'<a href="/metrics">/metrics</a>\n', "text/html")
        else:
            self._reply(404, b"not found: this port serves /metrics\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # scrapes are not news
        pass


def serve_metrics(listen: str, registry) -> tuple[MetricsServer, str]:
    """Start serving ``registry`` on ``listen`` (``host:port``; port 0 picks a free one) on a daemon
    thread; (server, the ``host:port`` it is bound to). ``server.shutdown(); server.server_close()`` stops it."""
    host, _, port = listen.rpartition(":")
    try:
        server = MetricsServer((host.strip("[]"), int(port)), registry)
    except OSError as exc:
        raise StateInUse(f"node.metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server, f"{listen.rpartition(':')[0]}:{server.server_address[1]}"
