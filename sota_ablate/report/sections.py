"""The chapter's sections, in its order: the baseline, then every registered technique with a ``report`` section
(``ReportSection``: by ``chapter_step``, then ``order`` for techniques the chapter does not use), then all
techniques combined, then the grid's other cells, then the chapter's steps this grid has no cell for.

A section is about the cell whose techniques are exactly the section's (the cell named like it first). Each shows
that cell's epoch table in fastai's format for one representative seed (the lowest complete one), one sentence
with the measured effect against the reference and its 95% interval, the published numbers, and what the
technique's own ``ReportSection.build`` adds through a ``TechniqueContext`` (``techniques.base.SectionContext``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sota_ablate import schema
from sota_ablate.data.names import IMAGENETTE
from sota_ablate.grid import load_grid
from sota_ablate.report import keys
from sota_ablate.report.collect import GridData
from sota_ablate.report.dataset import dataset_name, is_imagenette
from sota_ablate.report.markdown import Section, details
from sota_ablate.report.prose import (
    ABSENT_TITLE,
    BASELINE_INTRO,
    BASELINE_TITLE,
    COMBINED_TITLE,
    OTHERS_INTRO,
    OTHERS_TITLE,
    absent_intro,
    budget_sentence,
    combined_intro,
    effect_sentence,
    final_sentence,
    time_sentence,
)
from sota_ablate.report.published import book_lines
from sota_ablate.report.tables import CellSummary, epoch_table_markdown, extra_epoch_keys
from sota_ablate.report.verdicts import DEFAULT_BAND
from sota_ablate.report.writer import FigureWriter
from sota_ablate.techniques import TECHNIQUES, ReportSection, ordered, technique_names


class TechniqueContext:
    """``techniques.base.SectionContext``: what a technique's ``ReportSection.build`` gets for its section.

    Besides the protocol's attributes and methods, ``used_dataset`` says whether ``build`` read a dataset folder
    (the report then names the section in its note on where the illustrative images came from).
    """

    def __init__(
        self,
        data: GridData,
        section: Section,
        writer: FigureWriter,
        reference: str | None,
        dataset: Path | None,
        dataset_note: str,
        class_names: Mapping[str, str],
    ) -> None:
        assert section.cell is not None
        self.cell: str = section.cell
        self.reference = reference
        self.dataset_note = dataset_note
        self.class_names = class_names
        self.data = data
        self.used_dataset = False
        self._dataset = dataset
        self._section = section
        self._writer = writer

    @property
    def dataset(self) -> Path | None:
        self.used_dataset = self.used_dataset or self._dataset is not None
        return self._dataset

    def values(self, column: str, cell: str | None = None) -> dict[int, float]:
        return self.data.values(cell or self.cell, column)

    def param(self, key: str, default: Any = None, cell: str | None = None) -> Any:
        return self.data.first(cell or self.cell, keys.param(key), default)

    def figure(self, name: str, build: Callable[[], Any], alt: str, caption: str = "") -> None:
        ref = self._writer.save(name, build, alt, caption)
        if ref is not None:
            self._section.figures.append(ref)

    def sentence(self, text: str) -> None:
        self._section.effect.append(text)

    def illustration(self, text: str) -> None:
        self._section.illustration.append(text)

    def note(self, text: str) -> None:
        self._section.notes.append(text)


@dataclass(frozen=True)
class Step:
    """One section of the chapter: its title and intro, the technique set of its cell (None: the full recipe),
    the cell name it prefers, and the technique's ``ReportSection`` (None for the report's own steps)."""

    title: str
    intro: str
    techniques: frozenset[str] | None
    name: str
    report: ReportSection | None = None
    timing: bool = False


def chapter_steps(dataset: str = "Imagenette") -> list[Step]:
    """The baseline (titled after ``dataset``), every registered technique's section in the chapter's order, all
    techniques combined."""
    reports = {name: cls.report for name, cls in TECHNIQUES.entries().items() if cls.report is not None}
    orders = {name: TECHNIQUES.get(name).order for name in reports}

    def place(name: str) -> tuple[bool, int, int, str]:
        step = reports[name].chapter_step
        return (step is None, step or 0, orders[name], name)

    intro = BASELINE_INTRO if dataset == IMAGENETTE else f"{BASELINE_INTRO} Here the same recipe runs on {dataset}."
    steps = [Step(BASELINE_TITLE.format(dataset=dataset), intro, frozenset(), "baseline")]
    for name in sorted(reports, key=place):
        report = reports[name]
        steps.append(Step(report.title, report.intro, frozenset({name}), name, report, report.timing))
    steps.append(Step(COMBINED_TITLE, "", None, "all", timing=True))
    return steps


def match_cell(data: GridData, step: Step, taken: set[str]) -> str | None:
    """The cell a step is about: same technique set, the cell named like the step first."""
    techniques = step.techniques if step.techniques is not None else data.full_recipe()
    candidates = [c for c in data.cells if c not in taken and data.technique_set(c) == techniques]
    if step.techniques is None and not candidates and step.name in data.cells and step.name not in taken:
        candidates = [step.name]
    if step.name in candidates:
        return step.name
    return candidates[0] if candidates else None


def representative_run(data: GridData, cell: str) -> tuple[Any, str]:
    """(row of the run whose epochs are shown, how it was chosen): the lowest complete seed, else any run."""
    rows = data.cell_rows(cell)
    if not rows.empty:
        return rows.iloc[0], "complete"
    rows = data.cell_rows(cell, state=None)
    rows = rows[rows["run_id"].notna()]
    if not rows.empty:
        return rows.iloc[0], str(rows.iloc[0]["state"])
    return None, "missing"


def epoch_section(data: GridData, cell: str, section: Section) -> None:
    """The cell's epoch table (its representative run) with its caption, or a note that it has no run."""
    row, how = representative_run(data, cell)
    if row is None:
        section.notes.append(f"`{cell}` has no run yet (missing): run the grid (again) to fill it in.")
        return
    seeds = list(data.values(cell, keys.FINAL_ACCURACY))
    hist = data.history(row["run_id"])
    stages = row.get(keys.param(schema.STAGES))
    where = f"seed {int(row['seed'])}, run `{str(row['run_id'])[:8]}`"
    if how == "complete":
        more = f" (one of {len(seeds)} seeds; the summary table averages them)" if len(seeds) > 1 else ""
        section.table_caption = f"Cell `{cell}`, {where}{more}, as fastai prints it:"
    else:
        reason = f": {row.get('failure')}" if row.get("failure") else ""
        section.table_caption = f"Cell `{cell}`, {where}, is **{how}**{reason}. The epochs it logged:"
    if hist is not None and not hist.empty:
        extra = [k for k in extra_epoch_keys(row.get(keys.param(schema.EPOCH_METRIC_KEYS))) if k in hist.columns]
        section.table = epoch_table_markdown(hist, stages, extra)
        section.collapsed = True
    else:
        section.table = "*(no epochs logged)*"


def _comparison(
    summary: CellSummary, ref: CellSummary | None, reference: str | None, timing: bool, band: float = DEFAULT_BAND
) -> list[str]:
    """The sentences comparing a cell with the reference: effect, budget and (for timing sections) time."""
    if ref is None or summary.cell == reference:
        return [final_sentence(summary.cell, summary.accuracy)]
    longer = None
    if None not in (summary.epochs, ref.epochs) and summary.epochs != ref.epochs:
        longer = bool(summary.epochs > ref.epochs)  # type: ignore[operator]
    d = summary.delta
    if d is None:
        out = [effect_sentence(summary.cell, reference or "", math.nan, math.nan, None)]
    else:
        out = [effect_sentence(summary.cell, reference or "", d.cell_mean, d.reference_mean, d.diff, d.metric, band,
                               longer, d.reason)]  # fmt: skip
    out += [s for s in (budget_sentence(summary, ref), time_sentence(summary, ref) if timing else "") if s]
    return out


@dataclass
class ChapterSections:
    """The sections, and the titles of those whose figures used the dataset's images."""

    sections: list[Section]
    used_dataset: list[str]


def build_sections(
    data: GridData,
    summaries: list[CellSummary],
    reference: str | None,
    writer: FigureWriter,
    dataset: Path | None,
    dataset_note: str,
    class_names: Mapping[str, str],
    band: float = DEFAULT_BAND,
) -> ChapterSections:
    by_cell = {s.cell: s for s in summaries}
    ref = by_cell.get(reference) if reference else None
    taken: set[str] = set()
    out = ChapterSections([], [])
    absent: list[Step] = []
    book = is_imagenette(data)
    for step in chapter_steps(dataset_name(data)):
        cell = match_cell(data, step, taken)
        if cell is None:  # e.g. a leave-one-out grid has no cell for this step of the chapter
            absent.append(step)
            continue
        taken.add(cell)
        summary = by_cell[cell]
        intro = step.intro or combined_intro(ordered(data.technique_set(cell)), summary.recipe)
        section = Section(title=step.title, intro=intro, cell=cell)
        epoch_section(data, cell, section)
        section.effect += _comparison(summary, ref, reference, step.timing, band)
        section.book = book_lines(data.technique_set(cell)) if book else ""
        if step.report is not None and step.report.build is not None:
            ctx = TechniqueContext(data, section, writer, reference, dataset, dataset_note, class_names)
            step.report.build(ctx)
            if ctx.used_dataset:
                out.used_dataset.append(_short(step.title).lower())
        out.sections.append(section)
    others = [c for c in data.cells if c not in taken]
    if others:
        out.sections.append(_other_cells(data, others, by_cell, ref, reference, band))
    if absent:
        chapter = chapter_grid_sets()
        in_chapter = [s for s in absent if s.techniques is None or s.techniques in chapter]
        intro = absent_intro([_short(s.title) for s in absent], [_short(s.title) for s in in_chapter])
        out.sections.append(Section(title=ABSENT_TITLE, intro=intro))
    return out


def _short(title: str) -> str:
    """A section title without its parenthesis (``Mixed precision (an addition: ...)`` -> ``Mixed precision``)."""
    return title.split(" (")[0]


def chapter_grid_sets() -> list[frozenset[str]]:
    """The technique sets of the cells of the built-in chapter grid (empty when it cannot be read)."""
    try:
        return [frozenset(c.techniques) for c in load_grid("chapter").cells]
    except Exception:  # the note then claims nothing about the chapter grid
        return []


def _other_cells(
    data: GridData,
    cells: list[str],
    by_cell: dict[str, CellSummary],
    ref: CellSummary | None,
    reference: str | None,
    band: float = DEFAULT_BAND,
) -> Section:
    section = Section(title=OTHERS_TITLE, intro=OTHERS_INTRO)
    for cell in cells:
        sub = Section(title=cell)
        epoch_section(data, cell, sub)
        summary = by_cell[cell]
        section.effect.append(f"### `{cell}` ({summary.label})")
        if sub.table:
            section.effect.append(details(sub.table_caption or f"`{cell}`", sub.table))
        section.effect += [f"> {n}" for n in sub.notes]
        section.effect += _comparison(summary, ref, reference, timing=False, band=band)
    return section


def technique_colours() -> dict[str, str]:
    """Every registered technique's colour (``palette.cell_colours``'s argument)."""
    return {name: TECHNIQUES.get(name).colour for name in technique_names()}
