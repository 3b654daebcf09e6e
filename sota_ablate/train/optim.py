"""fastai's Adam as ``torch.optim.AdamW`` (Loshchilov & Hutter, "Decoupled Weight Decay", arXiv:1711.05101).

fastai's ``Adam(params, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True)``
(``fastai2/optimizer.py``, fastai-semantics §1) steps each parameter as ``p ← p(1 − lr·wd)``, then the
dampened moments, then ``p ← p − lr/(1 − β1^t) · m / (sqrt(v/(1 − β2^t)) + eps)`` with the *current* β1.
That is exactly ``torch.optim.AdamW`` with ``betas=(mom, sqr_mom)``, which reads β1 from the param group at
every step, so setting it per batch (:func:`set_hyper`) reproduces fit_one_cycle's momentum schedule.

With fastai's ``wd_bn_bias=False``, weight decay is off for every parameter of a norm layer and every
``.bias`` (fastai's ``norm_bias_params``); here that is a second param group with ``weight_decay=0``.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)


def norm_bias_params(model: nn.Module) -> list[nn.Parameter]:
    """fastai's ``norm_bias_params``: all parameters of norm layers, and every module's ``.bias``.

    Args:
        model: the model.

    Returns:
        The parameters that get no weight decay, without duplicates, in ``model.modules()`` order.
    """
    params: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            params.update((id(p), p) for p in m.parameters(recurse=False))
        bias = getattr(m, "bias", None)
        if isinstance(bias, nn.Parameter):
            params[id(bias)] = bias
    return list(params.values())


def create_optimizer(
    model: nn.Module,
    lr: float,
    wd: float = 0.01,
    eps: float = 1e-5,
    mom: float = 0.9,
    sqr_mom: float = 0.99,
) -> torch.optim.AdamW:
    """fastai's ``Adam`` with ``wd_bn_bias=False``, as an AdamW with a decay and a no-decay param group.

    Both groups share the lr and β1; :func:`set_hyper` schedules them together. Only trainable parameters
    (``requires_grad``) are included, as fastai's ``trainable_params`` does.

    Args:
        model: the model to optimise.
        lr: the initial learning rate (fit_one_cycle overwrites it before the first batch).
        wd: decoupled weight decay for conv/linear weights (and any other non-norm, non-bias parameter).
        eps: Adam's epsilon (fastai: 1e-5, not PyTorch's 1e-8).
        mom: β1 (fit_one_cycle overwrites it with its momentum schedule).
        sqr_mom: β2.

    Returns:
        ``torch.optim.AdamW`` with groups ``decay`` (``weight_decay=wd``) and ``no_decay`` (0), in that order;
        an empty group is left out.
    """
    no_decay_ids = {id(p) for p in norm_bias_params(model)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [
        {"params": ps, "weight_decay": w, "name": name}
        for name, ps, w in (("decay", decay, wd), ("no_decay", no_decay, 0.0))
        if ps
    ]
    # On CUDA the fused kernel (one launch per step) also lets GradScaler unscale and skip an overflowing step
    # on the device; with foreach, GradScaler.step reads found_inf with .item(), a host sync every batch.
    on_cuda = bool(decay or no_decay) and all(p.is_cuda for p in decay + no_decay)
    impl = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd, **impl)


def set_hyper(optimizer: torch.optim.Optimizer, lr: float, mom: float) -> None:
    """Set the learning rate and β1 of every param group (one step of fit_one_cycle's ParamScheduler).

    Args:
        optimizer: an Adam-family optimizer (groups with ``betas``).
        lr: the learning rate.
        mom: β1; β2 is left as it is.
    """
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        group["betas"] = (mom, group["betas"][1])


def reset_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget the Adam moments and step counts (fastai's ``Optimizer.clear_state``).

    fastai's ``fine_tune`` calls it through ``freeze()`` and ``unfreeze()``. Hyperparameters (lr, betas,
    weight decay per group) are kept; the next step starts again from ``t = 1``.

    Args:
        optimizer: the optimizer whose per-parameter state is cleared.
    """
    optimizer.state.clear()
