"""Training compute: torch's FLOP counter on one step per stage shape, times the steps; the real model untouched."""

from __future__ import annotations

import torch
from torch import nn

from sota_ablate.train.flops import step_flops, training_compute
from sota_ablate.train.state import Stage


def test_step_flops_of_a_linear_layer_and_the_stage_totals() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    # forward 2*48*5 per image; backward: the weight's gradient only (the input needs none), as much again
    assert step_flops(model, 8, 4) == 2 * (2 * 48 * 5 * 8)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # counted on a copy
    assert torch.equal(state, torch.get_rng_state())  # no random numbers drawn
    assert all(p.device.type == "cpu" and p.grad is None for p in model.parameters())
    stages = [
        Stage("a", epochs=2, size=4, batch_size=8, lr_max=1e-3),
        Stage("b", epochs=1, size=4, batch_size=4, lr_max=1e-3),
    ]
    compute = training_compute(model, stages, n_train=20)  # 2 x (20 // 8) + 1 x (20 // 4) steps
    assert compute == {
        "steps": 4 + 5,
        "images": 4 * 8 + 5 * 4,
        "flops": 4 * step_flops(model, 8, 4) + 5 * step_flops(model, 4, 4),
    }
