"""A caller at another address, on one machine: a TCP forwarder on 127.0.0.1 whose connections reach a
target from a chosen loopback source (127.0.0.2 and up). The server sees a caller at that address, as
it would a remote host: what per-address fairness, bounds and logs key on (tests, hostile benchmarks)."""
from __future__ import annotations

import socket
import threading


class FromAddress:
    """Connections to ``address`` reach ``target`` from ``source``. Threads are daemons; ``close()`` ends
    every connection."""

    def __init__(self, target: str, source: str):
        host, _, port = target.rpartition(":")
        self._target, self._source = (host, int(port)), source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5, source_address=(self._source, 0))
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            self._open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        for s in self._open:
            s.close()
