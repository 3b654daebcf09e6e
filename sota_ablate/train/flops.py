"""Training compute, counted: FLOPs of one training step per stage shape (torch's own ``FlopCounterMode``), times
the steps. Deterministic and machine-independent: the count runs on a copy of the model on the ``meta`` device
(no memory, no kernels, no random numbers drawn, the real model untouched), forward and backward of one batch.
The optimizer's update and the validation passes are not counted (a few per cent of a step for Adam).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sota_ablate.data import steps_per_epoch
from sota_ablate.train.state import Stage

# (architecture, batch size, size, channels_last) -> FLOPs: counted once per shape and process. The key holds no
# model, so a cached count keeps no model alive.
_COUNTS: dict[tuple[Any, ...], int] = {}


def step_flops(model: nn.Module, batch_size: int, size: int, channels_last: bool = False) -> int:
    """FLOPs of one forward + backward pass of ``model`` on a ``[batch_size, 3, size, size]`` batch."""
    architecture = (type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    key = (architecture, batch_size, size, channels_last)
    if key not in _COUNTS:
        meta = copy.deepcopy(model).to("meta").train()
        x = torch.zeros(batch_size, 3, size, size, device="meta")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with FlopCounterMode(display=False) as counter:
            meta(x).float().sum().backward()
        _COUNTS[key] = int(counter.get_total_flops())
    return _COUNTS[key]


def training_compute(
    model: nn.Module, stages: Sequence[Stage], n_train: int, channels_last: bool = False
) -> dict[str, int]:
    """``flops``, ``images`` and ``steps`` of training through ``stages`` on ``n_train`` images (drop_last)."""
    flops = images = steps = 0
    for st in stages:
        n = st.epochs * steps_per_epoch(n_train, st.batch_size)
        steps += n
        images += n * st.batch_size
        flops += n * step_flops(model, st.batch_size, st.size, channels_last)
    return {"flops": flops, "images": images, "steps": steps}
