"""Event log: one JSON object per line (``ts``, ``node``, ``event``, fields) plus a readable console."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

QUIET_ON_CONSOLE = {"payload_sent"}  # frequent; they stay in the JSON log


class EventLog:
    def __init__(self, node_id: str, path: Path | None, console: TextIO | None = sys.stderr):
        self.node_id, self.console = node_id, console
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields) -> dict:
        record = {"ts": round(time.time(), 6), "node": self.node_id, "event": event, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self.console is not None and event not in QUIET_ON_CONSOLE:
                stamp = time.strftime("%H:%M:%S", time.localtime(record["ts"]))
                detail = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
                print(f"{stamp} {self.node_id} {event} {detail}".rstrip(), file=self.console, flush=True)
        return record

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


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
