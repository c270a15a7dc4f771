"""Backbone borrowing between real node processes of one swarm genesis; a node of another genesis is
skipped, and a donor hands out only the payload kinds its config declares."""
import pytest

from conftest import node_events, start_node, stop_nodes, tiny_node_config, wait_for

from crossback.node.transport import CallPolicy, PeerClient

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}]


def _config(seed: int, genesis: int, serve: list[str]) -> dict:
    cfg = tiny_node_config(seed, TASKS, 0.25, 2.0)
    cfg["node"]["serve"] = serve
    cfg["swarm"] = {"genesis": genesis}
    cfg["transfer"] = {"borrow": "backbone"}
    cfg["selection"]["score"] = "logme"
    return cfg




@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("borrow")
    procs = {}
    try:
        procs["donor"] = start_node(root, "donor", _config(0, 5, ["kv", "ddv", "backbone"]), [])
        addr = wait_for(lambda: node_events(root, "donor", "node_started"), 60, "donor started", [procs["donor"]])[0]["address"]
        procs["kvonly"] = start_node(root, "kvonly", _config(1, 5, ["kv", "ddv"]), [addr])
        procs["alien"] = start_node(root, "alien", _config(2, 6, ["kv", "ddv", "backbone"]), [addr])
        for name in ("donor", "kvonly", "alien"):
            wait_for(lambda n=name: node_events(root, n, "serving"), 120, f"{name} serving", list(procs.values()))
        procs["rx"] = start_node(root, "rx", _config(3, 5, ["kv", "ddv", "backbone"]), [addr])
        wait_for(lambda: node_events(root, "rx", "serving"), 120, "rx serving", list(procs.values()))
        yield root, addr
    finally:
        stop_nodes(procs)


def test_the_receiver_borrows_a_backbone_only_from_its_genesis_and_only_where_it_is_served(swarm):
    root, _ = swarm
    selections = node_events(root, "rx", "backbone_selected")
    assert [s["task"] for s in selections] == ["a", "b"]
    skipped = {s["peer"]: s["reason"] for s in selections[-1]["skipped"]}  # by then gossip knows everyone
    assert "genesis" in skipped["alien"] and "does not serve ['backbone']" in skipped["kvonly"]
    for sel in selections:
        assert sel["borrow"] == "backbone" and sel["chosen"] == "donor" and sel["chosen_origin"] == "donor"
        (cand,) = [c for c in sel["candidates"] if c["peer"] == "donor"]
        assert set(cand["scores"]) == {"logme", "ddv", "ddv_cos"} and cand["score"] == cand["scores"]["logme"]
    done = node_events(root, "rx", "transfer_done")
    assert all(d["arms"]["selected"]["facts"]["borrowed_tensors"] > 10 for d in done)
    sent = {e["kind"] for e in node_events(root, "donor", "payload_sent")}
    requests = {"info_request", "kv_request", "probe_spec", "backbone_request"}  # what it asked others for
    assert "backbone" in sent and sent <= {"kv", "ddv", "backbone", "membership", "info"} | requests
    assert "backbone" not in {e["kind"] for e in node_events(root, "kvonly", "payload_sent")}


def test_every_task_stays_as_learned_and_the_info_names_genesis_and_origins(swarm):
    root, _ = swarm
    rx_addr = node_events(root, "rx", "node_started")[0]["address"]
    client = PeerClient(rx_addr, "test", CallPolicy(timeout=5.0, attempts=1))
    try:
        info = client.get_info()
    finally:
        client.close()
    assert info.genesis.startswith("5:") and list(info.payload_kinds) == ["kv", "ddv", "backbone"]
    last = node_events(root, "rx", "transfer_done")[-1]
    origins = {o.node_id for o in info.origins}
    assert origins == ({"donor"} if last["kept"] != "none" else set())
    finished = node_events(root, "rx", "task_finished")
    assert finished[-1]["accuracies"][0] == finished[0]["accuracy"]  # task a untouched by task b's borrowing
