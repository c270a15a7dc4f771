"""A real Prometheus (Debian's ``prometheus`` package; .ci/run installs it) for the tests: started on a
free loopback port with a generated scrape config, queried over its HTTP API, stopped and removed after."""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from crossback.node.metrics_http import scrape_config

BINARY = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_prometheus(folder: Path, targets: dict[str, str], timeout: float = 60.0):
    """Prometheus scraping ``targets`` every second; yields its base URL once it is ready."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, interval=1.0)), encoding="utf-8")
    port = _free_port()
    log = open(folder / "prometheus.log", "wb")
    proc = subprocess.Popen([BINARY, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, (folder / "prometheus.log").read_text(errors="replace")[-3000:]
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready within {timeout}s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(url: str, promql: str) -> list[tuple[dict, float]]:
    """An instant query: (labels, value) per series."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]
