"""The training loop: stages of fit_one_cycle, read top to bottom.

One ``Stage`` is one fastai ``fit_one_cycle``; ``progressive`` plans a small-size stage and fastai's two
``fine_tune`` stages. Per batch: one-cycle lr/beta1 set BEFORE the step from the global batch index within
the stage (fastai's ParamScheduler), augment on the device, one-hot targets, technique hooks (mixup),
autocast forward, loss in fp32, (scaled) backward, step. No per-batch host sync: the smoothed loss stays on
the device until the epoch ends. After each epoch's validation, techniques may add per-epoch metrics
(``epoch_metrics``); after the last, extra evaluation (``after_fit``: TTA).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sota_ablate.config import TrainConfig
from sota_ablate.data import steps_per_epoch, train_loader
from sota_ablate.train.evaluate import evaluate
from sota_ablate.train.optim import reset_state, set_hyper
from sota_ablate.train.record import EpochRecord, LoopObserver
from sota_ablate.train.schedule import OneCycle
from sota_ablate.train.state import Hooks, Stage, TrainState

SMOOTH_BETA = 0.98  # fastai Recorder's AvgSmoothLoss


class NonFiniteLossError(FloatingPointError):
    """The training or validation loss became NaN or inf (the model diverged)."""


def train_step(s: TrainState, techniques: Sequence[Hooks], x: Tensor, y: Tensor) -> Tensor:
    """One optimizer step on the batch ``(x, y)``, as every training batch (and the lr finder's) is taken.

    Normalize, one-hot targets, the techniques' ``before_batch`` (mixup, cutmix), autocast forward, the loss in
    fp32 (``s.loss_fn``: label smoothing), (scaled) backward, step, zero the gradients. The lr and beta1 are the
    caller's to set beforehand.

    Returns:
        The batch's loss, detached, fp32, on the device (no host sync).
    """
    s.x = s.normalize(x)
    s.y = F.one_hot(y, s.n_out).float()
    for tech in techniques:
        tech.before_batch(s)
    if s.channels_last:
        s.x = s.x.contiguous(memory_format=torch.channels_last)
    with s.autocast():
        logits = (s.forward or s.model)(s.x)  # s.forward: the compiled forward (--compile)
    loss = s.loss_fn(logits.float(), s.y)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    return loss.detach().float()


def plan_stages(techniques: Sequence[Hooks], s: TrainState) -> list[Stage]:
    """The recipe's stages: one fit_one_cycle, then whatever ``plan`` hooks make of it."""
    return recipe_stages(s.cfg, techniques)


def recipe_stages(cfg: TrainConfig, techniques: Sequence[Hooks]) -> list[Stage]:
    """``plan_stages`` from the config alone (what a cell will train, before any model exists)."""
    stages = [
        Stage(
            name="train",
            epochs=cfg.epochs,
            size=cfg.size,
            batch_size=cfg.batch_size,
            lr_max=cfg.lr,
            div=cfg.div,
            div_final=cfg.div_final,
            pct_start=cfg.pct_start,
        )
    ]
    for tech in techniques:
        stages = tech.plan(stages, cfg)
    return stages


def fit(
    s: TrainState,
    techniques: Sequence[Hooks],
    observer: LoopObserver | None = None,
    start_epoch: int = 0,
    resume: Callable[[TrainState], None] | None = None,
) -> list[EpochRecord]:
    """Train ``s.model`` through every stage; return one record per epoch.

    Args:
        s: the training state (model, optimizer, data, slots).
        techniques: technique instances, already sorted by priority.
        observer: progress display and logging.
        start_epoch: skip the epochs before this global epoch index (for resuming from a checkpoint).
        resume: called after the techniques' setup and before the first batch, to restore a checkpoint (model,
            optimizer, scaler, step, smoothed loss, RNG); use with ``start_epoch`` = the checkpoint's next epoch.
            Only the epochs from ``start_epoch`` on are returned.
    """
    observer = observer or LoopObserver()
    if s.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes within a stage: autotuned convolutions pay
    for tech in techniques:
        tech.setup(s)
    stages = plan_stages(techniques, s)
    n_train = len(s.data.train)
    total_steps = sum(st.epochs * steps_per_epoch(n_train, st.batch_size) for st in stages)
    observer.start(s, total_steps, stages)
    if resume is not None:
        resume(s)
    records: list[EpochRecord] = []
    epoch = 0
    for stage in stages:
        s.stage = stage
        # A stage that began before ``start_epoch`` was set up by the interrupted run: its optimizer state and
        # smoothed loss come from the checkpoint, not from a fresh start.
        resumed_inside = epoch < start_epoch
        if stage.reset_optimizer and not resumed_inside:
            reset_state(s.optimizer)  # fastai fine_tune: freeze()/unfreeze() clear the Adam state
        steps = steps_per_epoch(n_train, stage.batch_size)
        schedule = OneCycle(
            total_steps=stage.epochs * steps,
            lr_max=stage.lr_max,
            div=stage.div,
            div_final=stage.div_final,
            pct_start=stage.pct_start,
            moms=s.cfg.moms,
        )
        # fastai's Recorder: exponentially smoothed, debiased train loss, reset at each fit.
        smooth = torch.zeros((), device=s.device)
        count = 0
        if resumed_inside and s.smooth_loss is not None:
            smooth, count = s.smooth_loss.to(s.device), s.smooth_count
        for stage_epoch in range(stage.epochs):
            s.epoch = epoch
            if epoch < start_epoch:
                epoch += 1
                continue
            start = time.perf_counter()
            s.model.train()
            step_in_stage = stage_epoch * steps
            lr = stage.lr_max
            for x, y in train_loader(s.data.train, stage.batch_size, stage.size, s.cfg.augment):
                lr, mom = schedule(step_in_stage)
                set_hyper(s.optimizer, lr, mom)
                loss = train_step(s, techniques, x, y)
                smooth = torch.lerp(loss, smooth, SMOOTH_BETA)
                count += 1
                step_in_stage += 1
                s.step += 1
                observer.batch()
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            train_time = time.perf_counter() - start
            train_loss = smooth.item() / (1 - SMOOTH_BETA**count)
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(
                    f"the training loss is {train_loss} in epoch {epoch} ({stage.name}); lower the lr or check the data"
                )
            result = evaluate(s, stage.size, stage.batch_size)
            if not math.isfinite(result.valid_loss):
                raise NonFiniteLossError(
                    f"the validation loss is {result.valid_loss} after epoch {epoch} ({stage.name}): the model "
                    "diverged; lower the lr"
                )
            elapsed = time.perf_counter() - start
            record = EpochRecord(
                epoch=epoch,
                stage=stage.name,
                size=stage.size,
                batch_size=stage.batch_size,
                train_loss=train_loss,
                valid_loss=result.valid_loss,
                accuracy=result.accuracy,
                epoch_time_s=elapsed,
                train_time_s=train_time,
                images_per_s=steps * stage.batch_size / max(train_time, 1e-9),
                lr=lr,
                extra={k: v for tech in techniques for k, v in tech.epoch_metrics(s).items()},
            )
            s.smooth_loss, s.smooth_count = smooth, count
            records.append(record)
            observer.epoch(record, result)
            epoch += 1
    for tech in techniques:
        tech.after_fit(s)
    observer.finish()
    return records
