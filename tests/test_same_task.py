"""The same-task path (``borrow: task``): label sets matched by keyed hashes, a whole task borrowed with its
head in the receiver's label order, between real node processes; a task no peer learned falls back."""
import pytest
import torch

from conftest import node_events, start_node, start_serving, stop_nodes, tiny_config, tiny_node_config, wait_for

from crossback.models.learner import ContinualLearner
from crossback.transfer.pairs import new_salt
from crossback.orchestrator_free.same_task import (class_hashes, label_order, matching_tasks, request_problem,
                                                   task_parts)
from crossback.node.transport import CallPolicy, PeerClient


def _learner(*tasks: list[str]) -> ContinualLearner:
    learner = ContinualLearner(tiny_config(), "image", "packnet", 0)
    for i, classes in enumerate(tasks):
        learner.begin_task(f"t{i}", len(classes), classes)
        learner.end_task()
    return learner


def test_a_label_set_matches_by_hash_whatever_its_order_and_nothing_else_matches():
    learner = _learner(["cat", "dog", "owl"], ["red", "blue"])
    salt = new_salt()
    mine = ["owl", "cat", "dog"]  # the same set in another order
    assert [m["task"] for m in matching_tasks(learner, salt, class_hashes(salt, mine))] == [0]
    assert label_order(["cat", "dog", "owl"], salt, class_hashes(salt, mine)) == [1, 2, 0]
    for other in (["owl", "cat"], ["owl", "cat", "emu"], ["owl", "cat", "dog", "emu"]):  # subset, swap, superset
        assert matching_tasks(learner, salt, class_hashes(salt, other)) == []
    assert matching_tasks(learner, new_salt(), class_hashes(salt, mine)) == []  # hashes under another salt
    assert matching_tasks(_learner(), salt, class_hashes(salt, mine)) == []


def test_the_task_is_sent_with_its_head_rows_in_the_callers_label_order():
    learner = _learner(["cat", "dog", "owl"])
    salt = new_salt()
    parts = task_parts(learner, 0, salt, class_hashes(salt, ["owl", "cat", "dog"]))
    head = learner.task_params[0]["head.weight"]
    assert torch.equal(parts["head.weight"], head[[2, 0, 1]])  # caller's label 0 ("owl") is the donor's 2
    assert torch.equal(parts["head.bias"], learner.task_params[0]["head.bias"][[2, 0, 1]])
    assert "query" in parts and any(n.startswith("core.") for n in parts) and any(n.startswith("adapter.") for n in parts)
    assert task_parts(learner, 0, salt, class_hashes(salt, ["owl", "cat"])) is None
    assert task_parts(learner, 5, salt, class_hashes(salt, ["owl", "cat", "dog"])) is None


@pytest.mark.parametrize("salt, hashes, problem", [
    (b"short", [b"a" * 32, b"b" * 32], "salt must be 16 bytes"),
    (b"s" * 16, [b"a" * 32], "between 2 and 1024"),
    (b"s" * 16, [b"a" * 32] * 1025, "between 2 and 1024"),
    (b"s" * 16, [b"a" * 32, b"b" * 31], "32 bytes"),
    (b"s" * 16, [b"a" * 32, b"a" * 32], "repeat"),
])
def test_a_malformed_label_set_is_named(salt, hashes, problem):
    assert problem in request_problem(salt, hashes)


def test_a_task_with_class_names_of_the_wrong_count_is_refused():
    learner = _learner()
    with pytest.raises(ValueError, match="3 distinct names"):
        learner.begin_task("t", 3, ["a", "a", "b"])


LOW = ["0", "1", "2", "3", "4"]


def _config(seed: int, tasks: list[dict], serve: list[str], **data) -> dict:
    cfg = tiny_node_config(seed, tasks, 0.25, 2.0)
    cfg["node"]["serve"] = serve
    cfg["swarm"] = {"genesis": 7}
    cfg["data"] |= data
    return cfg


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("same-task")
    procs = {}
    try:
        donor_cfg = _config(0, [{"name": "low", "classes": LOW}, {"name": "mid", "classes": ["5", "6", "7"]}],
                            ["kv", "ddv", "backbone", "task"])
        donor_cfg["train"] = {"epochs": 12, "batch_size": 32}
        donor = start_serving(root, procs, "donor", donor_cfg, [])
        closed = start_serving(root, procs, "closed", _config(1, [{"name": "low", "classes": LOW}], ["kv", "ddv", "backbone"]),
                      [donor])
        rx = _config(2, [{"name": "digits-low", "classes": ["3", "1", "4", "0", "2"]},  # the donor's first task
                         {"name": "high", "classes": ["8", "9"]}],  # nobody's
                     ["kv", "ddv", "backbone"], shots=3)
        rx["transfer"] = {"borrow": "task"}
        rx["node"]["exit_when_done"] = True
        procs["rx"] = start_node(root, "rx", rx, [donor, closed])
        wait_for(lambda: node_events(root, "rx", "node_stopped") or procs["rx"].poll() is not None, 240, "rx done",
                 list(procs.values()))
        yield root, donor
    finally:
        stop_nodes(procs)


def test_the_receiver_borrows_the_donors_same_task_and_reaches_its_accuracy(swarm):
    root, _ = swarm
    first, second = node_events(root, "rx", "task_matched")
    assert first["chosen"] == "donor" and first["fallback"] is None
    (match,) = first["matched"]
    assert match["extra"]["task"] == 0 and match["scores"]["task_val"] >= 0.0 and match["payload_bytes"] > 0
    assert {s["peer"]: s["reason"] for s in first["skipped"]}["closed"].endswith("does not serve task")
    selected = node_events(root, "rx", "backbone_selected")
    assert [s["borrow"] for s in selected] == ["task", "backbone"] and selected[0]["score_name"] == "task_val"
    done = node_events(root, "rx", "transfer_done")[0]
    assert done["kept"] == "selected", done["keep_reason"]
    # the limit: the donor's own test accuracy on these classes; 3 items per class alone stay far below it
    donor_acc = node_events(root, "donor", "task_finished")[-1]["accuracies"][0]
    got, alone = done["accuracy"]["selected"], done["accuracy"]["none"]
    assert got >= 0.9 * donor_acc and got > alone + 0.1, (got, alone, donor_acc)
    assert second["chosen"] is None and second["fallback"] == "backbone" and second["unmatched"] == 1
    sent = {e["kind"] for e in node_events(root, "donor", "payload_sent")}
    assert {"task_match", "task"} <= sent
    assert "task" not in {e["kind"] for e in node_events(root, "closed", "payload_sent")}


def test_a_peer_answers_a_label_set_only_with_what_matches_it(swarm):
    import grpc

    root, donor = swarm
    client = PeerClient(donor, "test", CallPolicy(timeout=5.0, attempts=1))
    try:
        salt = new_salt()
        reply, _ = client.match_task(salt, class_hashes(salt, ["7", "5", "6"]))
        assert [(m.task, m.classes) for m in reply.matches] == [(1, 3)] and 0.0 < reply.matches[0].val_accuracy <= 1.0
        tensors, version = client.fetch_task(salt, class_hashes(salt, ["7", "5", "6"]), 1)
        assert version == reply.snapshot_version and tensors["head.weight"].shape[0] == 3
        with pytest.raises(grpc.RpcError) as err:
            client.fetch_task(salt, class_hashes(salt, ["7", "5", "6"]), 0)  # task 0 has another label set
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            client.match_task(salt[:4], class_hashes(salt, ["7", "5"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "salt" in err.value.details()
    finally:
        client.close()


def _confirmed(peer: str, view: str, task_val: float):
    from crossback.orchestrator_free.same_task import CONFIRM_SCORE
    from crossback.orchestrator_free.selection import Candidate, Probe, Scores

    return Candidate(peer, f"h:{peer}", Probe(modality=view),
                     scores=Scores({CONFIRM_SCORE: task_val, "task_val_loss": 1.0}, rank=task_val - 1e-6))


@pytest.mark.parametrize("other_val, margin, expected", [
    (0.60, 0.10, "own"),    # another view leads by 0.05, within the margin: the receiver's own view
    (0.60, 0.00, "other"),  # no margin: the best confirmation wins, whatever its view
    (0.80, 0.10, "other"),  # another view leads by 0.25, beyond the margin
    (0.50, 0.10, "own"),    # a tie goes to the own view
])
def test_a_match_of_the_receivers_own_view_wins_unless_another_confirms_better_by_the_margin(other_val, margin, expected):
    from crossback.orchestrator_free.same_task import decide_match

    own, other = _confirmed("own", "text", 0.55), _confirmed("other", "image", other_val)
    if other_val == 0.50:
        own = _confirmed("own", "text", 0.50)
    chosen, reason = decide_match([own, other], [own, other], "text", margin)
    assert chosen.peer == expected, reason
    assert ("same_view_margin" in reason) == (chosen.peer == "own" or other_val - 0.55 > margin)
