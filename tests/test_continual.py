"""PackNet, Piggyback and CPG on real data (scikit-learn digits): isolation, pruning, growth."""
import pytest
import torch

from crossback.models.learner import ContinualLearner
from crossback.config.model import CPGOptions, MethodConfig, PackNetOptions
from crossback.models.methods import learn_task
from crossback.config.model import TrainOptions
from crossback.models.training import evaluate, predict

from conftest import tiny_config

FAST = TrainOptions(epochs=4, batch_size=64, lr=2e-3, mask_lr=1e-3)


def run_sequence(method: MethodConfig, tasks, seed=0, opts=FAST):
    """Learn tasks in order; return the learner and each task's test logits right after it was learned."""
    learner = ContinualLearner(tiny_config(), "image", method.name, seed=seed, pick=method.piggyback)
    logits_then = []
    for i, data in enumerate(tasks):
        learn_task(learner, data, method, opts)
        logits_then.append(predict(learner, i, data.test.inputs))
    return learner, logits_then


CPG_GROWS = MethodConfig(name="cpg", cpg=CPGOptions(max_sparsity=0.5, prune_steps=2, step_epochs=1, tolerance=0.5,
                                                    accuracy_goal=1.0, grow_units=8, max_grow=1, grow_epochs=1))


@pytest.mark.parametrize("method", [MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1)),
                                    MethodConfig(name="piggyback"), CPG_GROWS], ids=lambda m: m.name)
def test_old_task_logits_stay_bit_identical(method, digits_tasks):
    learner, logits_then = run_sequence(method, digits_tasks)
    for j, data in enumerate(digits_tasks):
        assert torch.equal(predict(learner, j, data.test.inputs), logits_then[j]), f"task {j} changed"


def test_tasks_learn_above_chance(digits_tasks):
    opts = TrainOptions(epochs=15, batch_size=32, lr=2e-3)
    learner, _ = run_sequence(MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 2)), digits_tasks, opts=opts)
    for j, data in enumerate(digits_tasks):
        assert evaluate(learner, j, data.test) > 1.5 / data.num_classes


def test_packnet_owner_index_and_pruning(digits_tasks):
    method = MethodConfig(name="packnet", packnet=PackNetOptions(prune_ratio=0.5, retrain_epochs=1))
    learner, _ = run_sequence(method, digits_tasks[:2])
    # task 1 kept half of everything, task 2 half of what task 1 freed
    assert learner.owned_fraction(0) == pytest.approx(0.5, abs=0.01)
    assert learner.owned_fraction(1) == pytest.approx(0.25, abs=0.01)
    assert learner.free_fraction() == pytest.approx(0.25, abs=0.01)
    for layer in learner.layers.values():
        assert bool((layer.weight[layer.owner == 0] == 0).all()), "freed weights are zeroed"


def test_packnet_never_moves_an_older_tasks_weights(digits_tasks):
    method = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learn_task(learner, digits_tasks[0], method, FAST)
    frozen = {n: (l.weight.detach().clone(), l.owner == 1) for n, l in learner.layers.items()}
    learn_task(learner, digits_tasks[1], method, FAST)
    for n, (w, mine) in frozen.items():
        assert torch.equal(learner.layers[n].weight.detach()[mine], w[mine]), n


def test_piggyback_later_tasks_only_learn_masks(digits_tasks):
    method = MethodConfig(name="piggyback")
    learner = ContinualLearner(tiny_config(), "image", "piggyback")
    learn_task(learner, digits_tasks[0], method, FAST)
    weights = {n: l.weight.detach().clone() for n, l in learner.layers.items()}
    learn_task(learner, digits_tasks[1], method, FAST)
    assert all(torch.equal(learner.layers[n].weight.detach(), w) for n, w in weights.items())
    masks = learner.pick_masks[1]
    assert set(masks) == set(learner.layers) and all(m.dtype == torch.bool for m in masks.values())
    assert any(not bool(m.all()) for m in masks.values()), "the mask learned to drop some weights"
    assert learner.pick_masks[0] == {}


def test_cpg_grows_when_goal_is_missed_and_records_it(digits_tasks):
    learner, _ = run_sequence(CPG_GROWS, digits_tasks[:2])
    first = learner.tasks[0]
    grows = [e for e in first.events if e["event"] == "grow"]
    assert len(grows) == 1 and grows[0]["weights_added"] > 0
    assert any(e["event"] == "goal_missed" for e in first.events)  # goal 1.0 on purpose
    base = tiny_config().latent_dim * 4
    assert all(w == base + 8 for w in first.ff_widths.values())
    assert all(w == base + 16 for w in learner.tasks[1].ff_widths.values())
    for group, (w_in, w_out) in learner.ff_groups.items():
        assert learner.layers[w_in].weight.shape[0] == 2 * (base + 16)
        assert learner.layers[w_out].weight.shape[1] == base + 16


def test_cpg_does_not_grow_when_goal_is_met(digits_tasks):
    method = MethodConfig(name="cpg", cpg=CPGOptions(accuracy_goal=0.05, prune_steps=1, step_epochs=1, tolerance=0.5))
    learner, _ = run_sequence(method, digits_tasks[:1])
    assert not any(e["event"] == "grow" for e in learner.tasks[0].events)
    compact = next(e for e in learner.tasks[0].events if e["event"] == "compact")
    assert compact["sparsity"] == pytest.approx(0.75)  # a single cubic step goes straight to max_sparsity
    assert compact["floor"] == 0.05  # the goal was met, so compaction keeps meeting it


def test_cpg_compaction_frees_weights_for_later_tasks(digits_tasks):
    method = MethodConfig(name="cpg", cpg=CPGOptions(max_sparsity=0.6, prune_steps=2, step_epochs=1, tolerance=1.0))
    learner, _ = run_sequence(method, digits_tasks[:2])
    compact = next(e for e in learner.tasks[0].events if e["event"] == "compact")
    assert compact["sparsity"] == pytest.approx(0.6)  # tolerance 1.0 accepts every step
    assert learner.owned_fraction(0) == pytest.approx(0.4, abs=0.01)
    assert learner.owned_fraction(1) > 0  # task 2 trained weights task 1 gave back
    assert learner.pick_masks[1] and not learner.pick_masks[0]


def test_same_seed_same_numbers(digits_tasks):
    method = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
    _, a = run_sequence(method, digits_tasks[:2], seed=3)
    _, b = run_sequence(method, digits_tasks[:2], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_parameter_is_either_masked_and_shared_or_kept_per_task():
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learner.begin_task("t", 3)
    names = {n for n, _ in learner.net.named_parameters()}
    per_task, shared = set(learner.task_params[0]), set(learner.layers)
    assert per_task | shared == names and not per_task & shared
    assert {"core.latents", "query", "head.weight", "head.bias"} <= per_task
    assert any(n.startswith("adapter.") for n in per_task) and any(n.endswith("norm.weight") for n in per_task)
    assert all(learner.layers[n].weight.ndim == 2 for n in shared)


def test_construction_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ContinualLearner(tiny_config(), "image", "cpg", seed=9)
    assert torch.equal(torch.rand(3), expected)
