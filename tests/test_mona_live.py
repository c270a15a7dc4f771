"""MoNA between real node processes of two modalities: a text node learns from an image peer and an
image node from a text peer; each source computes its outer-loss gradient on its own items, and only
declared payload kinds (the body, the gradient, never an item) leave it."""
import pytest

from conftest import node_events, start_serving, stop_nodes, tiny_node_config

from crossback.proto.v1 import peer_pb2 as pb

DIGITS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]}]
EMOJI = [{"name": "t1", "classes": ["animal-mammal", "drink", "tool"]},
         {"name": "t2", "classes": ["sport", "clothing", "time"]}]
SERVE = ["kv", "ddv", "encoder", "outer_grad"]
# what a node sends as a server, and what it sends as a caller (requests: ids, versions, probe specs)
DECLARED = set(SERVE) | {"info", "membership"} | {"info_request", "kv_request", "encoder_request",
                                                   "outer_grad_request", "probe_spec"}


def mona_config(seed: int, tasks: list[dict], text: bool = False) -> dict:
    cfg = tiny_node_config(seed, tasks, 0.25, 2.0)
    if text:
        cfg["data"] = {"source": "emoji", "modality": "text"}
        cfg["train"]["epochs"] = 4
    cfg["node"] |= {"serve": SERVE, "outer_grad_batches": 2, "outer_grad_batch_size": 16}
    cfg["transfer"] = {"strategy": "mona", "mona": {"stage1_epochs": 2}}
    return cfg


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """img learns a; txt (seeded with img) learns t1, t2 from it; img is stopped; img2 (seeded with txt)
    learns a, b from txt."""
    root = tmp_path_factory.mktemp("mona")
    procs = {}
    try:
        img = start_serving(root, procs, "img", mona_config(0, DIGITS[:1]), [])
        txt = start_serving(root, procs, "txt", mona_config(1, EMOJI, text=True), [img])
        procs.pop("img").terminate()
        start_serving(root, procs, "img2", mona_config(2, DIGITS), [txt])
        yield root
    finally:
        stop_nodes(procs)


@pytest.mark.parametrize("receiver,donor,modality", [("txt", "img", "image"), ("img2", "txt", "text")])
def test_a_mona_node_learns_from_a_peer_of_the_other_modality(swarm, receiver, donor, modality):
    root = swarm
    selections = node_events(root, receiver, "backbone_selected")
    assert len(selections) == 2
    for sel in selections:
        assert sel["strategy"] == "mona" and sel["borrow"] == "encoder"
        assert sel["chosen"] == donor and sel["chosen_modality"] == modality
    for done in node_events(root, receiver, "transfer_done"):
        assert done["strategy"] == "mona"
        arm = done["arms"]["selected"]
        assert arm["peer"] == donor and arm["extra"]["sample_count"] == 32 and arm["extra"]["batch_count"] == 2
        facts = arm["facts"]
        assert facts["stage1_steps"] > 0 and facts["borrowed_tensors"] > 0 and len(facts["grad_cosine"]) == 2
    finished = node_events(root, receiver, "task_finished")
    assert len(finished) == 2 and finished[1]["accuracies"][0] == finished[0]["accuracies"][0]  # zero forgetting


@pytest.mark.parametrize("donor", ["img", "txt"])
def test_only_declared_kinds_leave_a_source_and_never_its_items(swarm, donor):
    """From the payload log: every kind sent is declared, and the gradient is the size of the body (it
    does not grow with the source's items: 32 of them went into it, none travelled)."""
    sent = node_events(swarm, donor, "payload_sent")
    kinds = {e["kind"] for e in sent}
    assert {"encoder", "outer_grad"} <= kinds <= DECLARED
    body = max(e["bytes"] for e in sent if e["kind"] == "encoder")  # fetched for selection
    grads = [e["bytes"] for e in sent if e["kind"] == "outer_grad"]  # the body is not sent twice
    assert grads and all(0 <= g - body <= 64 for g in grads)  # gradient = body size + a summary


def _fields(message, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    for field in message.fields:
        key = f"{message.name}.{field.name}"
        if key in seen:
            continue
        seen.add(key)
        if field.message_type is not None:
            _fields(field.message_type, seen)
    return seen


def test_no_rpc_message_has_a_field_that_could_carry_a_sources_items():
    """From the RPC definitions: everything PeerService can send either way, field by field. Bulk values
    travel only as named tensors (TensorChunk: the model's parameters, their gradient, K/V) and DDV
    distances; a new field in any message fails this test until it is reviewed here."""
    service = pb.DESCRIPTOR.services_by_name["PeerService"]
    messages = set().union(*(_fields(m.output_type) | _fields(m.input_type) for m in service.methods))
    assert messages == {
        "InfoRequest.protocol", "InfoRequest.caller_id", "KVRequest.protocol", "KVRequest.caller_id",
        "KVRequest.min_snapshot_version", "PayloadRequest.protocol", "PayloadRequest.caller_id", "PayloadRequest.kind",
        "PayloadRequest.min_snapshot_version", "OuterGradRequest.protocol", "OuterGradRequest.caller_id",
        "OuterGradRequest.min_snapshot_version", "OuterGradRequest.max_batches", "OuterGradRequest.have_body_version",
        "ProbeRequest.protocol",
        "ProbeRequest.caller_id", "ProbeRequest.spec", "ProbeRequest.kv", "ProbeSpec.seed", "ProbeSpec.pair_count",
        "ProbeSpec.token_count", "ProbeSpec.perturbation", "ProbeSpec.kv_source",
        "NodeInfo.node_id", "NodeInfo.address", "NodeInfo.modality", "NodeInfo.token_dim", "NodeInfo.kv_shapes",
        "TensorShape.name", "TensorShape.dims", "NodeInfo.finished_tasks", "NodeInfo.snapshot_version",
        "NodeInfo.software_version", "NodeInfo.protocol", "NodeInfo.payload_kinds", "NodeInfo.method",
        "NodeInfo.genesis", "NodeInfo.origins", "TensorOrigin.name", "TensorOrigin.node_id",
        "PeerList.protocol", "PeerList.sender", "PeerList.peers", "PeerEntry.node_id", "PeerEntry.address",
        "PeerEntry.alive", "PeerEntry.snapshot_version",
        "TensorChunk.name", "TensorChunk.dtype", "TensorChunk.shape", "TensorChunk.sha256", "TensorChunk.total_bytes",
        "TensorChunk.offset", "TensorChunk.data", "TensorChunk.snapshot_version",
        "ProbeResponse.node_id", "ProbeResponse.snapshot_version", "ProbeResponse.ddv", "ProbeResponse.token_dim",
        "OuterGradChunk.summary", "OuterGradChunk.encoder", "OuterGradChunk.outer_grad",
        "OuterGradSummary.snapshot_version", "OuterGradSummary.sample_count", "OuterGradSummary.batch_count",
        "OuterGradSummary.batch_size", "OuterGradSummary.outer_loss", "OuterGradSummary.align_loss",
        "OuterGradSummary.uniform_loss",
        # freqkd (reviewed for issue 14): a student names public item ids or sends salted hashes of its own;
        # a teacher answers with per-item features (a TensorChunk), never inputs or labels
        "PublicFeaturesRequest.protocol", "PublicFeaturesRequest.caller_id",
        "PublicFeaturesRequest.min_snapshot_version", "PublicFeaturesRequest.public_set",
        "PublicFeaturesRequest.item_ids", "SharedFeaturesRequest.protocol", "SharedFeaturesRequest.caller_id",
        "SharedFeaturesRequest.min_snapshot_version", "SharedFeaturesRequest.salt",
        "SharedFeaturesRequest.item_hashes", "FeaturesChunk.summary", "FeaturesChunk.tensor",
        # SWIM's indirect probe (reviewed for issue 16): a peer id asked about, whether it answered
        "PeerProbeRequest.protocol", "PeerProbeRequest.caller_id", "PeerProbeRequest.node_id",
        "PeerProbeReply.reachable", "PeerProbeReply.snapshot_version",
        "FeaturesSummary.snapshot_version", "FeaturesSummary.requested", "FeaturesSummary.matched",
        "FeaturesSummary.width",
        # the same-task path (issue 25): keyed hashes of class names, a task index and the peer's claim
        # about its own accuracy; the task's tensors travel as TensorChunk
        "TaskMatchRequest.protocol", "TaskMatchRequest.caller_id", "TaskMatchRequest.min_snapshot_version",
        "TaskMatchRequest.salt", "TaskMatchRequest.class_hashes", "TaskMatch.task", "TaskMatch.classes",
        "TaskMatch.val_accuracy", "TaskMatch.train_samples", "TaskMatchReply.snapshot_version",
        "TaskMatchReply.matches", "TaskFetchRequest.protocol", "TaskFetchRequest.caller_id",
        "TaskFetchRequest.min_snapshot_version", "TaskFetchRequest.salt", "TaskFetchRequest.class_hashes",
        "TaskFetchRequest.task",
        # inference (issue 27): an application's own items go *to* a node that opted in (serve: classify);
        # the reply names classes and their probabilities for those items only. No node's data leaves it
        "ClassifyRequest.protocol", "ClassifyRequest.caller_id", "ClassifyRequest.task", "ClassifyRequest.images",
        "ClassifyRequest.texts", "ClassifyRequest.top", "ClassifyReply.snapshot_version", "ClassifyReply.task",
        "ClassifyReply.predictions", "ClassPrediction.label", "ClassPrediction.top_classes",
        "ClassPrediction.top_probabilities"}
