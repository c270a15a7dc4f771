"""Borrow levels (kv | block | backbone), payload kinds a node serves, swarm genesis and provenance."""
from dataclasses import replace

import grpc
import pytest
import torch

from crossback.models.serialise import learner_from_tensors, learner_metadata, shared_tensors, task_tensors
from crossback.bench.peers import serve_snapshots
from crossback.models.borrowed import HEAD_PARTS, TOKEN_READERS, accept_parts, part_names
from crossback.config.transfer import PART_KINDS
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import ENCODER_KV, kv_shapes
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.node.events import EventLog
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.backbone import record_provenance
from crossback.orchestrator_free.genesis import genesis_id
from crossback.orchestrator_free.membership import Membership
from crossback.orchestrator_free.scores import logme_evidence
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand, probe_candidates
from crossback.config.selection import SelectionConfig
from crossback.node.transport import ClientPool, PeerClient
from crossback.transfer.base import AdaptOptions
from crossback.transfer.crossback import CrossBackTransfer, TaskTransfer

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64, lr=2e-3, mask_lr=5e-3)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
SELECT = SelectionConfig(probe=replace(SelectionConfig().probe, pair_count=8, token_count=4))


def _core(learner):
    return {n: t for n, t in learner.net.named_parameters() if n.startswith("core.")}


def test_one_genesis_gives_one_core_across_modalities_and_one_adapter_per_modality():
    img = ContinualLearner(tiny_config(), "image", "packnet", seed=1, genesis=7)
    img2 = ContinualLearner(tiny_config(), "image", "packnet", seed=3, genesis=7)
    txt = ContinualLearner(tiny_config(), "text", "packnet", seed=2, genesis=7)
    other = ContinualLearner(tiny_config(), "image", "packnet", seed=1, genesis=8)
    assert all(torch.equal(t, _core(txt)[n]) for n, t in _core(img).items())
    assert all(torch.equal(t, dict(img2.net.named_parameters())[n]) for n, t in img.net.named_parameters()
               if n.startswith("adapter."))
    assert not torch.equal(img.layers[ENCODER_KV].weight, other.layers[ENCODER_KV].weight)
    plain = ContinualLearner(tiny_config(), "image", "packnet", seed=1), ContinualLearner(tiny_config(), "text", "packnet", seed=1)
    assert not torch.equal(*(p.layers[ENCODER_KV].weight for p in plain))  # without genesis: own bases
    assert genesis_id(7, tiny_config()) == genesis_id(7, tiny_config(channels=3)) != genesis_id(7, replace(tiny_config(), depth=2))
    assert genesis_id(None, tiny_config()) == ""


def test_borrow_levels_cover_what_their_names_say():
    names = [n for n, _ in ContinualLearner(tiny_config(), "image", "packnet").net.named_parameters()]
    kv, latents, block, body, encoder, task = (set(part_names(k, names)) for k in PART_KINDS)
    assert body <= task and task - body <= set(HEAD_PARTS)  # the same-task path: the backbone and the head
    assert kv == {ENCODER_KV} and latents == {"core.latents"} and latents < block
    assert encoder == {n for n in body if n.startswith("core.")} - set(TOKEN_READERS)  # mona's theta_f
    assert block - set(TOKEN_READERS) < encoder and any(n.startswith("core.layers.") for n in encoder)
    assert ENCODER_KV in block and "core.latents" in block and not any(n.startswith("core.layers.") for n in block)
    assert {ENCODER_KV, "core.latents", "adapter.patch_proj.weight"} <= body
    assert any(n.startswith("core.decoder_cross_attn.") for n in body)
    assert not any(n.startswith(("adapter.", "head.")) or n == "query" for n in block)
    assert not any(n.startswith("head.") or n == "query" for n in body)
    with pytest.raises(ValueError, match="unknown payload kind"):
        part_names("everything", names)
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learner.begin_task("t", 3)
    assert set(part_names("task", learner.part_shapes(0))) >= set(HEAD_PARTS)


def test_a_receiver_of_another_modality_takes_the_body_and_keeps_its_own_token_readers():
    image, text = (ContinualLearner(tiny_config(), m, "packnet", genesis=3) for m in ("image", "text"))
    for peer in (image, text):
        peer.begin_task("t", 2)
        peer.end_task()
    own = image.part_shapes(0)
    from_text = accept_parts("backbone", text.extract_parts(part_names("backbone", text.part_shapes(0)), 0), own)
    assert ENCODER_KV not in from_text and not any(n.startswith("adapter.") for n in from_text)
    assert "core.latents" in from_text and "core.cross_attend_block.cross_attn.fn.to_q.weight" in from_text
    from_image = accept_parts("backbone", image.extract_parts(part_names("backbone", own), 0), own)
    assert ENCODER_KV in from_image and "adapter.patch_proj.weight" in from_image  # same layout: all of it
    broken = {n: t for n, t in from_image.items() if n != "core.latents"}
    with pytest.raises(ValueError, match="lacks 'core.latents'"):
        accept_parts("backbone", broken, own)


@pytest.fixture(scope="module")
def learned(digits_tasks):
    local = ContinualLearner(tiny_config(), "image", "packnet", seed=0, genesis=11)
    for data in digits_tasks[:2]:
        learn_task(local, data, PACKNET, OPTS)
    peer = ContinualLearner(tiny_config(), "image", "packnet", seed=5, genesis=11)
    learn_task(peer, digits_tasks[2], PACKNET, OPTS)
    twin = ContinualLearner(tiny_config(), "image", "packnet", seed=6, genesis=11)  # learned local's task 1 too
    learn_task(twin, digits_tasks[1], PACKNET, OPTS)
    return local, peer, twin


@pytest.mark.parametrize("kind", PART_KINDS)
def test_every_borrow_level_changes_only_the_adapted_task_and_survives_a_checkpoint(kind, learned, digits_tasks, tmp_path):
    base, peer, twin = learned
    local = learner_from_tensors(learner_metadata(base), shared_tensors(base), [task_tensors(base, i) for i in range(2)])
    task0 = predict(local, 0, digits_tasks[0].test.inputs)
    task1 = predict(local, 1, digits_tasks[1].test.inputs)
    peer = twin if kind == "task" else peer  # a whole task (head included) comes from a peer of the same classes
    parts = peer.extract_parts(part_names(kind, peer.part_shapes(0)), 0)
    strategy = TaskTransfer() if kind == "task" else CrossBackTransfer(kind)
    facts = strategy.adapt(local, 1, digits_tasks[1], parts, AdaptOptions(epochs=2, train=OPTS, own_weights=True),
                                          torch.Generator().manual_seed(0))
    assert facts["changed_tensors"] >= (1 if kind in ("kv", "latents") else 10)
    if kind == "latents":  # a per-task tensor only: the task's new starting value, no mask over it
        assert not local.borrowed[1] and "mask_kept" not in facts
    else:
        assert 0.0 < facts["mask_kept"] <= 1.0
    assert torch.equal(predict(local, 0, digits_tasks[0].test.inputs), task0)  # zero forgetting, bit for bit
    assert not torch.equal(predict(local, 1, digits_tasks[1].test.inputs), task1)
    with torch.no_grad():
        running = local.params_for(1)
    for name, weight in local.borrowed[1].items():  # shared-weight parts run frozen under the learned mask
        assert torch.equal(weight, parts[name]) and torch.equal(running[name], weight * local.borrow_masks[1][name])
    if kind == "backbone":  # a peer of the same input layout lends its adapter too
        assert ENCODER_KV in local.borrowed[1]
    expected = predict(local, 1, digits_tasks[1].test.inputs)
    restored, _ = load_checkpoint(save_checkpoint(tmp_path, local, {}))
    assert torch.equal(predict(restored, 1, digits_tasks[1].test.inputs), expected)
    assert torch.equal(predict(restored, 0, digits_tasks[0].test.inputs), task0)


def _serve(snap: Snapshot, name: str, serve_kinds, genesis: str, tmp_path):
    server, port = bind("127.0.0.1:0", workers=2)
    address = f"127.0.0.1:{port}"
    identity = NodeIdentity(name, address, "image", "packnet", 32, kv_shapes(tiny_config()), tuple(serve_kinds), genesis)
    events = EventLog(name, tmp_path / f"{name}.jsonl", console=None)
    serve(server, PeerServicer(identity, lambda: snap, Membership(name, address, [], 60.0), events))
    return server, address, events


def _snapshot(learner, tmp_path, name) -> Snapshot:
    return Snapshot.from_checkpoint(save_checkpoint(tmp_path / name, learner, {}))


def test_a_node_serves_only_the_payload_kinds_its_config_allows(learned, tmp_path):
    _, peer, _ = learned
    snap = _snapshot(peer, tmp_path, "peer")
    server, address, events = _serve(snap, "peer", ("kv", "ddv"), genesis_id(11, tiny_config()), tmp_path)
    client = PeerClient(address, "tester")
    try:
        info = client.get_info()
        assert list(info.payload_kinds) == ["kv", "ddv"] and info.genesis == genesis_id(11, tiny_config())
        with pytest.raises(grpc.RpcError) as refused:
            client.fetch_payload("backbone")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "does not serve" in refused.value.details()
        with pytest.raises(grpc.RpcError) as unknown:
            client.fetch_payload("gradients")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        parts, version = client.fetch_payload("kv")
        assert version == 1 and torch.equal(parts[ENCODER_KV], snap.parts("kv")[ENCODER_KV])
    finally:
        client.close()
        server.stop(None)
        events.close()


def test_selection_skips_peers_of_another_genesis_and_peers_that_do_not_serve_the_borrow_level(learned, digits_tasks,
                                                                                                  tmp_path):
    local, peer, _ = learned
    other = ContinualLearner(tiny_config(), "image", "packnet", seed=5, genesis=12)
    learn_task(other, digits_tasks[2], PACKNET, OPTS)
    mine = genesis_id(11, tiny_config())
    served = [_serve(_snapshot(peer, tmp_path, "full"), "full", ("kv", "ddv", "backbone"), mine, tmp_path),
              _serve(_snapshot(peer, tmp_path, "kvonly"), "kvonly", ("kv", "ddv"), mine, tmp_path),
              _serve(_snapshot(other, tmp_path, "alien"), "alien", ("kv", "ddv", "backbone"), genesis_id(12, tiny_config()),
                     tmp_path)]
    clients = ClientPool(lambda a, _expected: PeerClient(a, "local"))
    try:
        peers = [(name, address) for name, (_, address, _) in zip(("full", "kvonly", "alien"), served)]
        cands = {c.peer: c for c in probe_candidates(TaskAtHand(local, 1), PeerAccess("rx", peers, clients, mine), SELECT,
                                                     "backbone")}
        assert cands["full"].error is None and set(cands["full"].payload.parts) == set(part_names("backbone", local.part_shapes(1)))
        assert cands["full"].payload.origin == "full" and cands["full"].probe.cos is not None
        assert cands["kvonly"].failure.kind == "not_served" and "does not serve ['backbone']" in cands["kvonly"].error
        assert cands["alien"].failure.kind == "other_genesis" and "genesis" in cands["alien"].error
    finally:
        clients.close()
        for server, _, events in served:
            server.stop(None)
            events.close()


def test_re_served_parts_name_the_node_that_learned_them(learned, digits_tasks, tmp_path):
    """A learns, B borrows A's backbone and re-serves it, C borrowing from B is told the parts are A's."""
    base, a, _ = learned
    b = learner_from_tensors(learner_metadata(base), shared_tensors(base), [task_tensors(base, i) for i in range(2)])
    mine = genesis_id(11, tiny_config())
    with serve_snapshots({"A": _snapshot(a, tmp_path, "A")}, tmp_path / "logs-a") as addresses:
        clients = ClientPool(lambda x, _expected: PeerClient(x, "B"))
        (cand,) = probe_candidates(TaskAtHand(b, 1), PeerAccess("b", list(addresses.items()), clients, mine), SELECT,
                                   "backbone")
        clients.close()
    CrossBackTransfer("backbone").adapt(b, 1, digits_tasks[1], cand.payload.parts, AdaptOptions(epochs=1, train=OPTS), torch.Generator())
    record_provenance(b, 1, cand, "backbone")
    snap_b = _snapshot(b, tmp_path, "B")
    assert set(snap_b.origins().values()) == {"A"}
    with serve_snapshots({"B": snap_b}, tmp_path / "logs-b") as addresses:
        clients = ClientPool(lambda x, _expected: PeerClient(x, "C"))
        access = PeerAccess("b", list(addresses.items()), clients, mine)
        (via_b,) = probe_candidates(TaskAtHand(b, 0), access, SELECT, "backbone")
        (kv_b,) = probe_candidates(TaskAtHand(b, 0), access, SELECT, "kv")
        clients.close()
    assert via_b.error is None and via_b.payload.origin == "A"  # the body B serves is A's
    assert kv_b.payload.origin == "A"  # same input layout: B borrowed A's K/V with the rest


def test_logme_prefers_features_that_separate_the_classes():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    separable = torch.nn.functional.one_hot(labels, 4).float() * 3 + 0.3 * torch.randn(40, 4, generator=g)
    separable = torch.cat([separable, torch.randn(40, 12, generator=g)], dim=1)
    noise = torch.randn(40, 16, generator=g)
    assert logme_evidence(separable, labels, 4) > logme_evidence(noise, labels, 4)
    assert logme_evidence(separable, labels, 4) > logme_evidence(separable, labels[torch.randperm(40, generator=g)], 4)
