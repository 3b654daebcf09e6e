"""fastai's one-cycle schedule (``fit_one_cycle``), after Smith's 1cycle policy (arXiv:1803.09820).

A pure rebuild of ``fastai2/callback/schedule.py`` (``SchedCos``, ``combine_scheds``, ``fit_one_cycle``), per
fastai-semantics §2: the learning rate follows a cosine from ``lr_max / div`` up to ``lr_max`` over the first
``pct_start`` of training, then a cosine down to ``lr_max / div_final``; β1 (Adam's momentum) follows the same
two-phase cosine ``moms[0] → moms[1] → moms[2]``. Training batch ``k`` of ``total`` uses ``pos = k / total``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def sched_cos(start: float, end: float, p: float) -> float:
    """fastai's ``sched_cos``: cosine annealing from ``start`` (p = 0) to ``end`` (p = 1).

    Args:
        start: value at ``p = 0``.
        end: value at ``p = 1``.
        p: position within the phase, in [0, 1].

    Returns:
        ``start + (1 + cos(π(1 − p))) · (end − start) / 2``.
    """
    return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2


def one_cycle(
    pos: float,
    lr_max: float,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> tuple[float, float]:
    """The learning rate and β1 at a training position, as fastai's ``fit_one_cycle`` schedules them.

    Phase 1 (``pos < pct_start``) uses ``p = pos / pct_start``; phase 2 uses
    ``p = (pos − pct_start) / (1 − pct_start)``; ``pos = pct_start`` is the first point of phase 2 (the peak),
    as in fastai's ``combine_scheds``. ``pos >= 1`` gives the final values (fastai's ``pos == 1`` case).

    Args:
        pos: fraction of training done, in [0, 1) (batch ``k`` of ``total`` is ``k / total``).
        lr_max: the peak learning rate.
        div: the start learning rate is ``lr_max / div``.
        div_final: the final learning rate is ``lr_max / div_final``.
        pct_start: fraction of training spent warming up.
        moms: β1 at the start, at ``pct_start`` and at the end.

    Returns:
        ``(lr, beta1)``.

    Raises:
        ValueError: ``pct_start`` is outside [0, 1] or ``pos`` is negative.
    """
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
    if pos < 0:
        raise ValueError(f"pos must be >= 0, got {pos}")
    if pos < pct_start:
        p = pos / pct_start
        return sched_cos(lr_max / div, lr_max, p), sched_cos(moms[0], moms[1], p)
    p = 1.0 if pos >= 1.0 else (pos - pct_start) / (1.0 - pct_start)
    return sched_cos(lr_max, lr_max / div_final, p), sched_cos(moms[1], moms[2], p)


@dataclass(frozen=True)
class OneCycle:
    """A one-cycle schedule over ``total_steps`` training batches: ``schedule(step) -> (lr, beta1)``.

    Args:
        total_steps: number of training batches in the whole ``fit_one_cycle`` (epochs × batches per epoch).
        lr_max: the peak learning rate.
        div: the start learning rate is ``lr_max / div``.
        div_final: the final learning rate is ``lr_max / div_final``.
        pct_start: fraction of training spent warming up.
        moms: β1 at the start, at ``pct_start`` and at the end.
    """

    total_steps: int
    lr_max: float
    div: float = 25.0
    div_final: float = 1e5
    pct_start: float = 0.25
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {self.total_steps}")
        if not 0.0 <= self.pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {self.pct_start}")

    def __call__(self, step: int) -> tuple[float, float]:
        """``(lr, beta1)`` for the 0-based training batch ``step`` (``pos = step / total_steps``).

        Args:
            step: global batch index within this fit, ``0 <= step < total_steps``.
        """
        return one_cycle(step / self.total_steps, self.lr_max, self.div, self.div_final, self.pct_start, self.moms)

    def lrs(self) -> list[float]:
        """The learning rate of every step, ``[self(k)[0] for k in range(total_steps)]``."""
        return [self(k)[0] for k in range(self.total_steps)]

    def momentums(self) -> list[float]:
        """β1 of every step, ``[self(k)[1] for k in range(total_steps)]`` (``moms`` is the field)."""
        return [self(k)[1] for k in range(self.total_steps)]
