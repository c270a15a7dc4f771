"""MergeNet: the low-rank adapter across shapes, the hypernetwork rule, zero forgetting, selection across shapes."""
from dataclasses import replace

import pytest
import torch

from crossback.bench.peers import serve_snapshots
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import ENCODER_KV
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.node.snapshot import Snapshot
from crossback.orchestrator_free.scores import Receiver, apply_score
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand, Want, probe_candidates
from crossback.config.selection import SelectionConfig
from crossback.node.transport import ClientPool, PeerClient
from crossback.transfer.base import AdaptOptions
from crossback.transfer.lpka import LPKA, low_rank
from crossback.config.transfer import MergeNetConfig
from crossback.transfer.mergenet import MergeNetTransfer
from crossback.config.transfer import TransferConfig
from crossback.transfer.registry import make_strategy

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64, lr=2e-3, mask_lr=5e-3)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
SELECT = SelectionConfig(probe=replace(SelectionConfig().probe, pair_count=8, token_count=4), score="ddv")


def wider_config():
    """Another model size: token width C 48 instead of 32, K/V 24 x 48 instead of 16 x 32."""
    return replace(tiny_config(), token_dim=48, cross_dim_head=24)


def test_low_rank_reencoding_is_the_best_rank_r_approximation():
    w = torch.randn(20, 12, generator=torch.Generator().manual_seed(0))
    b, a = low_rank(w, 12)
    assert b.shape == (20, 12) and a.shape == (12, 12) and torch.allclose(b @ a, w, atol=1e-5)
    b4, a4 = low_rank(w, 4)
    s = torch.linalg.svdvals(w)
    assert torch.allclose((w - b4 @ a4).norm(), s[4:].norm(), atol=1e-4)  # Eckart-Young


def test_the_adapter_reads_matrices_of_any_shape_and_starts_as_the_identity():
    g = torch.Generator().manual_seed(0)
    w_t, w_s = torch.randn(32, 32, generator=g), torch.randn(48, 48, generator=g)
    adapter = LPKA(tuple(w_t.shape), tuple(w_s.shape), rank=4, dim=16, heads=4, layers=2)
    assert torch.equal(adapter(w_t, w_s), w_t)  # mixing weights start at zero: nothing overwritten
    with torch.no_grad():
        for layer in adapter.layers:
            layer.weights.fill_(0.5)
    out = adapter(w_t, w_s)
    assert out.shape == w_t.shape and not torch.allclose(out, w_t)
    delta = torch.linalg.matrix_rank((out - w_t).detach())
    assert int(delta) <= 4  # changes stay in the target's rank-r subspace: the rest of W_t is kept
    out.sum().backward()
    assert all(p.grad is not None for p in adapter.parameters())


def test_the_hypernetwork_rule_moves_generated_weights_down_the_targets_loss():
    """phi <- phi - lr (dW~/dphi)^T (W~ - W'), with W' one gradient step of the target from W~."""
    torch.manual_seed(0)
    w_t, w_s = torch.randn(16, 8), torch.randn(24, 12)
    b, _ = low_rank(w_t, 4)
    goal = w_t + b @ torch.randn(4, 8)  # reachable: inside the target's rank-4 subspace
    loss = lambda w: float(((w - goal) ** 2).sum())  # noqa: E731
    adapter = LPKA((16, 8), (24, 12), rank=4, dim=16, heads=2, layers=2)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2, weight_decay=0.0)
    before = loss(adapter(w_t, w_s).detach())
    for _ in range(150):
        generated = adapter(w_t, w_s)
        with torch.no_grad():
            stepped = generated - 0.1 * 2 * (generated - goal)  # the target's own SGD step
        optimizer.zero_grad()
        (generated * (generated.detach() - stepped)).sum().backward()
        optimizer.step()
    assert loss(adapter(w_t, w_s).detach()) < 0.5 * before


@pytest.fixture()
def two_sizes(digits_tasks):
    """A receiver with two learned tasks, and a donor of another model size (other K/V shapes)."""
    local = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    for data in digits_tasks[:2]:
        learn_task(local, data, PACKNET, OPTS)
    donor = ContinualLearner(wider_config(), "image", "packnet", seed=5)
    learn_task(donor, digits_tasks[2], PACKNET, OPTS)
    return local, donor


def test_mergenet_changes_only_the_adapted_tasks_own_copy_and_survives_a_checkpoint(two_sizes, digits_tasks, tmp_path):
    local, donor = two_sizes
    source = donor.extract_parts([ENCODER_KV], 0)
    assert source[ENCODER_KV].shape != local.part_shapes(1)[ENCODER_KV]
    task0 = predict(local, 0, digits_tasks[0].test.inputs)
    with torch.no_grad():
        task0_params = {n: t.clone() for n, t in local.params_for(0).items()}
    shared = {n: (l.weight.detach().clone(), l.owner.clone()) for n, l in local.layers.items()}
    strategy = MergeNetTransfer(MergeNetConfig(rank=4, dim=16, heads=4, t_cycle=2))
    facts = strategy.adapt(local, 1, digits_tasks[1], source, AdaptOptions(epochs=3, train=OPTS, own_weights=False),
                           torch.Generator().manual_seed(0))
    assert facts["generations"] > 0 and facts["source_shape"] == list(source[ENCODER_KV].shape)
    assert any(w != 0 for layer in facts["mixing_weights"] for w in layer)  # the adapter learned to mix
    assert facts["generated_change"] > 0 and facts["delta_norm"] > 0
    assert local.own_copies(1) == [ENCODER_KV] and local.own_copies(0) == []
    assert torch.equal(predict(local, 0, digits_tasks[0].test.inputs), task0)
    with torch.no_grad():
        assert all(torch.equal(t, task0_params[n]) for n, t in local.params_for(0).items())
        assert torch.equal(local.params_for(1)[ENCODER_KV], local.task_params[1][ENCODER_KV])
    assert all(torch.equal(l.weight.detach(), shared[n][0]) and torch.equal(l.owner, shared[n][1])
               for n, l in local.layers.items())
    expected = predict(local, 1, digits_tasks[1].test.inputs)
    restored, _ = load_checkpoint(save_checkpoint(tmp_path, local, {}))
    assert restored.own_copies(1) == [ENCODER_KV]
    assert torch.equal(predict(restored, 1, digits_tasks[1].test.inputs), expected)
    restored.begin_task("next", 3)  # a newer task runs the shared weights again, not task 1's copy
    assert restored.own_copies(2) == []


def test_without_a_peer_mergenet_adapts_the_copy_with_no_generation(two_sizes, digits_tasks):
    local, _ = two_sizes
    facts = MergeNetTransfer().adapt(local, 1, digits_tasks[1], None, AdaptOptions(epochs=1, train=OPTS), torch.Generator())
    assert "generations" not in facts and facts["delta_norm"] > 0 and local.own_copies(1) == [ENCODER_KV]


def test_the_strategy_is_chosen_and_configured_by_name():
    strategy = make_strategy(TransferConfig(strategy="mergenet", mergenet=MergeNetConfig(t_cycle=4)))
    assert strategy.name == "mergenet" and strategy.needs == {"kv"} and strategy.cfg.t_cycle == 4
    with pytest.raises(ValueError, match="divisible"):
        MergeNetConfig(dim=30, heads=8)


def test_peers_of_another_model_size_are_candidates_for_mergenet_only(two_sizes, digits_tasks, tmp_path):
    local, donor = two_sizes
    snap = Snapshot.from_checkpoint(save_checkpoint(tmp_path / "donor", donor, {}))
    with serve_snapshots({"wide": snap}, tmp_path / "logs") as addresses:
        clients = ClientPool(lambda a, _expected: PeerClient(a, "local"))
        try:
            (plain,) = probe_candidates(TaskAtHand(local, 1), PeerAccess("rx", list(addresses.items()), clients), SELECT, "kv")
            (merge,) = probe_candidates(TaskAtHand(local, 1), PeerAccess("rx", list(addresses.items()), clients), SELECT,
                                        Want("kv", any_shape=True))
        finally:
            clients.close()
    assert plain.failure.kind == "kv_shapes" and "KV shapes" in plain.error
    assert merge.error is None and merge.payload.parts[ENCODER_KV].shape == (48, 48) and merge.probe.cos is not None
    apply_score("ddv", [merge], Receiver(local, 1, digits_tasks[1], SELECT.euc_weight))
    assert set(merge.scores.by_name) == {"ddv", "ddv_cos"}  # scores that run our task through its parts need our shapes
    facts = MergeNetTransfer(MergeNetConfig(rank=4, dim=16, heads=4)).adapt(
        local, 1, digits_tasks[1], merge.payload.parts, AdaptOptions(epochs=1, train=OPTS), torch.Generator().manual_seed(0))
    assert facts["source_shape"] == [48, 48]


def test_mergenet_can_transfer_into_the_latent_array_across_shapes(digits_tasks, tmp_path):
    local = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    for data in digits_tasks[:2]:
        learn_task(local, data, PACKNET, OPTS)
    donor = ContinualLearner(replace(tiny_config(), num_latents=12, latent_dim=48), "image", "packnet", seed=5)
    learn_task(donor, digits_tasks[2], PACKNET, OPTS)
    snap = Snapshot.from_checkpoint(save_checkpoint(tmp_path / "donor", donor, {}))
    with serve_snapshots({"big": snap}, tmp_path / "logs") as addresses:
        clients = ClientPool(lambda a, _expected: PeerClient(a, "local"))
        try:
            (cand,) = probe_candidates(TaskAtHand(local, 1), PeerAccess("rx", list(addresses.items()), clients), SELECT,
                                       Want("latents", any_shape=True))
        finally:
            clients.close()
    assert cand.error is None and cand.payload.parts["core.latents"].shape == (12, 48)
    task0 = predict(local, 0, digits_tasks[0].test.inputs)
    latents0 = local.task_params[0]["core.latents"].clone()
    strategy = MergeNetTransfer(MergeNetConfig(matrix="latents", rank=4, dim=16, heads=4))
    assert strategy.needs == {"latents"}
    facts = strategy.adapt(local, 1, digits_tasks[1], cand.payload.parts, AdaptOptions(epochs=2, train=OPTS), torch.Generator().manual_seed(0))
    assert facts["matrix"] == "core.latents" and facts["source_shape"] == [12, 48] and facts["generations"] > 0
    assert local.own_copies(1) == []  # the latents were the task's own already: no copy of a shared matrix
    assert torch.equal(predict(local, 0, digits_tasks[0].test.inputs), task0)
    assert torch.equal(local.task_params[0]["core.latents"], latents0)
