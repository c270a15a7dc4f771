"""CrossBack transfer inside one learner: borrowed K/V under a new mask, nothing else changes."""
import pytest
import torch

from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.models.perceiver import ENCODER_KV
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.config.transfer import AdaptationConfig
from crossback.transfer.base import AdaptOptions
from crossback.transfer.crossback import CrossBackTransfer, InjectionError

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64, lr=2e-3, mask_lr=5e-3)


@pytest.fixture()
def two_learners(digits_tasks):
    method = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
    local, peer = ContinualLearner(tiny_config(), "image", "packnet", seed=0), ContinualLearner(tiny_config(), "image", "packnet", seed=5)
    for data in digits_tasks[:2]:
        learn_task(local, data, method, OPTS)
    learn_task(peer, digits_tasks[2], method, OPTS)
    return local, peer


def test_borrowed_kv_runs_under_a_learned_mask_and_changes_only_that_task(two_learners, digits_tasks):
    local, peer = two_learners
    task0_before = predict(local, 0, digits_tasks[0].test.inputs)
    task1_before = predict(local, 1, digits_tasks[1].test.inputs)
    shared_before = {n: l.weight.detach().clone() for n, l in local.layers.items()}
    facts = CrossBackTransfer("kv").adapt(local, 1, digits_tasks[1], peer.extract_kv(0), AdaptOptions(epochs=3, train=OPTS, own_weights=False),
                                      torch.Generator().manual_seed(0))
    assert facts["changed_tensors"] == 1 and facts["changed_fraction"] > 0.5 and 0.0 < facts["mask_kept"] <= 1.0
    assert torch.equal(predict(local, 0, digits_tasks[0].test.inputs), task0_before)
    assert not torch.equal(predict(local, 1, digits_tasks[1].test.inputs), task1_before)
    assert all(torch.equal(l.weight.detach(), shared_before[n]) for n, l in local.layers.items())
    with torch.no_grad():
        running = local.params_for(1)[ENCODER_KV]
    borrowed = local.borrowed[1][ENCODER_KV]
    assert torch.equal(running, torch.where(local.borrow_masks[1][ENCODER_KV], borrowed, torch.zeros(())))


def test_borrowed_kv_and_mask_survive_a_checkpoint(two_learners, digits_tasks, tmp_path):
    local, peer = two_learners
    CrossBackTransfer("kv").adapt(local, 1, digits_tasks[1], peer.extract_kv(0), AdaptOptions(epochs=2, train=OPTS),
                              torch.Generator().manual_seed(0))
    expected = predict(local, 1, digits_tasks[1].test.inputs)
    restored, _ = load_checkpoint(save_checkpoint(tmp_path, local, {}))
    assert torch.equal(restored.borrow_masks[1][ENCODER_KV], local.borrow_masks[1][ENCODER_KV])
    assert torch.equal(predict(restored, 1, digits_tasks[1].test.inputs), expected)


def test_injecting_the_local_kv_is_refused(two_learners, digits_tasks):
    local, _ = two_learners
    with pytest.raises(InjectionError, match="nothing was transferred"):
        CrossBackTransfer("kv").adapt(local, 1, digits_tasks[1], local.extract_kv(1), AdaptOptions(epochs=1, train=OPTS),
                                  torch.Generator().manual_seed(0))
    assert local.active is None  # the task was closed again


def test_no_payload_is_the_plain_adaptation_baseline(two_learners, digits_tasks):
    local, _ = two_learners
    facts = CrossBackTransfer("kv").adapt(local, 1, digits_tasks[1], None, AdaptOptions(epochs=1, train=OPTS),
                                      torch.Generator().manual_seed(0))
    assert facts == {} and 1 not in local.borrowed


def test_adapting_own_weights_moves_only_the_newest_tasks_weights(two_learners, digits_tasks):
    local, peer = two_learners
    task0_before = predict(local, 0, digits_tasks[0].test.inputs)
    before = {n: (l.weight.detach().clone(), l.owner.clone()) for n, l in local.layers.items()}
    base = local.task_state(1)
    CrossBackTransfer("kv").adapt(local, 1, digits_tasks[1], peer.extract_kv(0), AdaptOptions(epochs=2, train=OPTS, own_weights=True),
                              torch.Generator().manual_seed(0))
    moved = False
    for n, l in local.layers.items():
        w, owner = before[n]
        assert torch.equal(l.weight.detach()[owner != 2], w[owner != 2]), n  # nobody else's weights move
        moved |= not torch.equal(l.weight.detach()[owner == 2], w[owner == 2])
    assert moved
    assert torch.equal(predict(local, 0, digits_tasks[0].test.inputs), task0_before)
    local.set_task_state(1, base)  # arms restore the owned weights too
    assert all(torch.equal(l.weight.detach(), before[n][0]) for n, l in local.layers.items())
    with pytest.raises(RuntimeError, match="newer tasks"):
        local.begin_adaptation(0, None, own_weights=True)


def test_arms_retrain_the_tasks_own_weights_by_default():
    assert AdaptOptions().own_weights and AdaptationConfig().own_weights
    assert AdaptOptions.from_config(AdaptationConfig(epochs=3, own_weights=False), OPTS) == AdaptOptions(epochs=3, train=OPTS, own_weights=False)
