"""The technique protocol: a frozen dataclass of hyperparameters, a few optional hooks, and everything the rest of
the project needs to know about it, declared once on the class.

Hooks, in the order the loop calls them (``train/loop.py``), every one a no-op by default:

- ``plan(stages, cfg) -> stages``: change the recipe's stages (progressive resizing).
- ``setup(s)``: replace slots of the ``TrainState`` (autocast, scaler, loss, normalisation).
- ``before_batch(s)``: rewrite the training batch ``s.x``/``s.y`` (mixup, cutmix).
- ``epoch_metrics(s) -> {key: value}``: per-epoch metrics of the technique's own, logged with the epoch.
- ``after_fit(s)``: extra evaluation after training, written to ``s.final_metrics`` (TTA).

Hooks run in ``Priority`` order, never by bare integers.

Declarations (class variables) that the grid, MLflow tags, tables, plots and the report read from the registry,
so that adding a technique is adding one file to this package:

- ``name``, ``summary``, ``source``: the registry key (also CLI token, MLflow tag ``technique.<name>``, report
  column), one line on what it does, where it comes from.
- ``order``: its place in technique lists (``techniques`` tag ``fp16,normalize,...``, tables, legends).
- ``colour``: its colour in every figure.
- ``claims``: the parts of the training step it takes over (``"batch"``: it replaces the training batch;
  ``"loss"``, ``"precision"``, ``"input_scaling"``, ``"schedule"``). Two techniques that claim the same part
  cannot share a cell: the grid refuses the cell before anything trains.
- ``trains``: False when the technique changes only evaluation (TTA): a cell with it trains exactly like the cell
  without it, so the two are compared on ``judged_by``, never on plain accuracy.
- ``judged_by``: the summary metric that measures the technique's effect when it is not the plain accuracy.
- ``final_metric_keys`` / ``epoch_metric_keys``: the summary and per-epoch metrics it logs.
- ``report``: its section of the report (``ReportSection``): title, text, place in the chapter's order, and a
  ``build`` function that adds its figures and sentences through a ``SectionContext``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

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


class SectionContext(Protocol):
    """What a technique's ``ReportSection.build`` gets: the cell its section is about and ways to add to it.

    Implemented by the report (``report/sections.py``); techniques only call it.

    Attributes:
        cell: the cell the section is about (the cell with exactly this technique, when the grid has one).
        reference: the cell it is compared with (the baseline), or None.
        dataset: the dataset folder (``train/<class>/*``) for illustrative figures, or None when not here.
        dataset_note: where ``dataset`` came from, or why there is none.
        class_names: class folder name (e.g. a WordNet id) -> readable name.
        data: the grid as read from MLflow (``report.collect.GridData``), for what the methods do not cover.
    """

    cell: str
    reference: str | None
    dataset: Path | None
    dataset_note: str
    class_names: Mapping[str, str]
    data: Any

    def values(self, column: str, cell: str | None = None) -> dict[int, float]:
        """seed -> ``column`` (e.g. ``metrics.tta_accuracy``) over the complete runs of ``cell`` (default: the
        section's cell)."""
        ...

    def param(self, key: str, default: Any = None, cell: str | None = None) -> Any:
        """A logged param of the cell's runs (e.g. ``tech.mixup.alpha``), cast from MLflow's string."""
        ...

    def figure(self, name: str, build: Callable[[], Any], alt: str, caption: str = "") -> None:
        """Add the matplotlib figure ``build()`` makes as ``name`` (a PNG next to the report)."""
        ...

    def sentence(self, text: str) -> None:
        """Add a sentence to the section's findings."""
        ...

    def illustration(self, text: str) -> None:
        """Add a paragraph (a table, an explanation) before the section's figures."""
        ...

    def note(self, text: str) -> None:
        """Add a remark (why a figure is missing, ...)."""
        ...


@dataclass(frozen=True)
class ReportSection:
    """A technique's section of the report.

    Attributes:
        title: the section's heading.
        intro: what the technique does and what the chapter says about it (the same for every grid: no claims
            about the grid's budgets or results here; those are computed by the report).
        chapter_step: its place in fastbook chapter 7's order (1 = first technique the chapter shows); None for
            techniques the chapter does not use (they follow the chapter's steps, in ``order``).
        build: adds the section's figures and sentences (``SectionContext``); None: the epoch table and the
            comparison with the reference only.
        timing: the section states the wall time against the reference (techniques that are about speed).
    """

    title: str
    intro: str
    chapter_step: int | None = None
    build: Callable[[SectionContext], None] | None = None
    timing: bool = False


class Technique:
    """Base class. Subclasses are frozen dataclasses whose fields are their hyperparameters."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    priority: ClassVar[Priority] = Priority.NORMAL
    order: ClassVar[int] = 1000
    colour: ClassVar[str] = "#17becf"
    claims: ClassVar[frozenset[str]] = frozenset()
    trains: ClassVar[bool] = True
    judged_by: ClassVar[str | None] = None
    final_metric_keys: ClassVar[tuple[str, ...]] = ()
    epoch_metric_keys: ClassVar[tuple[str, ...]] = ()
    report: ClassVar[ReportSection | None] = None

    def plan(self, stages: list[Stage], cfg: TrainConfig) -> list[Stage]:
        return stages

    def setup(self, s: TrainState) -> None:
        return None

    def before_batch(self, s: TrainState) -> None:
        return None

    def epoch_metrics(self, s: TrainState) -> dict[str, float]:
        return {}

    def after_fit(self, s: TrainState) -> None:
        return None

    def scale_epochs(self, scale: float) -> Technique:
        """A copy with this technique's epoch counts multiplied by ``scale`` (``--epochs-scale``)."""
        return self

    def validate(self) -> None:
        """Raise ``ConfigError`` for out-of-range hyperparameters."""
        return None

    def epoch_parts(self, epochs: int) -> tuple[int, ...] | None:
        """The epoch counts of the stages this technique plans from a recipe of ``epochs`` (a budget grid splits
        a budget in these proportions, ``sota_ablate/budget.py``); None: it plans no stages of its own."""
        return None

    def with_epoch_parts(self, parts: tuple[int, ...]) -> tuple[Technique, int]:
        """(a copy that plans ``parts``, ordered as ``epoch_parts`` returns them; the recipe's ``epochs``)."""
        raise NotImplementedError(f"{self.name} plans no stages of its own")

    def hyperparameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


TECHNIQUES: Registry[type[Technique]] = Registry("technique", discover="sota_ablate.techniques")
