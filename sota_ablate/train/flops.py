"""Training compute, counted: FLOPs of one training step per stage shape (torch's own ``FlopCounterMode``), times
the steps. Deterministic and machine-independent: the count runs on a copy of the model on the ``meta`` device
(no memory, no kernels, no random numbers drawn, the real model untouched), forward and backward of one batch.
The optimizer's update and the validation passes are not counted (a few per cent of a step for Adam).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sota_ablate.data import steps_per_epoch
from sota_ablate.train.state import Stage


def step_flops(model: nn.Module, batch_size: int, size: int, channels_last: bool = False) -> int:
    """FLOPs of one forward + backward pass of ``model`` on a ``[batch_size, 3, size, size]`` batch."""
    return _step_flops(_Key(model), batch_size, size, channels_last)


class _Key:
    """A model as a cache key: its class, its parameter shapes and buffers (same architecture, same count)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.key = (type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and other.key == self.key


@functools.lru_cache(maxsize=64)
def _step_flops(key: _Key, batch_size: int, size: int, channels_last: bool) -> int:
    meta = copy.deepcopy(key.model).to("meta").train()
    x = torch.zeros(batch_size, 3, size, size, device="meta")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        meta(x).float().sum().backward()
    return int(counter.get_total_flops())


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
