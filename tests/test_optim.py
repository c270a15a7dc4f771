"""crossback's Adam/AdamW: torch's updates bit for bit, without importing torch._dynamo."""
import subprocess
import sys

import torch

from crossback.models.optim import Adam, AdamW


def _run(cls, steps=6):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(3))
    frozen = torch.nn.Parameter(torch.randn(4))
    opt = cls([{"params": [a, frozen], "lr": 0.01}, {"params": [b], "lr": 0.1}])
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (a.sin() * (i + 1)).sum() + (b ** 2).sum() + 0 * frozen.sum()
        loss.backward()
        opt.step()
        if i == 2:  # a round trip through the state dict changes nothing
            opt.load_state_dict(opt.state_dict())
    return [t.detach() for t in (a, b, frozen)]


def test_updates_equal_torchs_bit_for_bit():
    for ours, theirs in ((Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)):
        assert all(torch.equal(x, y) for x, y in zip(_run(ours), _run(theirs))), ours.__name__


def test_training_a_task_never_imports_torch_dynamo():
    probe = ("import sys; sys.path.insert(0, 'tests'); from conftest import tiny_config; "
             "from crossback.data.sources import load_catalog; from crossback.data.tasks import *; "
             "from crossback.models.learner import ContinualLearner; "
             "from crossback.models.methods import MethodConfig, learn_task; "
             "from crossback.models.training import TrainOptions; "
             "t = build_task(load_catalog('digits'), TaskSpec('a', classes=('0', '1')), SplitSpec(), "
             "View('image', image_size=8, channels=1), seed=0)[0]; "
             "learn_task(ContinualLearner(tiny_config(), 'image', 'cpg', seed=0), t, MethodConfig(name='cpg'), "
             "TrainOptions(epochs=1, batch_size=64)); print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["False", "False"]
