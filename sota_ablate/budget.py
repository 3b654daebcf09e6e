"""Training budgets: a cell's total epochs split between its stages, and the epochs that fit in a compute budget.

The rules (documented for grid files in ``grid.py``):

- ``split_epochs(total, weights)``: ``total`` epochs in the proportions of ``weights`` (a ``progressive`` cell's
  small, frozen and fine-tune epochs), by largest remainder with ties to the earlier stage; a stage with a
  non-zero weight keeps at least one epoch.
- ``fit_compute(...)``: the largest total epoch count whose training FLOPs (``train/flops.py``, counted on a
  ``meta`` copy of the model: deterministic, no memory) are <= a target; the smallest feasible count (one epoch
  per stage) when even that exceeds it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from sota_ablate.config import TrainConfig
from sota_ablate.models import create_model
from sota_ablate.techniques.base import Technique
from sota_ablate.train.flops import training_compute
from sota_ablate.train.loop import recipe_stages

# How far above the reference's epochs the equal-compute search looks (a technique 100x cheaper per epoch).
MAX_EPOCHS_FACTOR = 100


class BudgetError(ValueError):
    """A budget that a cell's recipe cannot be split into (fewer epochs than it has stages)."""


def split_epochs(total: int, weights: Sequence[int]) -> tuple[int, ...]:
    """``total`` split in proportion to ``weights``: largest remainder, ties to the earlier part, every part with a
    positive weight at least 1 (``split_epochs(5, (5, 1, 4)) == (2, 1, 2)``).

    Raises:
        BudgetError: ``total`` is smaller than the number of positive weights.
    """
    need = sum(1 for w in weights if w > 0)
    if total < need or not need:
        raise BudgetError(f"a budget of {total} epoch(s) cannot train {need} stage(s) of at least one epoch each")
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [max(math.floor(x), 1 if w > 0 else 0) for x, w in zip(exact, weights, strict=True)]
    # minimums may overshoot: take the surplus from the parts furthest above their exact share
    while sum(parts) > total:
        i = max((i for i, p in enumerate(parts) if p > 1), key=lambda i: parts[i] - exact[i])
        parts[i] -= 1
    order = sorted(range(len(parts)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return tuple(parts)


def epoch_weights(cfg: TrainConfig, techniques: Sequence[Technique]) -> tuple[int, ...]:
    """The epoch counts of the cell's stages as its settings give them: the proportions a budget is split by."""
    for t in techniques:
        parts = t.epoch_parts(cfg.epochs)
        if parts is not None:
            return parts
    return (cfg.epochs,)


def with_budget(
    cfg: TrainConfig, techniques: Sequence[Technique], total: int, weights: Sequence[int]
) -> tuple[TrainConfig, list[Technique]]:
    """The cell trained for ``total`` epochs in all, split by ``weights`` (``epoch_weights``)."""
    parts = split_epochs(total, weights)
    out: list[Technique] = []
    epochs = parts[0] if len(parts) == 1 else cfg.epochs
    for t in techniques:
        if len(parts) > 1 and t.epoch_parts(cfg.epochs) is not None:
            t, epochs = t.with_epoch_parts(parts)
        out.append(t)
    return dataclasses.replace(cfg, epochs=epochs), out


def compute(
    cfg: TrainConfig, techniques: Sequence[Technique], n_train: int, n_out: int, channels_last: bool
) -> dict[str, int]:
    """``flops``, ``images``, ``steps`` of training the recipe on ``n_train`` images (a meta model: no memory)."""
    with torch.device("meta"):
        model = create_model(cfg.model, n_out=n_out)
    return training_compute(model, recipe_stages(cfg, techniques), n_train, channels_last)


def fit_compute(
    cfg: TrainConfig,
    techniques: Sequence[Technique],
    weights: Sequence[int],
    target: int,
    n_train: int,
    n_out: int,
    channels_last: bool,
) -> tuple[TrainConfig, list[Technique], int]:
    """(config, techniques, FLOPs) of the largest total epochs split by ``weights`` whose FLOPs are <= ``target``
    (the smallest feasible total when none is)."""
    first = sum(1 for w in weights if w > 0)
    best = None
    for total in range(first, MAX_EPOCHS_FACTOR * max(sum(weights), 1) + 1):
        c, t = with_budget(cfg, techniques, total, weights)
        flops = compute(c, t, n_train, n_out, channels_last)["flops"]
        if best is not None and flops > target:
            break
        best = (c, t, flops)
        if flops > target:  # even the smallest total is over the target: keep it
            break
    assert best is not None
    return best
