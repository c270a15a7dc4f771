"""Event log: one JSON object per line (``ts``, ``node``, ``event``, fields) plus a readable console."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

QUIET_ON_CONSOLE = {"payload_sent", "payload_summary"}  # frequent; they stay in the JSON log
DEFAULT_MAX_BYTES = 64 << 20  # a log file this large is rotated to <name>.1 (one old file is kept)
OTHER_PEERS = "(other peers)"  # PayloadTally's line for the peers past its bound in one interval


class EventLog:
    """``max_bytes``: past this size the file moves to ``<name>.1`` (replacing an older one) and a new
    file starts, so a node's log takes at most twice that on disk however long it runs."""

    def __init__(self, node_id: str, path: Path | None, console: TextIO | None = sys.stderr,
                 max_bytes: int = DEFAULT_MAX_BYTES, listeners: tuple = ()):
        """``listeners``: called with every record once it is written (the node's metrics)."""
        self.node_id, self.console, self.path, self.max_bytes = node_id, console, path, max_bytes
        self.listeners = tuple(listeners)
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)
            self._size = path.stat().st_size

    def _rotate(self) -> None:
        self._file.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._size = 0

    def emit(self, event: str, **fields) -> dict:
        record = {"ts": round(time.time(), 6), "node": self.node_id, "event": event, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            if self._file is not None:
                if self._size and self._size + len(line) + 1 > self.max_bytes:
                    self._rotate()
                self._file.write(line + "\n")
                self._file.flush()
                self._size += len(line.encode()) + 1
            if self.console is not None and event not in QUIET_ON_CONSOLE:
                stamp = time.strftime("%H:%M:%S", time.localtime(record["ts"]))
                detail = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
                print(f"{stamp} {self.node_id} {event} {detail}".rstrip(), file=self.console, flush=True)
        for listener in self.listeners:
            listener(record)
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class PayloadTally:
    """Heartbeat-rate payloads (gossip) as one ``payload_summary`` line per (kind, peer) per ``interval``
    seconds instead of one ``payload_sent`` line per exchange; every other kind is logged per payload.
    At most ``max_peers`` peers are tallied apart per interval (a peer id is the sender's claim): the
    rest share one line, peer ``OTHER_PEERS``, so a flood of invented ids costs no memory or log lines."""

    def __init__(self, emit, kinds: frozenset[str] = frozenset({"membership"}), interval: float = 60.0,
                 clock=time.monotonic, count=None, max_peers: int = 1024):
        """``count(kind, nbytes)``: told of every payload at once, summarised or not (the node's metrics)."""
        self.emit, self.kinds, self.interval, self.clock = emit, kinds, interval, clock
        self.count, self.max_peers = count, max_peers
        self._lock = threading.Lock()
        self._since = clock()
        self._counts: dict[tuple[str, str], list[int]] = {}

    def __call__(self, kind: str, peer: str, nbytes: int) -> None:
        peer = peer[:256] or "?"
        if self.count is not None:
            self.count(kind, nbytes)
        if kind not in self.kinds:
            self.emit("payload_sent", kind=kind, peer=peer, bytes=nbytes)
            return
        with self._lock:
            if (kind, peer) not in self._counts and len(self._counts) >= self.max_peers:
                peer = OTHER_PEERS
            entry = self._counts.setdefault((kind, peer), [0, 0])
            entry[0] += 1
            entry[1] += nbytes
            due = self.clock() - self._since >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            seconds, self._since = self.clock() - self._since, self.clock()
        for (kind, peer), (count, nbytes) in sorted(counts.items()):
            self.emit("payload_summary", kind=kind, peer=peer, count=count, bytes=nbytes, seconds=round(seconds, 3))


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def read_events(path: Path) -> list[dict]:
    """Every complete JSON line of an event log (a torn last line after a kill is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
