"""MergeNet between real node processes of two model sizes: the receiver selects the wider donor (other
K/V shapes), fetches its K/V, generates its own from it; only declared payload kinds move."""
import pytest

from conftest import node_events, start_serving, stop_nodes, tiny_node_config

from crossback.app.selections import render_table, selection_rows

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}]




@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("mergenet")
    donor = tiny_node_config(0, TASKS[:1], 0.25, 2.0)
    donor["model"] |= {"token_dim": 48, "cross_dim_head": 24}  # another model size: K/V 24 x 48
    donor["node"]["serve"] = ["kv", "ddv"]
    receiver = tiny_node_config(1, TASKS, 0.25, 2.0)
    receiver["transfer"] = {"strategy": "mergenet", "mergenet": {"rank": 4, "dim": 16, "heads": 4}}
    receiver["selection"]["score"] = "ddv"  # the scores that run our task through a peer's parts need our shapes
    procs = {}
    try:
        addr = start_serving(root, procs, "wide", donor, [])
        start_serving(root, procs, "rx", receiver, [addr])
        yield root
    finally:
        stop_nodes(procs)


def test_a_mergenet_node_learns_from_a_peer_of_another_model_size(swarm):
    root = swarm
    selections = node_events(root, "rx", "backbone_selected")
    assert [s["task"] for s in selections] == ["a", "b"]
    for sel in selections:
        assert sel["strategy"] == "mergenet" and sel["borrow"] == "kv" and sel["chosen"] == "wide"
        (cand,) = sel["candidates"]
        assert cand["error"] is None and set(cand["scores"]) == {"ddv", "ddv_cos"}
    for done in node_events(root, "rx", "transfer_done"):
        assert done["strategy"] == "mergenet"
        facts = done["arms"]["selected"]["facts"]
        assert facts["source_shape"] == [48, 48] and facts["generations"] > 0 and facts["matrix"].endswith("to_kv.weight")
    sent = {e["kind"] for e in node_events(root, "wide", "payload_sent")}
    assert "kv" in sent and sent <= {"kv", "ddv", "membership", "info"}  # nothing but the declared kinds
    table = render_table(selection_rows(root))
    assert "mergenet:kv" in table and "wide" in table


def test_the_receivers_tasks_stay_as_learned(swarm):
    root = swarm
    finished = node_events(root, "rx", "task_finished")
    assert [f["task"] for f in finished] == ["a", "b"]
    # task a's accuracy when b finished equals its accuracy when it finished: zero forgetting
    assert finished[1]["accuracies"][0] == finished[0]["accuracies"][0]
