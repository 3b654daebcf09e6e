"""The technique protocol: a frozen dataclass of hyperparameters with a few optional hooks.

Hooks, in the order the loop calls them:

- ``plan(stages, cfg) -> stages``: change the recipe's stages (progressive resizing).
- ``setup(s)``: replace slots of the ``TrainState`` (autocast, scaler, loss, normalisation).
- ``before_batch(s)``: rewrite the training batch ``s.x``/``s.y`` (mixup).
- ``after_fit(s)``: extra evaluation after training, written to ``s.final_metrics`` (TTA).

Hooks run in ``Priority`` order, never by bare integers.
"""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

from sota_ablate.registry import Registry

if TYPE_CHECKING:
    from sota_ablate.config import TrainConfig
    from sota_ablate.train.state import Stage, TrainState


class Priority(IntEnum):
    """Hook order: data-level changes first, then augmentation, then targets and loss, then the rest."""

    SCHEDULE = 5
    PRECISION = 10
    NORMALIZE = 20
    AUGMENT = 30
    LOSS_TARGETS = 40
    NORMAL = 50
    EVALUATION = 80


class Technique:
    """Base class. Subclasses are frozen dataclasses whose fields are their hyperparameters."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    priority: ClassVar[Priority] = Priority.NORMAL

    def plan(self, stages: list[Stage], cfg: TrainConfig) -> list[Stage]:
        return stages

    def setup(self, s: TrainState) -> None:
        return None

    def before_batch(self, s: TrainState) -> None:
        return None

    def after_fit(self, s: TrainState) -> None:
        return None

    def scale_epochs(self, scale: float) -> Technique:
        """A copy with this technique's epoch counts multiplied by ``scale`` (``--epochs-scale``)."""
        return self

    def validate(self) -> None:
        """Raise ``ConfigError`` for out-of-range hyperparameters."""
        return None

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


TECHNIQUES: Registry[type[Technique]] = Registry("technique")
