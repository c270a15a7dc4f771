"""torch.optim's Adam and AdamW, update for update, minus one import.

In torch 2.x several ``Optimizer`` methods (``__init__``'s ``add_param_group``, ``zero_grad``,
``step``, the state-dict pair) sit inside wrappers whose first call imports ``torch._dynamo`` — and
with it sympy and mpmath: about 70 MiB of resident memory in every node process, for graph breaks
that only matter under ``torch.compile``, which crossback does not use. These subclasses call the very
same functions without those wrappers (``step`` under ``torch.no_grad()``, as the wrapper does for a
non-differentiable optimizer), so their updates are bit-identical to torch's (tested).
"""
from __future__ import annotations

import inspect
from typing import TypeVar

import torch

_UNWRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


O = TypeVar("O", bound=torch.optim.Optimizer)


def _without_dynamo(cls: type[O]) -> type[O]:
    step = inspect.unwrap(cls.step)

    def plain_step(self, closure=None):
        with torch.no_grad():
            return step(self, closure)

    methods = {name: inspect.unwrap(getattr(torch.optim.Optimizer, name)) for name in _UNWRAPPED}
    return type(cls.__name__, (cls,), {"step": plain_step, **methods, "__module__": __name__,
                                       "__doc__": f"{cls.__module__}.{cls.__name__} without torch._dynamo"})


Adam = _without_dynamo(torch.optim.Adam)
AdamW = _without_dynamo(torch.optim.AdamW)
