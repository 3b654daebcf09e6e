"""fastai's Adam as AdamW (fastai-semantics §1): param groups, a step-by-step reference, state reset."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sota_ablate.train.optim import create_optimizer, norm_bias_params, reset_state, set_hyper


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=True),
        nn.GroupNorm(2, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(4),
        nn.Linear(4, 5),
    )


def group_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_param_groups() -> None:
    net = small_net()
    opt = create_optimizer(net, lr=1e-3)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[3].weight), id(net[8].weight)}
    for p in (net[1].weight, net[1].bias, net[3].bias, net[4].weight, net[4].bias, net[7].weight, net[8].bias):
        assert group_of(opt, p) is no_decay
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(net.parameters()))
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.99) and g["eps"] == 1e-5 and g["lr"] == 1e-3


def test_param_groups_xresnet() -> None:
    from sota_ablate.models import create_model

    model = create_model("xresnet18", n_out=10)
    opt = create_optimizer(model, lr=3e-3)
    decay, no_decay = opt.param_groups
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(no_decay["params"]) == 2 * len(bns) + 1  # BN γ and β, plus the Linear bias
    assert group_of(opt, model.fc.bias) is no_decay
    assert group_of(opt, model.fc.weight) is decay
    assert all(p.dim() == 4 or p is model.fc.weight for p in decay["params"])
    assert len(norm_bias_params(model)) == len(no_decay["params"])


def test_frozen_params_left_out() -> None:
    net = small_net()
    net[0].weight.requires_grad_(False)
    opt = create_optimizer(net, lr=1e-3)
    assert all(p is not net[0].weight for g in opt.param_groups for p in g["params"])


class FastaiAdamReference:
    """fastai's ``Adam`` written from §1's five steps, one parameter at a time, in float64."""

    def __init__(self, params: list[torch.Tensor], do_wd: list[bool], wd: float, sqr_mom: float, eps: float):
        self.params = [p.detach().double().clone() for p in params]
        self.do_wd, self.wd, self.sqr_mom, self.eps = do_wd, wd, sqr_mom, eps
        self.reset()

    def reset(self) -> None:
        self.grad_avg = [torch.zeros_like(p) for p in self.params]
        self.sqr_avg = [torch.zeros_like(p) for p in self.params]
        self.step = [0 for _ in self.params]

    def update(self, grads: list[torch.Tensor], lr: float, mom: float) -> None:
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            g = g.double()
            if self.do_wd[i] and self.wd != 0:  # 1. decoupled weight decay
                p.mul_(1 - lr * self.wd)
            self.grad_avg[i] = mom * self.grad_avg[i] + (1 - mom) * g  # 2. dampened first moment
            self.sqr_avg[i] = self.sqr_mom * self.sqr_avg[i] + (1 - self.sqr_mom) * g * g  # 3.
            self.step[i] += 1  # 4.
            t = self.step[i]  # 5. debiased step, bias corrections with the *current* mom
            debias1 = 1 - mom**t
            debias2 = 1 - self.sqr_mom**t
            p.sub_(lr / debias1 * self.grad_avg[i] / ((self.sqr_avg[i] / debias2).sqrt() + self.eps))


def run_both(
    schedule: list[tuple[float, float]], reset_at: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.optim.Optimizer]:
    net = small_net().double()
    opt = create_optimizer(net, lr=1.0, wd=0.01)
    params = [p for g in opt.param_groups for p in g["params"]]
    do_wd = [g["weight_decay"] != 0 for g in opt.param_groups for _ in g["params"]]
    ref = FastaiAdamReference(params, do_wd, wd=0.01, sqr_mom=0.99, eps=1e-5)
    gen = torch.Generator().manual_seed(1)
    for k, (lr, mom) in enumerate(schedule):
        if k == reset_at:
            reset_state(opt)
            ref.reset()
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10 ** (k % 3 - 1) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        set_hyper(opt, lr, mom)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ref.update(grads, lr, mom)
    return [p.detach() for p in params], ref.params, opt


SCHEDULE = [(1e-3, 0.95), (2e-3, 0.92), (3e-3, 0.85), (2.5e-3, 0.88), (1e-3, 0.93), (5e-4, 0.95)]


def test_matches_fastai_adam_with_beta1_schedule() -> None:
    ours, ref, opt = run_both(SCHEDULE)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for g in opt.param_groups:
        assert g["lr"] == 5e-4 and g["betas"] == (0.95, 0.99)
    # and the update is not trivially zero: the parameters moved
    start = [p.detach().double() for g in create_optimizer(small_net(), 1.0).param_groups for p in g["params"]]
    assert max((a - s).abs().max().item() for a, s in zip(ours, start, strict=True)) > 1e-4


def test_float32_close_to_reference() -> None:
    net = small_net()
    opt = create_optimizer(net, lr=1.0)
    params = [p for g in opt.param_groups for p in g["params"]]
    do_wd = [g["weight_decay"] != 0 for g in opt.param_groups for _ in g["params"]]
    ref = FastaiAdamReference(params, do_wd, wd=0.01, sqr_mom=0.99, eps=1e-5)
    x = torch.randn(4, 3, 8, 8)
    for lr, mom in SCHEDULE:
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        grads = [p.grad.clone() for p in params]
        set_hyper(opt, lr, mom)
        opt.step()
        ref.update(grads, lr, mom)
    for a, b in zip(params, ref.params, strict=True):
        torch.testing.assert_close(a.detach().double(), b, rtol=1e-4, atol=1e-6)


def test_reset_state() -> None:
    _, _, opt = run_both(SCHEDULE[:3])
    assert len(opt.state) > 0
    assert all("exp_avg" in s and "step" in s for s in opt.state.values())
    hypers = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    reset_state(opt)
    assert len(opt.state) == 0
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == hypers


def test_reset_state_restarts_bias_correction() -> None:
    """After a reset the next step is a first Adam step again (t = 1), as in fastai's clear_state."""
    ours, ref, opt = run_both(SCHEDULE, reset_at=3)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    steps = {float(s["step"]) for s in opt.state.values()}
    assert steps == {3.0}


def test_set_hyper_keeps_beta2() -> None:
    opt = create_optimizer(small_net(), lr=1e-3, sqr_mom=0.98)
    set_hyper(opt, 0.5, 0.8)
    assert all(g["lr"] == 0.5 and g["betas"] == (0.8, 0.98) for g in opt.param_groups)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_weight_decay_only_on_decay_group(wd: float) -> None:
    net = small_net()
    opt = create_optimizer(net, lr=0.1, wd=wd)
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)  # zero grads: only weight decay moves a parameter
    opt.step()
    decay, no_decay = opt.param_groups
    for p in decay["params"]:
        torch.testing.assert_close(p.detach(), before[id(p)] * (1 - 0.1 * wd))
    for p in no_decay["params"]:
        torch.testing.assert_close(p.detach(), before[id(p)])
