"""Frequency-decoupled KD: the public paired set, pair requests and their two RPCs, the strategy's
objective, zero forgetting, the ablation, config checks."""
import json
from dataclasses import replace

import grpc
import pytest
import torch

from crossback.bench.peers import serve_snapshots
from crossback.data.public_set import is_public, public_set_name
from crossback.config.data import SplitSpec, TaskSpec
from crossback.data.tasks import build_task, public_items
from crossback.config.data import View
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import kv_shapes
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.config.errors import ConfigError
from crossback.node.events import EventLog
from crossback.node.features import item_features
from crossback.node.node_config import load_node_config
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.membership import Membership
from crossback.bench.peers import BENCH_PAIR_SECRET as SECRET
from crossback.config.transfer import MAX_PAIR_ITEMS
from crossback.transfer.pairs import Pairs, item_hash
from crossback.orchestrator_free.scores import Receiver, apply_score
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand, Want, probe_candidates
from crossback.config.selection import SelectionConfig
from crossback.node.transport import ClientPool, PeerClient
from crossback.transfer.base import AdaptOptions
from crossback.config.transfer import FreqKDConfig
from crossback.transfer.freqkd import FreqKDTransfer

from conftest import tiny_config

SPLIT = SplitSpec(train=0.5, val=0.2, test=0.3, min_items_per_class=8, max_items_per_class=24, public_fraction=0.25)
PUBLIC = public_set_name("emoji", SPLIT.public_fraction, SPLIT.public_salt)
IMAGE, TEXT = View("image", image_size=16, channels=3), View("text", text_max_length=40)
A = TaskSpec("A", classes=("animal-mammal", "clothing", "transport-ground"))
B = TaskSpec("B", classes=("sky & weather", "alphanum", "food-prepared"))
OPTS = TrainOptions(epochs=3, batch_size=32, lr=2e-3, mask_lr=5e-3)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
ADAPT = AdaptOptions(epochs=2, train=OPTS)


@pytest.fixture(scope="module")
def tasks(emoji_catalog):
    return {(view.modality, spec.name): build_task(emoji_catalog, spec, SPLIT, view, seed=0)[0]
            for view in (IMAGE, TEXT) for spec in (A, B)}


def learner_for(modality: str, tasks_, seed: int) -> ContinualLearner:
    cfg = tiny_config(channels=3, patch=4)
    learner = ContinualLearner(cfg, modality, "packnet", seed=seed)
    for data in tasks_:
        learn_task(learner, data, PACKNET, OPTS)
    return learner


@pytest.fixture(scope="module")
def teacher(tasks, emoji_catalog, tmp_path_factory):
    """A text node that learned A, published with its own items and the public set in its view."""
    learner = learner_for("text", [tasks["text", "A"]], seed=5)
    folder = save_checkpoint(tmp_path_factory.mktemp("teacher"), learner, {})
    return replace(Snapshot.from_checkpoint(folder), data=tasks["text", "A"].train,
                   public=public_items(emoji_catalog, SPLIT, TEXT))


def test_the_public_set_is_held_out_of_every_task_identically_in_both_views(tasks, emoji_catalog):
    for (modality, name), data in tasks.items():
        held = [i for s in (data.train, data.val, data.test) for i in s.items]
        assert held and not any(is_public(i, SPLIT.public_fraction, SPLIT.public_salt) for i in held)
        assert data.public is not None and all(is_public(i, SPLIT.public_fraction, SPLIT.public_salt)
                                               for i in data.public.items)
    # the same items in both views: an image and its caption pair by item id
    assert set(tasks["image", "A"].public.items) == set(tasks["text", "A"].public.items)
    assert set(tasks["image", "A"].test.items) == set(tasks["text", "A"].test.items)
    everything = public_items(emoji_catalog, SPLIT, TEXT)
    assert set(tasks["text", "A"].public.items) < set(everything.items)  # the task's classes only
    other = build_task(emoji_catalog, A, replace(SPLIT, public_salt="another"), TEXT, seed=0)[0]
    assert set(other.public.items) != set(tasks["text", "A"].public.items)
    plain = build_task(emoji_catalog, A, replace(SPLIT, public_fraction=0.0), TEXT, seed=0)[0]
    assert plain.public is None and public_items(emoji_catalog, replace(SPLIT, public_fraction=0.0), TEXT) is None


def test_a_pair_request_names_each_item_once_and_hashes_depend_on_the_salt(tasks):
    source = tasks["image", "A"].train
    pairs = Pairs.from_split("features", source, secret=SECRET)
    assert list(pairs.keys) == sorted(set(source.items))
    assert all(pairs.keys[int(k)] == item for k, item in zip(pairs.sample_key, source.items))
    assert all(int(pairs.labels[pairs.keys.index(item)]) == int(y) for item, y in zip(source.items, source.labels))
    assert pairs.hashes(b"a" * 16) != pairs.hashes(b"b" * 16)
    other_swarm = Pairs.from_split("features", source, secret=b"another swarm's secret")
    assert set(pairs.hashes(b"a" * 16)).isdisjoint(other_swarm.hashes(b"a" * 16))  # the secret is in every hash
    with pytest.raises(ValueError, match="pair secret"):
        Pairs.from_split("features", source).hashes(b"a" * 16)
    capped = Pairs.from_split("features", source, max_items=5)
    assert len(capped.keys) == 5 and capped.keys == Pairs.from_split("features", source, max_items=5).keys
    assert int((capped.sample_key >= 0).sum()) == sum(item in capped.keys for item in source.items)
    with pytest.raises(ValueError, match="unknown pair kind"):
        Pairs.from_split("kv", source)


def test_public_features_answer_only_public_ids_of_the_same_set(tasks, teacher, tmp_path):
    with serve_snapshots({"teacher": teacher}, tmp_path / "logs", {"teacher": PUBLIC}) as addresses:
        client = PeerClient(addresses["teacher"], "student")
        try:
            asked = list(tasks["image", "A"].public.items[:3]) + ["emoji-9999", tasks["image", "A"].train.items[0]]
            feats, matched, version = client.fetch_public_features(keys=asked, public_set=PUBLIC)
            expected = item_features(teacher, teacher.public)
            assert version == 1 and matched == [0, 1, 2]  # not an unknown id, not a private item
            assert feats.shape == (3, 32) and all(torch.allclose(feats[r], expected[asked[r]]) for r in range(3))
            with pytest.raises(grpc.RpcError) as err:
                client.fetch_public_features(keys=asked, public_set="emoji/0.5/other")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and PUBLIC in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                client.fetch_public_features(keys=["x"] * (MAX_PAIR_ITEMS + 1), public_set=PUBLIC)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            client.close()


def test_shared_features_answer_only_items_both_sides_hold(tasks, teacher, tmp_path):
    with serve_snapshots({"teacher": teacher}, tmp_path / "logs", {"teacher": PUBLIC}) as addresses:
        client = PeerClient(addresses["teacher"], "student")
        try:
            mine = Pairs.from_split("features", tasks["image", "B"].train, secret=SECRET)  # never seen by the teacher
            both = Pairs.from_split("features", tasks["image", "A"].train, secret=SECRET)
            salt = b"s" * 16
            feats, matched, _ = client.fetch_shared_features(hashes=mine.hashes(salt) + both.hashes(salt), salt=salt)
            assert matched == [len(mine.keys) + i for i in range(len(both.keys))]  # the shared ones, all of them
            expected = item_features(teacher, teacher.data)
            assert all(torch.allclose(feats[r], expected[both.keys[r]]) for r in range(len(both.keys)))
            assert item_hash(SECRET, salt, both.keys[0]) != item_hash(SECRET, b"t" * 16, both.keys[0])
            # an outsider hashing every guessable id without the secret: not one item revealed
            guessed = Pairs.from_split("features", tasks["image", "A"].train, secret=b"x" * 32)
            nothing_here, no_match, _ = client.fetch_shared_features(hashes=guessed.hashes(salt), salt=salt)
            assert nothing_here is None and no_match == []
            none, nothing, _ = client.fetch_shared_features(hashes=mine.hashes(salt), salt=salt)
            assert none is None and nothing == []
            for bad in ({"hashes": [b"x" * 31], "salt": salt}, {"hashes": [], "salt": b"short"}):
                with pytest.raises(grpc.RpcError) as err:
                    client.fetch_shared_features(**bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            client.close()
    kinds = {e["kind"] for e in map(json.loads, (tmp_path / "logs" / "teacher.jsonl").read_text().splitlines())
             if e.get("event") == "payload_sent"}
    assert kinds == {"features"}




def test_a_node_that_does_not_serve_features_refuses_them_and_freqkd_skips_it(tasks, teacher, tmp_path):
    server, port = bind("127.0.0.1:0", workers=2)
    address = f"127.0.0.1:{port}"
    identity = NodeIdentity("private", address, "text", "packnet", 32, kv_shapes(teacher.learner.cfg),
                            ("kv", "ddv", "backbone"), public_set=PUBLIC)
    events = EventLog("private", tmp_path / "private.jsonl", console=None)
    serve(server, PeerServicer(identity, lambda: teacher, Membership("private", address, [], 60.0), events))
    pool = ClientPool(lambda a, _expected: PeerClient(a, "student"))
    try:
        for kind, kw in (("public_features", {"keys": ["emoji-0001"], "public_set": PUBLIC}),
                         ("features", {"hashes": [], "salt": b"s" * 16})):
            with pytest.raises(grpc.RpcError) as err:
                fetch = pool.get(address).fetch_public_features if kind == "public_features" else \
                    pool.get(address).fetch_shared_features
                fetch(**kw)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and kind in err.value.details()
        student = learner_for("image", [tasks["image", "A"]], seed=6)
        strategy = FreqKDTransfer(FreqKDConfig(pairs="shared_ids"), pair_secret=SECRET)
        (cand,) = probe_candidates(TaskAtHand(student, 0), PeerAccess("rx", [("private", address)], pool),
                                   SelectionConfig(score="logme"), Want.of(strategy, tasks["image", "A"]))
        assert cand.failure.skipped and "features" in cand.error
    finally:
        pool.close()
        server.stop(grace=None)
        events.close()


def _student_and_candidate(tasks, teacher, tmp_path, strategy, task_name="B"):
    """An image student that learned A then ``task_name``, and its probed candidate (the text teacher)."""
    student = learner_for("image", [tasks["image", "A"], tasks["image", task_name]], seed=7)
    data = tasks["image", task_name]
    pool = ClientPool(lambda a, _expected: PeerClient(a, "student"))
    with serve_snapshots({"teacher": teacher}, tmp_path / "logs", {"teacher": PUBLIC}) as addresses:
        try:
            (cand,) = probe_candidates(TaskAtHand(student, 1), PeerAccess("rx", [("teacher", addresses["teacher"])], pool),
                                       SelectionConfig(score="logme"), Want.of(strategy, data))
            apply_score("logme", [cand], Receiver(student, 1, data, 0.5))
        finally:
            pool.close()
    return student, data, cand


def test_freqkd_distils_on_public_pairs_and_leaves_every_earlier_task_bit_identical(tasks, teacher, tmp_path):
    strategy = FreqKDTransfer(FreqKDConfig(), PUBLIC)
    student, data, cand = _student_and_candidate(tasks, teacher, tmp_path, strategy)
    assert cand.error is None and cand.probe.modality == "text" and "logme" in cand.scores.by_name and cand.scores.rank is not None
    asked = strategy.pairs_for(data)
    assert cand.payload.parts["features"].shape == (len(asked.keys), 32)  # the teacher holds every public item
    assert cand.bytes >= cand.payload.parts["features"].numel() * 4
    probe = tasks["image", "A"].test.inputs
    before = predict(student, 0, probe)
    earlier = {n: t.clone() for n, t in student.task_params[0].items()}
    own_b = {n: t.clone() for n, t in student.task_params[1].items()}
    facts = strategy.adapt(student, 1, data, cand.payload.parts, ADAPT, torch.Generator().manual_seed(0))
    assert torch.equal(predict(student, 0, probe), before)
    assert all(torch.equal(student.task_params[0][n], t) for n, t in earlier.items())
    assert any(not torch.equal(student.task_params[1][n], t) for n, t in own_b.items())
    assert facts["taught_samples"] == facts["paired_samples"] == len(data.public)
    assert facts["loss_low"] > 0 and facts["loss_high"] > 0 and facts["loss_align_teacher0"] > 0
    reloaded, _ = load_checkpoint(save_checkpoint(tmp_path / "ckpt", student, {}))
    assert torch.equal(predict(reloaded, 0, probe), before)
    assert torch.equal(predict(reloaded, 1, data.test.inputs), predict(student, 1, data.test.inputs))
    assert not student.borrowed.get(1)  # nothing of the teacher's is kept: features only taught the task


def test_the_none_arm_has_no_teacher_terms_and_the_same_seed_gives_the_same_task(tasks, teacher, tmp_path):
    strategy = FreqKDTransfer(FreqKDConfig(), PUBLIC)
    student, data, cand = _student_and_candidate(tasks, teacher, tmp_path, strategy)
    base = student.task_state(1)
    none = strategy.adapt(student, 1, data, None, ADAPT, torch.Generator().manual_seed(0))
    assert none["taught_samples"] == 0 and "loss_pair_task" in none  # the public items' labels, in both arms
    assert not any(k.startswith(("loss_low", "loss_high", "loss_align")) for k in none)
    runs = []
    for _ in range(2):
        student.set_task_state(1, base)
        taught = strategy.adapt(student, 1, data, cand.payload.parts, ADAPT, torch.Generator().manual_seed(3))
        runs.append(predict(student, 1, data.test.inputs))
    assert torch.equal(runs[0], runs[1])
    losses = lambda facts: {k for k in facts if k.startswith("loss_")}  # noqa: E731
    # the arms differ only in the terms that read the teacher's features
    assert losses(taught) - losses(none) == {"loss_low", "loss_high", "loss_align_teacher0", "loss_align_teacher1"}
    assert losses(none) <= losses(taught)
    assert taught["classifier_probe_loss"] != none["classifier_probe_loss"]  # the teacher's bands were in its fit


def test_shared_ids_teach_only_the_items_the_teacher_holds(tasks, teacher, tmp_path):
    strategy = FreqKDTransfer(FreqKDConfig(pairs="shared_ids"), pair_secret=SECRET)
    student, data, cand = _student_and_candidate(tasks, teacher, tmp_path, strategy, task_name="A")
    assert cand.error is None and len(cand.payload.parts["matched"]) == len(set(data.train.items))
    facts = strategy.adapt(student, 1, data, cand.payload.parts, ADAPT, torch.Generator().manual_seed(0))
    assert facts["taught_samples"] == len(data.train) and "loss_pair_task" not in facts
    student_b, data_b, cand_b = _student_and_candidate(tasks, teacher, tmp_path, strategy, task_name="B")
    assert cand_b.failure.kind == "no_pairs" and "holds none" in cand_b.error  # the teacher never saw B's items


def test_the_ablation_without_band_split_distils_the_whole_feature(tasks, teacher, tmp_path):
    strategy = FreqKDTransfer(FreqKDConfig(decouple=False), PUBLIC)
    student, data, cand = _student_and_candidate(tasks, teacher, tmp_path, strategy)
    facts = strategy.adapt(student, 1, data, cand.payload.parts, ADAPT, torch.Generator().manual_seed(0))
    assert facts["loss_mse"] > 0 and "loss_low" not in facts and "loss_align_teacher1" not in facts


def test_a_teacher_of_another_width_is_bridged_by_a_projection(tasks, teacher, tmp_path):
    strategy = FreqKDTransfer(FreqKDConfig(), PUBLIC)
    student, data, cand = _student_and_candidate(tasks, teacher, tmp_path, strategy)
    wide = dict(cand.payload.parts, features=torch.randn(len(cand.payload.parts["matched"]), 48, generator=torch.Generator().manual_seed(1)))
    facts = strategy.adapt(student, 1, data, wide, ADAPT, torch.Generator().manual_seed(0))
    assert facts["projection"] is True and facts["loss_low"] > 0


def test_freqkd_on_the_public_set_needs_one_in_the_config(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text("node: {node_id: a}\ndata: {source: emoji, modality: image}\n"
                    "tasks: [{name: t, superclass: animals-nature}]\ntransfer: {strategy: freqkd}\n")
    with pytest.raises(ConfigError, match="public_fraction"):
        load_node_config(path)
    path.write_text("node: {node_id: a, serve: [kv, ddv, public_features]}\n"
                    "data: {source: emoji, modality: image, split: {public_fraction: 0.2}}\n"
                    "tasks: [{name: t, superclass: animals-nature}]\ntransfer: {strategy: freqkd}\n")
    cfg = load_node_config(path)
    assert cfg.transfer.freqkd.low_weight == cfg.transfer.freqkd.high_weight == 1.0
    assert "public_features" in cfg.node.serve


def test_shared_item_features_need_tls_and_the_swarm_pair_secret(tmp_path):
    from crossback.node.certs import init_ca, issue

    base = ("data: {source: emoji, modality: image}\ntasks: [{name: t, superclass: animals-nature}]\n")
    path = tmp_path / "node.yaml"
    path.write_text("node: {node_id: a, serve: [kv, ddv, features]}\n" + base)
    with pytest.raises(ConfigError, match="node.serve: features answers only swarm members.*no TLS"):
        load_node_config(path)
    path.write_text("node: {node_id: a}\ntransfer: {strategy: freqkd, freqkd: {pairs: shared_ids}}\n" + base)
    with pytest.raises(ConfigError, match="shared_ids needs the swarm's pair secret"):
        load_node_config(path)
    init_ca(tmp_path / "certs")  # writes pair.key beside the CA
    issue(tmp_path / "certs", "a")
    path.write_text(f"node: {{node_id: a, serve: [kv, ddv, features], tls: {{dir: {tmp_path / 'certs'}}}}}\n"
                    "transfer: {strategy: freqkd, freqkd: {pairs: shared_ids}}\n" + base)
    cfg = load_node_config(path)
    assert len(cfg.pair_secret) == 32 and "features" in cfg.node.serve
    (tmp_path / "short.key").write_text("abcd\n")
    path.write_text(f"node: {{node_id: a, tls: {{dir: {tmp_path / 'certs'}}}}}\nswarm: {{pair_secret_file: "
                    f"{tmp_path / 'short.key'}}}\n" + base)
    with pytest.raises(ConfigError, match="swarm.pair_secret_file: .*short.key holds 2 bytes"):
        load_node_config(path)


def test_the_demo_runs_its_nodes_on_freqkd_when_asked(tmp_path):
    import yaml

    from crossback.app.demo import GROUPS, node_config
    from crossback.data.prepare import prepare_public, prepare_tasks

    path = tmp_path / "txt-0.yaml"
    path.write_text(yaml.safe_dump(node_config({"node_id": "txt-0", "modality": "text", "role": "receiver",
                                                "tasks": GROUPS}, 0, 1, 1, strategy="freqkd")))
    cfg = load_node_config(path, {}, {})
    assert cfg.transfer.strategy == "freqkd" and "public_features" in cfg.node.serve
    tasks, _ = prepare_tasks(cfg.run)  # every demo task still builds with the public set held out
    public = prepare_public(cfg.run)
    assert all(t.public is not None and set(t.public.items) <= set(public.items) for t in tasks)
