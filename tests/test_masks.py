"""TrainingMasks: the active task's effective weights with its masks kept between steps, equal to
effective_weight in values and gradients, and recomputed whenever the owner index changes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from crossback.models.masks import MaskedLayer, TrainingMasks, binarize, effective_weight, magnitude_prune


def _layer(seed: int = 0) -> MaskedLayer:
    g = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(24, 16, generator=g))
    owner = torch.randint(0, 4, (24, 16), generator=g, dtype=torch.int16)  # free, tasks 1-2, and task 3's own
    return MaskedLayer("core.x.weight", weight, owner)


def _grads(fn, weight: torch.Tensor, scores: torch.Tensor | None, upstream: torch.Tensor):
    weight.grad = None
    if scores is not None:
        scores.grad = None
    (fn() * upstream).sum().backward()
    return weight.grad.clone(), None if scores is None else scores.grad.clone()


@pytest.mark.parametrize("with_pick", [False, True])
def test_values_and_gradients_equal_effective_weight(with_pick):
    layer, masks = _layer(), TrainingMasks()
    scores = nn.Parameter(torch.rand(24, 16, generator=torch.Generator().manual_seed(1)) * 0.02) if with_pick else None
    pick = (lambda: binarize(scores, 0.01)) if with_pick else (lambda: None)
    upstream = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))
    ref = lambda: effective_weight(layer.weight, layer.owner, 3, train=True, pick=pick())  # noqa: E731
    new = lambda: masks.weight(layer.name, layer.weight, layer.owner, 3, pick())  # noqa: E731
    assert torch.equal(ref(), new())
    for a, b in zip(_grads(ref, layer.weight, scores, upstream), _grads(new, layer.weight, scores, upstream)):
        assert (a is None and b is None) or torch.equal(a, b)
    frozen_before = masks._entries[layer.name].frozen
    new()
    assert masks._entries[layer.name].frozen is frozen_before  # kept between steps, not recomputed


def test_an_optimiser_step_moves_only_own_weights_and_the_cache_follows_the_live_ones():
    layer, masks = _layer(), TrainingMasks()
    opt = torch.optim.Adam([layer.weight], lr=0.1)
    older = (layer.owner >= 1) & (layer.owner < 3)
    before = layer.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        masks.weight(layer.name, layer.weight, layer.owner, 3).square().sum().backward()
        opt.step()
    assert torch.equal(layer.weight.detach()[older], before[older])  # older tasks' weights: exactly as they were
    assert not torch.equal(layer.weight.detach()[layer.owner == 3], before[layer.owner == 3])
    assert torch.equal(masks.weight(layer.name, layer.weight, layer.owner, 3),
                       effective_weight(layer.weight, layer.owner, 3, train=True))


def test_pruning_growing_or_another_task_recomputes_the_masks():
    layer, masks = _layer(), TrainingMasks()
    masks.weight(layer.name, layer.weight, layer.owner, 3)
    magnitude_prune(layer, 3, 20)  # writes the owner index in place: its version moves
    assert torch.equal(masks.weight(layer.name, layer.weight, layer.owner, 3),
                       effective_weight(layer.weight, layer.owner, 3, train=True))
    assert int((masks._entries[layer.name].own).sum()) == int((layer.owner == 3).sum())
    layer.weight = nn.Parameter(torch.cat([layer.weight.detach(), torch.ones(4, 16)]))  # grown (CPG)
    layer.owner = torch.cat([layer.owner, torch.full((4, 16), 3, dtype=torch.int16)])
    assert torch.equal(masks.weight(layer.name, layer.weight, layer.owner, 3),
                       effective_weight(layer.weight, layer.owner, 3, train=True))
    assert torch.equal(masks.weight(layer.name, layer.weight, layer.owner, 2),
                       effective_weight(layer.weight, layer.owner, 2, train=True))


def test_a_whole_matrix_is_not_sliced_per_step():
    layer = _layer()
    weight, owner = layer.sliced(None)
    assert weight is layer.weight and owner is layer.owner
