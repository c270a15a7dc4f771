"""freqkd between real node processes of two modalities: a text node distils from an image peer on the
public paired set, then an image node distils from that text peer on the items both hold (hashes under
the swarm's pair secret, over mutual TLS); only declared payload kinds leave a teacher, and no earlier
task moves."""
import pytest

from crossback.node.certs import init_ca, issue

from conftest import node_events, start_serving, stop_nodes, tiny_node_config

EMOJI = [{"name": "t1", "classes": ["animal-mammal", "drink", "tool"]},
         {"name": "t2", "classes": ["sport", "clothing", "time"]}]
SERVE = ["kv", "ddv", "public_features", "features"]
DECLARED = set(SERVE) | {"info", "membership"} | {"info_request", "kv_request", "public_features_request",
                                                   "features_request", "probe_spec"}


def freqkd_config(seed: int, modality: str, pairs: str, certs) -> dict:
    # a TLS seed proves its id on the second round (dialled first under the swarm name): rounds of 0.1 s and
    # tasks of 10 epochs keep the first selection behind the join
    cfg = tiny_node_config(seed, EMOJI, 0.1, 2.0)
    cfg["node"]["tls"] = {"dir": str(certs)}  # features: members only, ids hashed under certs/pair.key
    # one item split and one public set for the whole swarm: the same items are paired in both views
    cfg["data"] = {"source": "emoji", "modality": modality, "image_size": 16, "split_seed": 0,
                   "split": {"public_fraction": 0.25}}
    cfg["model"]["image"] = {"channels": 3, "patch_size": 4}
    cfg["model"]["text"] = {"max_length": 40}
    cfg["train"]["epochs"] = 10
    cfg["node"] |= {"serve": SERVE}
    cfg["transfer"] = {"strategy": "freqkd", "freqkd": {"pairs": pairs}}
    cfg["selection"]["score"] = "logme"
    return cfg


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """img learns t1, t2 alone; txt (seeded with img) learns t1, t2 from it on the public set; img is
    stopped; img2 (seeded with txt) learns t1, t2 from txt on shared item ids."""
    root = tmp_path_factory.mktemp("freqkd")
    certs = root / "certs"
    init_ca(certs)
    for node_id in ("img", "txt", "img2"):
        issue(certs, node_id)
    procs = {}
    try:
        img = start_serving(root, procs, "img", freqkd_config(0, "image", "public", certs), [])
        txt = start_serving(root, procs, "txt", freqkd_config(1, "text", "public", certs), [img])
        procs.pop("img").terminate()
        start_serving(root, procs, "img2", freqkd_config(2, "image", "shared_ids", certs), [txt])
        yield root
    finally:
        stop_nodes(procs)


def test_a_text_node_distils_from_an_image_peer_on_the_public_set(swarm):
    selections = node_events(swarm, "txt", "backbone_selected")
    assert len(selections) == 2
    for sel in selections:
        assert sel["strategy"] == "freqkd" and sel["borrow"] == "public_features"
        assert sel["chosen"] == "img" and sel["chosen_modality"] == "image" and sel["score_name"] == "logme"
    for done in node_events(swarm, "txt", "transfer_done"):
        facts = done["arms"]["selected"]["facts"]
        assert facts["taught_samples"] > 0 and facts["loss_low"] > 0 and facts["loss_high"] > 0
        assert done["arms"]["none"]["facts"]["taught_samples"] == 0
    finished = node_events(swarm, "txt", "task_finished")
    assert len(finished) == 2 and finished[1]["accuracies"][0] == finished[0]["accuracies"][0]  # zero forgetting


def test_an_image_node_distils_from_the_text_peer_on_the_items_both_hold(swarm):
    """txt published t2 with its t2 items: img2's t1 items are not among them (no teacher), its t2 items are."""
    first, second = node_events(swarm, "img2", "backbone_selected")
    assert first["chosen"] is None and "holds none" in first["skipped"][0]["reason"]
    assert second["borrow"] == "features" and second["chosen"] == "txt" and second["chosen_modality"] == "text"
    (done,) = [d for d in node_events(swarm, "img2", "transfer_done") if d["index"] == 1]
    facts = done["arms"]["selected"]["facts"]
    assert facts["taught_samples"] > 0 and "loss_pair_task" not in facts  # shared items are its own
    finished = node_events(swarm, "img2", "task_finished")
    assert finished[1]["accuracies"][0] == finished[0]["accuracies"][0]


@pytest.mark.parametrize("teacher,kind", [("img", "public_features"), ("txt", "features")])
def test_only_declared_kinds_leave_a_teacher(swarm, teacher, kind):
    """From the payload log: every kind a teacher sent is declared (what each kind's messages may carry
    is pinned field by field in test_mona_live's allowlist)."""
    sent = node_events(swarm, teacher, "payload_sent")
    kinds = {e["kind"] for e in sent}
    assert kind in kinds and kinds <= DECLARED
    answers = sorted(e["bytes"] for e in sent if e["kind"] == kind)
    assert answers[-1] >= 32 * 4  # rows of 32 float32 features
    if kind == "features":  # img2's t1 items: none held, so the answer was a bare summary
        assert answers[0] < 16
