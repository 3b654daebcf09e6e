"""fastai's learning-rate finder (``Learner.lr_find``, Leslie Smith's range test), number for number.

fastai 2.8 (``fastai/callback/schedule.py``: ``LRFinder``, ``lr_find``, ``valley``, ``minimum``, ``steep``):

- iteration ``i`` (0-based) trains one batch at ``lr = start_lr * (end_lr / start_lr) ** (i / num_it)``
  (``SchedExp``); only the lr is scheduled, beta1 stays the fresh optimizer's (fastai Adam's ``mom=0.9``);
  the batches are the training loop's (shuffled epochs, ``drop_last``, augmentation, the techniques' hooks
  and loss); no validation.
- the loss recorded is the Recorder's: ``smooth = lerp(loss, smooth, 0.98)``, debiased by ``1 - 0.98**count``.
- it stops after ``num_it`` iterations (at least 6), or with ``stop_div`` as soon as the smoothed loss exceeds
  4x the best smoothed loss so far. fastai 2.8 checks from the first iteration on (it skips none).
- suggestions come from the points ``[num_it // 10 : -5]``, cut at the first NaN: ``valley`` (fastai's default
  since 2.4, the one ``lr = "find"`` uses), ``minimum`` (the lr of the lowest loss / 10) and ``steep``.
- the model and optimizer are restored afterwards (fastai saves and reloads both); here the RNG states too, so
  a cell trains after the sweep exactly as if the found lr had been given as a number.

A NaN loss stops the sweep here: every later smoothed loss is NaN too. fastai trains on to ``num_it``, so the
suggestions are taken from the curve padded with NaNs to ``num_it`` points: exactly what fastai's slice sees.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sota_ablate.data import train_loader
from sota_ablate.train.checkpoint import rng_state, set_rng_state
from sota_ablate.train.loop import SMOOTH_BETA, plan_stages, train_step
from sota_ablate.train.optim import set_hyper
from sota_ablate.train.state import Hooks, TrainState

START_LR, END_LR, NUM_IT = 1e-7, 10.0, 100  # fastai lr_find's defaults
DIVERGE_FACTOR = 4.0  # stop_div: smoothed loss > 4 x the best one
FINDER_MOM = 0.9  # beta1 during the sweep: fastai Adam's default mom (lr_find schedules only the lr)
SUGGESTIONS = ("valley", "minimum", "steep")  # the first is what lr = "find" uses
SKIP_END = 5  # the last points neither the suggestions nor fastai's plot use


class LRFinderError(RuntimeError):
    """The sweep left too few points to suggest an lr (the loss diverged at once)."""


@dataclass(frozen=True)
class Suggestion:
    """One suggestion: the lr, and the (lr, loss) point fastai marks on its plot."""

    lr: float
    point: tuple[float, float]


@dataclass(frozen=True)
class LRCurve:
    """The sweep: the lr and smoothed loss of every iteration, and why it stopped (num_it, diverged, nan)."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    stop: str
    start_lr: float = START_LR
    end_lr: float = END_LR
    num_it: int = NUM_IT

    def suggestion_points(self) -> tuple[Tensor, Tensor]:
        """fastai's ``lrs[num_it // 10 : -5]`` and ``losses[...]`` (float32), cut at the first NaN."""
        lrs, losses = list(self.lrs), list(self.losses)
        if self.stop == "nan":  # fastai's curve goes on to num_it, NaN from here
            lrs += [exp_lr(self.start_lr, self.end_lr, i / self.num_it) for i in range(len(lrs), self.num_it)]
            losses += [math.nan] * (self.num_it - len(losses))
        lr_t = torch.tensor(lrs[self.num_it // 10 : -SKIP_END], dtype=torch.float32)
        loss_t = torch.tensor(losses[self.num_it // 10 : -SKIP_END], dtype=torch.float32)
        nans = torch.nonzero(torch.isnan(loss_t))
        if len(nans):
            lr_t, loss_t = lr_t[: int(nans.min())], loss_t[: int(nans.min())]
        return lr_t, loss_t

    def suggestions(self) -> dict[str, Suggestion]:
        """valley, minimum and steep, as fastai computes them.

        Raises:
            LRFinderError: fewer than 2 points to suggest from.
        """
        lrs, losses = self.suggestion_points()
        if len(lrs) < 2:
            raise LRFinderError(
                f"the lr finder's loss {self.stop} after {len(self.losses)} of {self.num_it} iterations, before "
                f"the points its suggestions use (iterations {self.num_it // 10} to {self.num_it - SKIP_END}); "
                "give the cell a number as lr, or check the data and model"
            )
        return {"valley": valley(lrs, losses), "minimum": minimum(lrs, losses), "steep": steep(lrs, losses)}


def exp_lr(start: float, end: float, pos: float) -> float:
    """fastai's ``SchedExp``: ``start * (end / start) ** pos``."""
    return start * (end / start) ** pos


def stop_reason(loss: float, best: float, iteration: int, num_it: int, stop_div: bool = True) -> str | None:
    """Why the sweep stops after ``iteration`` (1-based) iterations, None to go on.

    Args:
        loss: this iteration's smoothed loss.
        best: the lowest smoothed loss so far, this one included.
        iteration: iterations done.
        num_it: the sweep's length.
        stop_div: stop when the loss exceeds ``DIVERGE_FACTOR`` x ``best``.
    """
    if math.isnan(loss):
        return "nan"
    if stop_div and loss > DIVERGE_FACTOR * best:
        return "diverged"
    return "num_it" if iteration >= num_it else None


def sweep(
    step: Callable[[float], Tensor],
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    num_it: int = NUM_IT,
    stop_div: bool = True,
) -> LRCurve:
    """The range test on ``step(lr)``: one training batch at ``lr``, returning its loss (a 0-d tensor)."""
    num_it = max(num_it, 6)  # fastai's minimum
    lrs: list[float] = []
    losses: list[float] = []
    smooth: Tensor | None = None
    best = math.inf
    while True:
        lr = exp_lr(start_lr, end_lr, len(lrs) / num_it)
        loss = step(lr)
        smooth = torch.lerp(loss, torch.zeros_like(loss) if smooth is None else smooth, SMOOTH_BETA)
        value = float((smooth / (1 - SMOOTH_BETA ** (len(lrs) + 1))).item())
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        reason = stop_reason(value, best, len(lrs), num_it, stop_div)
        if reason is not None:
            return LRCurve(tuple(lrs), tuple(losses), reason, start_lr, end_lr, num_it)


def find_lr(
    s: TrainState,
    techniques: Sequence[Hooks],
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    num_it: int = NUM_IT,
    stop_div: bool = True,
) -> LRCurve:
    """The range test on the cell's state: its model, optimizer, data and augmentation at its first stage's
    size and batch size, with its techniques' setup and hooks; then the model, the optimizer and every RNG are
    as they were (the techniques' slots are set anew by ``fit``'s setup)."""
    saved_model = copy.deepcopy(s.model.state_dict())
    saved_opt = copy.deepcopy(s.optimizer.state_dict())
    saved_rng = rng_state()
    for tech in techniques:
        tech.setup(s)
    stage = plan_stages(techniques, s)[0]

    def epochs() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            with contextlib.closing(train_loader(s.data.train, stage.batch_size, stage.size, s.cfg.augment)) as it:
                yield from it

    batches = epochs()

    def step(lr: float) -> Tensor:
        x, y = next(batches)
        set_hyper(s.optimizer, lr, FINDER_MOM)
        return train_step(s, techniques, x, y)

    s.model.train()
    try:
        return sweep(step, start_lr, end_lr, num_it, stop_div)
    finally:
        batches.close()
        s.optimizer.zero_grad(set_to_none=True)
        s.model.load_state_dict(saved_model)
        s.optimizer.load_state_dict(saved_opt)
        set_rng_state(saved_rng)
        s.x = s.y = None


def valley(lrs: Tensor, losses: Tensor) -> Suggestion:
    """fastai's ``valley``: the lr 1/3 + 1/6 of the way into the longest valley (the longest decreasing
    subsequence of the smoothed loss, its start fixed when its end was first found)."""
    values = losses.tolist()
    n = len(values)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return Suggestion(float(lrs[idx]), (float(lrs[idx]), float(losses[idx])))


def minimum(lrs: Tensor, losses: Tensor) -> Suggestion:
    """fastai's ``minimum``: a tenth of the lr with the lowest loss (marked at that lr)."""
    i = int(losses.argmin())
    lr_min = float(lrs[i])
    return Suggestion(lr_min / 10, (lr_min, float(losses[i])))


def steep(lrs: Tensor, losses: Tensor) -> Suggestion:
    """fastai's ``steep``: the lr where the loss falls fastest against log(lr)."""
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    i = int(grads.argmin())
    return Suggestion(float(lrs[i]), (float(lrs[i]), float(losses[i])))
