"""Device choice: the CPU path everywhere, the CUDA path where CUDA exists (skipped otherwise)."""
import pytest
import torch

from crossback.models.learner import ContinualLearner
from crossback.config.model import CPGOptions, MethodConfig
from crossback.models.methods import learn_task
from crossback.config.model import TrainOptions
from crossback.models.training import predict
from crossback.models.persistence import load_checkpoint, save_checkpoint
from crossback.config.errors import ConfigError
from crossback.node.devices import resolve_device
from crossback.config.selection import ProbeSpec
from crossback.orchestrator_free.ddv import ddv
from crossback.transfer.base import AdaptOptions
from crossback.transfer.crossback import CrossBackTransfer

from conftest import tiny_config

OPTS = TrainOptions(epochs=2, batch_size=64, lr=2e-3)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_falls_back_to_cpu_and_bad_names_are_refused():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device: 'tpu'"):
        resolve_device("tpu", "--device")
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve_device("cuda:x")


def run_on(device, digits_tasks, method=MethodConfig(name="cpg", cpg=CPGOptions(accuracy_goal=1.0, max_grow=1,
                                                                               grow_epochs=1, prune_steps=1))):
    learner = ContinualLearner(tiny_config(), "image", method.name, seed=0).to(device)
    then = []
    for i, data in enumerate(digits_tasks[:2]):
        learn_task(learner, data, method, OPTS)
        then.append(predict(learner, i, data.test.inputs))
    return learner, then


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_training_inference_and_transfer_run_on_the_device(device, digits_tasks, tmp_path):
    learner, then = run_on(device, digits_tasks)
    assert all(l.weight.device.type == device for l in learner.layers.values())
    assert all(t.device.type == device for t in learner.task_params[1].values())
    assert torch.equal(predict(learner, 0, digits_tasks[0].test.inputs), then[0])  # zero forgetting on the device
    assert any(e["event"] == "grow" for e in learner.tasks[0].events)
    vector = ddv(learner, 1, learner.extract_kv(0), ProbeSpec(pair_count=4, token_count=3))
    assert vector.device.type == "cpu" and vector.shape == (4,)
    peer = ContinualLearner(tiny_config(), "image", "packnet", seed=9)
    peer.begin_task("p", 2)
    peer.end_task()
    CrossBackTransfer("kv").adapt(learner, 1, digits_tasks[1], peer.extract_kv(0), AdaptOptions(epochs=1, train=OPTS),
                              torch.Generator().manual_seed(0))
    assert all(w.device.type == device for w in learner.borrowed[1].values())
    # a checkpoint written on the device loads anywhere (here: on the CPU)
    expected = predict(learner, 1, digits_tasks[1].test.inputs)
    restored, _ = load_checkpoint(save_checkpoint(tmp_path, learner, {}))
    assert restored.device.type == "cpu"
    got = predict(restored, 1, digits_tasks[1].test.inputs)
    if device == "cpu":
        assert torch.equal(got, expected)
    else:
        assert torch.allclose(got, expected, atol=1e-4)


def test_moving_mid_task_is_refused():
    learner = ContinualLearner(tiny_config(), "image", "packnet")
    learner.begin_task("t", 2)
    with pytest.raises(RuntimeError, match="between tasks"):
        learner.to("cpu")
