"""What the training loop reports: one ``EpochRecord`` per epoch, to ``LoopObserver``s.

An epoch record is the row of the epoch table, the per-epoch metrics logged to MLflow (``schema.epoch_metrics``
derives their keys from the fields below: no second list to keep in step), the records a checkpoint stores and
the history the report reads back. Techniques add their own per-epoch numbers through the ``epoch_metrics`` hook;
they travel in ``extra`` and reach every one of those places without edits there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sota_ablate.train.evaluate import EvalResult
    from sota_ablate.train.state import Stage, TrainState


def _metric(key: str | None = None, table: str | None = None) -> Any:
    """A field logged as the per-epoch metric ``key`` (default: the field's name; None: not a metric), shown in the
    epoch table under ``table`` when given."""
    return field(metadata={"metric": key, "table": table})


@dataclass
class EpochRecord:
    """One row of the epoch table, logged to MLflow with ``step = epoch``."""

    epoch: int = _metric(None)
    stage: str = _metric(None)
    size: int = _metric("image_size")
    batch_size: int = _metric(None)
    train_loss: float = _metric("train_loss", table="train_loss")
    valid_loss: float = _metric("valid_loss", table="valid_loss")
    accuracy: float = _metric("accuracy", table="accuracy")
    epoch_time_s: float = _metric("epoch_time_s")
    train_time_s: float = _metric("train_time_s")
    images_per_s: float = _metric("images_per_s")
    lr: float = _metric("lr")
    # Per-epoch metrics contributed by techniques (``Technique.epoch_metrics``), by MLflow key.
    extra: dict[str, float] = field(default_factory=dict, metadata={"metric": None, "table": None})

    @property
    def valid_time_s(self) -> float:
        """The validation pass's share of the epoch."""
        return self.epoch_time_s - self.train_time_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EpochRecord:
        """The inverse of ``to_dict``; also reads the records of checkpoints written before ``extra`` existed."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class LoopObserver:
    """Receives progress; the default does nothing (console, tracking, checkpoints and executors subclass it)."""

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None: ...

    def batch(self) -> None: ...

    def epoch(self, record: EpochRecord, result: EvalResult) -> None: ...

    def finish(self) -> None: ...


class Observers(LoopObserver):
    """Several observers as one, called in the order given."""

    def __init__(self, *observers: LoopObserver) -> None:
        self.observers = observers

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        for o in self.observers:
            o.start(s, total_steps, stages)

    def batch(self) -> None:
        for o in self.observers:
            o.batch()

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        for o in self.observers:
            o.epoch(record, result)

    def finish(self) -> None:
        for o in self.observers:
            o.finish()
