"""A finished task folded into a plain model gives the learner's outputs bit for bit, and neither
side can change the other afterwards."""
import pytest
import torch

from crossback.models.fold import fold
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig
from crossback.models.methods import learn_task
from crossback.config.model import TrainOptions

from conftest import tiny_config

OPTS = TrainOptions(epochs=1, batch_size=64)


@pytest.mark.parametrize("method", ["packnet", "piggyback", "cpg"])
def test_folded_tasks_match_the_learner_and_stay_as_they_were(method, digits_tasks):
    learner = ContinualLearner(tiny_config(), "image", method, seed=0)
    for data in digits_tasks[:2]:
        learn_task(learner, data, MethodConfig(name=method), OPTS)
    x = digits_tasks[2].test.inputs[:64]
    folded = [fold(learner, t) for t in range(2)]
    with torch.no_grad():
        before = [learner.logits(x, t) for t in range(2)]
        for t, net in enumerate(folded):
            assert torch.equal(net(x), before[t])
            assert not any(p.requires_grad for p in net.parameters()) and not net.training
    # a third task (and, for cpg, a wider feed-forward) changes neither the learner's old tasks nor the copies
    i = learner.begin_task("c", 4)
    if method == "cpg":
        learner.grow(8)
    learner.end_task()
    with torch.no_grad():
        for t, net in enumerate(folded):
            assert torch.equal(net(x), before[t]) and torch.equal(learner.logits(x, t), before[t])
        assert torch.equal(fold(learner, i)(x), learner.logits(x, i))  # a task of the grown width folds too
    with torch.no_grad():  # and changing a copy leaves the learner alone
        next(folded[0].parameters()).add_(1.0)
        assert torch.equal(learner.logits(x, 0), before[0])


def test_a_task_still_being_learned_is_not_folded():
    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    learner.begin_task("a", 3)
    with pytest.raises(RuntimeError, match="still being learned"):
        fold(learner, 0)
