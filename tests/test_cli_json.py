"""`--json` on every inspecting command: one object of a named schema (docs/json.md), holding what the
text form shows, for a real run folder, real log files and real nodes answering over gRPC."""
import json
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crossback.app.cli import main
from crossback.app.selections import render_table
from crossback.app.train_run import run_training
from crossback.bench.peers import published, serve_snapshots, untrained_learner
from crossback.config.run import parse_config
from crossback.models.learner import ContinualLearner
from crossback.node.events import EventLog
from crossback.node.transport import CallPolicy, PeerClient

from conftest import tiny_config


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_selections_json_round_trips_what_the_table_shows(tmp_path, capsys):
    log = EventLog("rx", tmp_path / "logs" / "rx.jsonl", console=None)
    for index, (chosen, kept) in enumerate((("d-1", "selected"), (None, "none"))):
        log.emit("backbone_selected", task=f"t{index}", index=index, chosen=chosen,
                 chosen_modality="text" if chosen else None, chosen_origin=chosen, borrow="backbone",
                 strategy="crossback", score=0.25 if chosen else None, margin=0.1 if chosen else None,
                 reason="highest logme 0.2500" if chosen else "no eligible peer",
                 candidates=[{"peer": "d-1", "score": 0.25, "error": None}] if chosen else [], skipped=[])
        log.emit("transfer_done", task=f"t{index}", index=index, strategy="crossback", kept=kept,
                 accuracy={"none": 0.5, **({"selected": 0.75} if chosen else {})})
    log.close()
    assert main(["selections", str(tmp_path)]) == 0
    table = capsys.readouterr().out.rstrip("\n")
    assert main(["selections", str(tmp_path), "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "crossback.selections/1" and out["run"] == str(tmp_path)
    assert [r["chosen"] for r in out["selections"]] == ["d-1", None] and out["selections"][0]["selected"] == 0.75
    assert render_table(out["selections"]) == table


def test_evaluate_json_names_every_task_and_its_two_accuracies(tmp_path, capsys):
    cfg = parse_config({"data": {"source": "digits", "image_size": 8}, "train": {"epochs": 1},
                        "model": {"token_dim": 16, "num_latents": 4, "latent_dim": 16, "depth": 1, "cross_dim_head": 8,
                                  "latent_heads": 2, "latent_dim_head": 8, "queries_dim": 16,
                                  "image": {"channels": 1, "patch_size": 2}},
                        "tasks": [{"name": "low", "classes": ["0", "1"]}, {"name": "high", "classes": ["8", "9"]}]})
    metrics = run_training(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "crossback.evaluate/1" and out["ok"] is True
    assert [t["task"] for t in out["tasks"]] == ["low", "high"]
    assert [t["reported"] for t in out["tasks"]] == [t["reloaded"] for t in out["tasks"]] == metrics["accuracy_matrix"][-1]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("json-node")
    snap = published(root / "n", 1, lambda: untrained_learner(ContinualLearner(tiny_config(), "image", "packnet", 3)))
    with serve_snapshots({"n-0": snap}, root / "logs") as addresses:
        yield addresses["n-0"]


def test_status_json_is_the_nodes_info(node, capsys):
    assert main(["status", "--target", node, "--json"]) == 0
    out = _json(capsys)
    info = PeerClient(node, "t", CallPolicy(timeout=5.0, attempts=1)).get_info()
    assert out["schema"] == "crossback.status/1" and out["node_id"] == "n-0" and out["address"] == node
    assert out["finished_tasks"] == ["untrained"] and out["snapshot_version"] == 1
    assert out["kv_shapes"] == {n: list(d) for n, d in info.kv_shapes.items()}
    assert out["payload_kinds"] == list(info.payload_kinds) and out["modality"] == "image"


def test_peers_json_lists_the_view_and_errors_keep_the_form(node, capsys):
    assert main(["peers", "--target", node, "--json"]) == 0
    out = _json(capsys)
    assert out["schema"] == "crossback.peers/1" and out["node_id"] == "n-0" and out["address"] == node
    assert isinstance(out["peers"], list)
    assert main(["peers", "--target", "127.0.0.1:1", "--timeout", "0.5", "--json"]) == 3
    out = _json(capsys)
    assert out["schema"] == "crossback.peers/1" and out["error"]["code"] == "UNAVAILABLE"


def test_health_json_reports_the_status_and_a_failure(capsys):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        servicer.set("crossback.v1.PeerService", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert main(["health", "--target", target, "--json"]) == 1
        assert _json(capsys) == {"schema": "crossback.health/1", "target": target, "status": "NOT_SERVING",
                                 "serving": False, "error": None}
        servicer.set("crossback.v1.PeerService", health_pb2.HealthCheckResponse.SERVING)
        assert main(["health", "--target", target, "--json"]) == 0
        assert _json(capsys)["serving"] is True
    finally:
        server.stop(None)
    assert main(["health", "--target", "127.0.0.1:1", "--timeout", "0.5", "--json"]) == 3
    out = _json(capsys)
    assert out["status"] is None and out["error"]["code"] == "UNAVAILABLE"
