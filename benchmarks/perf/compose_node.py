"""One real `crossback node` process of the compose swarm's image model (examples/swarm/img-0.yaml),
for the benchmarks that measure a node from outside (hostile.py, inference.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from crossback.config.node import write_node_config

ROOT = Path(__file__).resolve().parents[2]


def compose_config(folder: Path, node_id: str, epochs: int, tasks: int, serve: list[str]) -> dict:
    """img-0's config learning its first ``tasks`` tasks for ``epochs`` epochs each, alone, on loopback,
    its state and log under ``folder``."""
    cfg = yaml.safe_load((ROOT / "examples" / "swarm" / "img-0.yaml").read_text())
    cfg["tasks"] = cfg["tasks"][:tasks]
    cfg["train"]["epochs"] = epochs
    cfg["method"]["packnet"]["retrain_epochs"] = 1
    cfg["node"] = {"node_id": node_id, "listen": "127.0.0.1:0", "state_dir": str(folder / "state"),
                   "log_dir": str(folder / "logs"), "serve": serve}
    cfg["selection"] = {"enabled": False}
    return cfg


def start_node(folder: Path, cfg: dict, until: str, timeout: float = 900.0) -> tuple[subprocess.Popen, str]:
    """Start a node of ``cfg``; (process, address) once its log shows ``until`` (events of earlier runs
    in the same log do not count)."""
    node_id = cfg["node"]["node_id"]
    path, log = folder / f"{node_id}.yaml", Path(cfg["node"]["log_dir"]) / f"{node_id}.jsonl"
    write_node_config(path, cfg)
    before = len(log.read_text().splitlines()) if log.exists() else 0
    proc = subprocess.Popen([sys.executable, "-m", "crossback.app.cli", "node", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [json.loads(x) for x in log.read_text().splitlines()[before:]] if log.exists() else []
        if any(e["event"] == until for e in events):
            return proc, next(e for e in events if e["event"] == "node_started")["address"]
        if proc.poll() is not None:
            raise SystemExit(f"the node exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"no {until} within {timeout:.0f} s")


def print_report(report: dict, path: Path | None) -> None:
    """The benchmark's figures as JSON on stdout, and in ``path`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")
