"""MoNA: the outer loss, the source-side gradient and its RPC, first order against the exact objective,
zero forgetting of the two-stage adaptation."""
from dataclasses import replace

import grpc
import pytest
import torch
import torch.nn.functional as F

from crossback.bench.peers import serve_snapshots
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import ENCODER_KV, kv_shapes
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.node.events import EventLog
from crossback.node.outer_grad import OuterGradService
from crossback.node.server import NodeIdentity, PeerServicer, bind, serve
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.membership import Membership
from crossback.orchestrator_free.selection import (PeerAccess, TaskAtHand, Candidate, Payload, Want, fetch_extra,
                                                  probe_candidates)
from crossback.config.selection import SelectionConfig
from crossback.node.transport import ClientPool, PeerClient
from crossback.transfer.alignment import alignment_uniformity, body_names, outer_gradient, outer_loss
from crossback.transfer.base import AdaptOptions
from crossback.transfer.mona import OUTER_GRAD, MonaTransfer, embedder_names, first_order_objective
from crossback.config.transfer import MonaConfig

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64, lr=2e-3, mask_lr=5e-3)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))


def learned(tasks, seed: int, modality: str = "image") -> ContinualLearner:
    learner = ContinualLearner(tiny_config(), modality, "packnet", seed=seed)
    for data in tasks:
        learn_task(learner, data, PACKNET, OPTS)
    return learner


def test_alignment_is_zero_for_identical_classmates_and_uniformity_rewards_spread():
    labels = torch.tensor([0, 0, 1, 1])
    collapsed = torch.ones(4, 8)
    align, uniform = alignment_uniformity(collapsed, labels)
    assert float(align) == 0.0 and abs(float(uniform)) < 1e-6  # log mean exp(0) = 0: the worst uniformity
    spread = torch.eye(4, 8)
    _, spread_uniform = alignment_uniformity(spread, labels)
    assert float(spread_uniform) < -3.0  # orthogonal unit vectors: squared distance 2, log exp(-4)
    pulled = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert float(alignment_uniformity(pulled, labels)[0]) < float(alignment_uniformity(far, labels)[0])
    align_one, _ = alignment_uniformity(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert float(align_one) == 0.0  # no same-class pair in the batch


def test_the_outer_gradient_is_the_mean_of_batch_gradients_bounded_and_deterministic(digits_tasks):
    source = learned(digits_tasks[:1], seed=1)
    data = digits_tasks[0].train
    one = outer_gradient(source, 0, data, batches=1, batch_size=len(data), seed=0)
    body = {n: t.clone().requires_grad_(True) for n, t in one.body.items()}
    loss, _, _ = outer_loss(source, 0, data.inputs, data.labels, body)
    expected = dict(zip(body, torch.autograd.grad(loss, list(body.values()), allow_unused=True)))
    assert set(one.grad) == set(body_names(source, 0)) and one.sample_count == len(data)
    assert abs(one.outer_loss - float(loss)) < 1e-5
    for n, g in one.grad.items():
        ref = expected[n] if expected[n] is not None else torch.zeros_like(g)
        assert torch.allclose(g, ref, atol=1e-6), n
    assert sum(float(g.norm()) for g in one.grad.values()) > 0
    capped = outer_gradient(source, 0, data, batches=2, batch_size=16, seed=3)
    assert capped.batch_count == 2 and capped.sample_count == 32
    again = outer_gradient(source, 0, data, batches=2, batch_size=16, seed=3)
    assert all(torch.equal(capped.grad[n], again.grad[n]) for n in capped.grad)
    assert ENCODER_KV not in one.body and not any(n.startswith("adapter.") for n in one.body)  # the body only


def _exact_and_first_order(source, target, src_data, tgt_x, tgt_y, lam: float, alpha: float):
    """phi_e gradients of the exact MoNA objective (Eq. 7, source data at hand), of its first-order form
    (Eq. 9, the source's gradient only) and of L_inner alone, at theta_f = the source's body."""
    names = body_names(source, 0)
    with torch.no_grad():
        theta0 = {n: t.detach().clone() for n, t in source.params_for(0).items() if n in names}
        base = {n: t.detach().clone() for n, t in target.params_for(0).items()}
    phi_names = embedder_names(base)

    def grads(objective_fn):
        phi = {n: base[n].clone().requires_grad_(True) for n in phi_names}
        theta = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
        logits_fn = lambda th: target.call(target.net, base | phi | th, (tgt_x,))  # noqa: E731
        return torch.autograd.grad(objective_fn(logits_fn, theta), list(phi.values()))

    def exact(logits_fn, theta):
        inner = F.cross_entropy(logits_fn(theta), tgt_y)
        g = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
        stepped = {n: t - alpha * gi for (n, t), gi in zip(theta.items(), g)}  # the virtual fine-tuning step
        return inner + lam * outer_loss(source, 0, src_data.inputs, src_data.labels, stepped)[0]

    g_outer = outer_gradient(source, 0, src_data, batches=1, batch_size=len(src_data)).grad
    first = lambda fn, th: first_order_objective(fn, th, tgt_y, g_outer, lam * alpha)[0]  # noqa: E731
    inner_only = lambda fn, th: F.cross_entropy(fn(th), tgt_y)  # noqa: E731
    return grads(exact), grads(first), grads(inner_only)


def test_first_order_mona_matches_the_exact_objective_to_first_order_in_alpha(digits_tasks):
    """Their meta-gradients (each minus the plain L_inner gradient) differ by O(alpha^2) while each is
    O(alpha): the relative gap shrinks in proportion to alpha."""
    source = learned(digits_tasks[:1], seed=1)
    target = learned(digits_tasks[1:2], seed=2)
    src = replace(digits_tasks[0].train, inputs=digits_tasks[0].train.inputs[:48],
                  labels=digits_tasks[0].train.labels[:48])
    x, y = digits_tasks[1].train.inputs[:48], digits_tasks[1].train.labels[:48]
    gaps = []
    for alpha in (0.1, 0.01, 0.001):
        exact, first, inner = _exact_and_first_order(source, target, src, x, y, lam=0.4, alpha=alpha)
        meta_exact = torch.cat([(e - i).reshape(-1) for e, i in zip(exact, inner)])
        meta_first = torch.cat([(f - i).reshape(-1) for f, i in zip(first, inner)])
        assert float(meta_exact.norm()) > 0
        gaps.append(float((meta_exact - meta_first).norm() / meta_exact.norm()))
    assert gaps[2] < 0.02, gaps
    assert gaps[1] < gaps[0] / 4 and gaps[2] < gaps[1] / 4, gaps  # ~ proportional to alpha (10x per step)


def _payload(source: ContinualLearner, data) -> dict:
    result = outer_gradient(source, len(source.tasks) - 1, data, batches=2, batch_size=32)
    return result.body | {OUTER_GRAD + n: g for n, g in result.grad.items()}


def test_mona_adapts_on_the_peers_body_and_leaves_every_earlier_task_bit_identical(digits_tasks, tmp_path):
    source = learned(digits_tasks[2:3], seed=5)
    learner = learned(digits_tasks[:2], seed=0)
    probe = digits_tasks[0].test.inputs[:32]
    before_logits = predict(learner, 0, probe)
    before_params = {n: t.clone() for n, t in learner.task_params[0].items()}
    before_shared = {n: l.weight.detach().clone() for n, l in learner.layers.items()}
    owners = {n: l.owner.clone() for n, l in learner.layers.items()}
    payload = _payload(source, digits_tasks[2].train)
    strategy = MonaTransfer(MonaConfig(stage1_epochs=2))
    facts = strategy.adapt(learner, 1, digits_tasks[1], payload, AdaptOptions(epochs=1, train=OPTS),
                           torch.Generator().manual_seed(0))
    assert torch.equal(predict(learner, 0, probe), before_logits)
    assert all(torch.equal(learner.task_params[0][n], t) for n, t in before_params.items())
    for n, layer in learner.layers.items():  # task 0's weights (and everyone's ownership) unchanged
        mask = owners[n] == 1
        assert torch.equal(layer.weight.detach()[mask], before_shared[n][mask]) and torch.equal(layer.owner, owners[n])
    assert set(learner.borrowed[1]) == {n for n in payload if n in learner.layers and not n.startswith(OUTER_GRAD)}
    assert ENCODER_KV in learner.own_copies(1)  # phi_e's K/V is the task's own copy
    assert facts["stage1_steps"] > 0 and len(facts["grad_cosine"]) == 2 and facts["borrowed_tensors"] > 0
    folder = save_checkpoint(tmp_path / "ckpt", learner, {})
    restored, _ = load_checkpoint(folder)
    for task in (0, 1):
        x = digits_tasks[task].test.inputs[:32]
        assert torch.equal(predict(restored, task, x), predict(learner, task, x))


def test_stage_one_moves_only_the_embedder_and_head(digits_tasks):
    """theta_f stays at the peer's values through stage 1; phi_e and the head learn."""
    source = learned(digits_tasks[2:3], seed=5)
    learner = learned(digits_tasks[:1], seed=0)
    payload = _payload(source, digits_tasks[2].train)
    strategy = MonaTransfer(MonaConfig(stage1_epochs=3))
    learner.make_own_copy(0, ENCODER_KV)
    body = {n: t for n, t in payload.items() if not n.startswith(OUTER_GRAD)}
    learner.begin_adaptation(0, body, own_weights=True)
    try:
        start = {n: t.detach().clone() for n, t in learner.params_for(0).items()}
        strategy._stage1(learner, 0, digits_tasks[0], {n.removeprefix(OUTER_GRAD): t for n, t in payload.items()
                                                       if n.startswith(OUTER_GRAD)},
                         AdaptOptions(epochs=0, train=OPTS), torch.Generator().manual_seed(0))
        with torch.no_grad():
            after = {n: t.detach() for n, t in learner.params_for(0).items()}
    finally:
        learner.end_adaptation()
    moved = {n for n in start if not torch.equal(start[n], after[n])}
    assert moved and moved <= set(embedder_names(after)) | {"query", "head.weight", "head.bias"}
    assert ENCODER_KV in moved and any(n.startswith("adapter.") for n in moved)
    assert all(torch.equal(after[n], body[n]) for n in body if n not in learner.layers)


def test_fetch_outer_grad_serves_the_body_and_its_gradient_never_the_items(digits_tasks, tmp_path):
    donor = learned(digits_tasks[:1], seed=3)
    snap = replace(Snapshot.from_checkpoint(save_checkpoint(tmp_path / "d", donor, {})), data=digits_tasks[0].train)
    bare = Snapshot.from_checkpoint(save_checkpoint(tmp_path / "b", donor, {}))  # no items to compute on
    with serve_snapshots({"donor": snap, "bare": bare}, tmp_path / "logs") as addresses:
        client = PeerClient(addresses["donor"], "rx")
        try:
            body, grad, summary, version = client.fetch_outer_grad(max_batches=100)
            assert version == 1 and summary.batch_count == 4 and summary.sample_count == summary.batch_count * 64
            expected = outer_gradient(snap.learner, 0, snap.data, 4, 64, seed=7_919)
            assert set(body) == set(grad) == set(snap.parts("encoder"))
            assert all(torch.equal(body[n], snap.parts("encoder")[n]) for n in body)
            assert all(torch.equal(grad[n], expected.grad[n]) for n in grad)
            assert abs(summary.outer_loss - expected.outer_loss) < 1e-6
            shapes = {n: tuple(t.shape) for n, t in body.items()}
            none, same, _, _ = client.fetch_outer_grad(held=(1, shapes))  # we hold version 1's body already
            assert none == {} and all(torch.equal(same[n], grad[n]) for n in grad)
            resent, _, _, _ = client.fetch_outer_grad(held=(2, shapes))  # another version: the body comes along
            assert set(resent) == set(body)
            own = learned(digits_tasks[1:2], seed=4)
            cand = Candidate("donor", addresses["donor"], snapshot_version=1, payload=Payload(parts=dict(body)))
            payload = fetch_extra(client, cand, MonaTransfer(MonaConfig(outer_batches=2)), own.part_shapes(0))
            assert cand.payload.extra["batch_count"] == 2 and cand.payload.parts == body  # the body selection fetched is used
            assert cand.bytes == sum(t.numel() * t.element_size() for t in grad.values())  # only the gradient moved
            assert {n for n in payload if n.startswith(OUTER_GRAD)} == {OUTER_GRAD + n for n in body}
            fresh = Candidate("donor", addresses["donor"], snapshot_version=1)  # nothing held: body and gradient
            fetch_extra(client, fresh, MonaTransfer(), own.part_shapes(0))
            assert set(fresh.payload.parts) == set(body) and fresh.bytes == 2 * cand.bytes
        finally:
            client.close()
        bare_client = PeerClient(addresses["bare"], "rx")
        try:
            with pytest.raises(grpc.RpcError) as err:
                bare_client.fetch_outer_grad()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "labelled" in err.value.details()
        finally:
            bare_client.close()


def test_a_node_that_does_not_serve_outer_grad_refuses_it(digits_tasks, tmp_path):
    donor = learned(digits_tasks[:1], seed=3)
    snap = replace(Snapshot.from_checkpoint(save_checkpoint(tmp_path / "d", donor, {})), data=digits_tasks[0].train)
    server, port = bind("127.0.0.1:0", workers=2)
    address = f"127.0.0.1:{port}"
    identity = NodeIdentity("private", address, "image", "packnet", 32, kv_shapes(donor.cfg), ("kv", "ddv", "encoder"))
    events = EventLog("private", tmp_path / "private.jsonl", console=None)
    serve(server, PeerServicer(identity, lambda: snap, Membership("private", address, [], 60.0), events,
                               OuterGradService(2, 16)))
    client = PeerClient(address, "rx")
    pool = ClientPool(lambda a, _expected: PeerClient(a, "rx"))
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.fetch_outer_grad()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "outer_grad" in err.value.details()
        tensors, _ = client.fetch_payload("encoder")  # the body alone it does serve
        assert set(tensors) == set(snap.parts("encoder"))
        receiver = learned(digits_tasks[1:2], seed=4)
        strategy = MonaTransfer()
        (cand,) = probe_candidates(TaskAtHand(receiver, 0), PeerAccess("rx", [("private", address)], pool),
                                   SelectionConfig(score="logme"), Want.of(strategy))
        assert cand.failure.kind == "not_served" and "outer_grad" in cand.error  # a mona node skips it, saying why
    finally:
        client.close()
        pool.close()
        server.stop(grace=None)
        events.close()


def test_the_demo_runs_its_nodes_on_mona_when_asked(tmp_path):
    import yaml

    from crossback.app.demo import GROUPS, node_config
    from crossback.node.node_config import load_node_config

    path = tmp_path / "img-0.yaml"
    path.write_text(yaml.safe_dump(node_config({"node_id": "img-0", "modality": "image", "role": "donor",
                                                "tasks": GROUPS}, 0, 1, 1, strategy="mona")))
    cfg = load_node_config(path, {}, {})
    assert cfg.transfer.strategy == "mona" and {"encoder", "outer_grad"} <= set(cfg.node.serve)
    path.write_text(yaml.safe_dump(node_config({"node_id": "img-0", "modality": "image", "role": "donor",
                                                "tasks": GROUPS}, 0, 1, 1)))
    assert "outer_grad" not in load_node_config(path, {}, {}).node.serve  # lent only by a mona swarm
