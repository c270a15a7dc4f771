"""The KV contract is pinned to perceiver-pytorch's real modules, not to our assumptions about them."""
import pytest
import torch
from perceiver_pytorch.perceiver_io import PerceiverIO
from perceiver_pytorch.perceiver_pytorch import Attention as LibraryAttention

from crossback.models.learner import ContinualLearner
from crossback.models.perceiver import ENCODER_KV, KEY, KV_NAMES, VALUE, join_kv, kv_shapes, split_kv
from crossback.models.training import predict

from conftest import tiny_config


def test_encoder_kv_names_the_library_cross_attention_projection():
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    module_path = ENCODER_KV.removesuffix(".weight")
    proj = learner.net.get_submodule(module_path)
    attention = learner.net.get_submodule(module_path.removesuffix(".to_kv"))
    assert isinstance(learner.net.core, PerceiverIO)
    assert isinstance(attention, LibraryAttention)
    assert attention is learner.net.core.cross_attend_block.cross_attn.fn
    cfg = learner.cfg
    assert tuple(proj.weight.shape) == (2 * cfg.kv_dim, cfg.token_dim)
    assert kv_shapes(cfg) == {KEY: (cfg.kv_dim, cfg.token_dim), VALUE: (cfg.kv_dim, cfg.token_dim)}
    assert ENCODER_KV in learner.layers  # exchanged weights are shared, masked weights


def test_key_rows_come_first_as_the_library_splits_them():
    """Run the library's attention and capture what it computes as k and v from the context."""
    torch.manual_seed(0)
    attn = LibraryAttention(16, 12, heads=1, dim_head=8)
    captured = {}
    attn.to_kv.register_forward_hook(lambda m, i, o: captured.update(out=o))
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 12)
    attn(x, context=ctx)
    lib_k, lib_v = captured["out"].chunk(2, dim=-1)  # the library's own split
    kv = split_kv(attn.to_kv.weight.detach())
    assert torch.allclose(ctx @ kv[KEY].T, lib_k, atol=1e-6)
    assert torch.allclose(ctx @ kv[VALUE].T, lib_v, atol=1e-6)
    assert torch.equal(join_kv(kv), attn.to_kv.weight.detach())


def test_kv_shape_depends_only_on_token_width_and_d():
    image = ContinualLearner(tiny_config(), "image", "packnet")
    text = ContinualLearner(tiny_config(), "text", "packnet")
    image.begin_task("t", 3)
    text.begin_task("t", 4)
    a, b = image.extract_kv(0), text.extract_kv(0)
    assert set(a) == set(KV_NAMES) == set(b)
    assert all(a[n].shape == b[n].shape for n in KV_NAMES)
    text.load_kv(0, a)  # an image node's KV fits a text node
    assert torch.equal(text.extract_kv(0)[KEY], a[KEY])


def test_load_kv_changes_that_task_only(digits_tasks):
    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=1)
    for data in digits_tasks[:2]:
        learner.begin_task(data.name, data.num_classes)
        learner.end_task()
    x0, x1 = digits_tasks[0].test.inputs, digits_tasks[1].test.inputs
    before0, before1 = predict(learner, 0, x0), predict(learner, 1, x1)
    original = learner.extract_kv(1)
    borrowed = {n: torch.randn_like(t) for n, t in original.items()}
    learner.load_kv(1, borrowed)
    assert not torch.equal(predict(learner, 1, x1), before1)  # the load reached the forward pass
    assert torch.equal(predict(learner, 0, x0), before0)  # and nothing else
    assert torch.equal(learner.extract_kv(1)[VALUE], borrowed[VALUE])


def test_load_kv_rejects_wrong_shape_and_non_finite():
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learner.begin_task("t", 2)
    kv = learner.extract_kv(0)
    with pytest.raises(ValueError, match="shape"):
        learner.load_kv(0, {n: t[:, :-1] for n, t in kv.items()})
    bad = dict(kv)
    bad[KEY] = kv[KEY].clone()
    bad[KEY][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        learner.load_kv(0, bad)
    with pytest.raises(KeyError, match="missing"):
        learner.load_kv(0, {KEY: kv[KEY]})
