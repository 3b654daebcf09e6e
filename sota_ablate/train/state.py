"""The training state every technique hook receives, and the stages of a recipe.

Slots are fields with no-op defaults that a technique's ``setup`` may replace (the nanoGPT/timm null-object
pattern): the loop always calls ``s.autocast()``, ``s.scaler``, ``s.loss_fn`` and ``s.normalize`` and never asks
which techniques are on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sota_ablate.config import TrainConfig
from sota_ablate.data import ImageData
from sota_ablate.models import create_model
from sota_ablate.train.optim import create_optimizer


@dataclass(frozen=True)
class Stage:
    """One ``fit_one_cycle`` call: ``epochs`` at ``size`` with its own one-cycle schedule.

    A plain recipe is one stage; ``progressive`` turns it into a small-size stage followed by fastai's
    ``fine_tune`` (two stages that each reset the optimizer state).
    """

    name: str
    epochs: int
    size: int
    batch_size: int
    lr_max: float
    div: float = 25.0
    div_final: float = 1e5
    pct_start: float = 0.25
    reset_optimizer: bool = False


class Hooks(Protocol):
    """What the loop calls on each technique (``techniques/base.py``: every hook a no-op by default)."""

    def plan(self, stages: list[Stage], cfg: TrainConfig) -> list[Stage]: ...

    def setup(self, s: TrainState) -> None: ...

    def before_batch(self, s: TrainState) -> None: ...

    def epoch_metrics(self, s: TrainState) -> dict[str, float]: ...

    def after_fit(self, s: TrainState) -> None: ...


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against soft targets, mean over the batch, computed in fp32.

    With one-hot targets this is ``F.cross_entropy``; mixing or smoothing the targets is exactly fastai's
    loss mixing and ``LabelSmoothingCrossEntropy`` because the loss is linear in the target.
    """
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class TrainState:
    """Everything the loop and the hooks share. Hooks write only here."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: ImageData
    device: torch.device
    # Slots (replaced by techniques in ``setup``).
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    loss_fn: Callable[[Tensor, Tensor], Tensor] = soft_cross_entropy
    normalize: Callable[[Tensor], Tensor] = _identity
    dtype: str = "float32"
    channels_last: bool = False
    # The model's forward as the loop and evaluation call it: ``torch.compile(model)`` with --compile (None: the
    # model itself). The model (its weights, checkpoints) stays the plain module.
    forward: Callable[[Tensor], Tensor] | None = None
    # Per batch.
    x: Tensor | None = None
    y: Tensor | None = None
    # Progress.
    stage: Stage | None = None
    epoch: int = 0
    step: int = 0
    # fastai Recorder's smoothed train loss of the current stage and its batch count (saved in checkpoints).
    smooth_loss: Tensor | None = None
    smooth_count: int = 0
    n_out: int = 10  # model outputs (>= number of classes); the width of the one-hot targets
    # Extra metrics techniques compute after training (e.g. ``tta_accuracy``).
    final_metrics: dict[str, float] = field(default_factory=dict)
    # Per-validation-image probabilities techniques compute after training, by name (``tta``: TTA's combined ones).
    outputs: dict[str, Tensor] = field(default_factory=dict)


def uses_channels_last(device: torch.device) -> bool:
    """Whether a model trains channels_last on ``device`` (``build_state``)."""
    return device.type in ("cuda", "cpu")


def build_state(cfg: TrainConfig, data: ImageData, device: torch.device, n_out: int | None = None) -> TrainState:
    """A fresh model and fastai's Adam for ``cfg`` on ``device``, as every cell trains them.

    The model is channels_last on CUDA and on the CPU (cuDNN and oneDNN: about 10 % faster, bench/README.md).

    Args:
        cfg: the cell's hyperparameters (model, lr, wd, eps, momentum).
        data: the training and validation sets.
        device: where to train.
        n_out: outputs of the head (default: the number of classes in ``data``).
    """
    n_out = n_out or len(data.classes)
    model = create_model(cfg.model, n_out=n_out).to(device)
    channels_last = uses_channels_last(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr if isinstance(cfg.lr, float) else 0.0  # lr = "find": every batch's lr is set before its step
    optimizer = create_optimizer(model, lr, wd=cfg.wd, eps=cfg.eps, mom=cfg.moms[0], sqr_mom=cfg.sqr_mom)
    return TrainState(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        data=data,
        device=device,
        channels_last=channels_last,
        n_out=n_out,
    )
