"""``generate_report``: MLflow grid run(s) -> ``reports/<grid>/README.md`` + PNG figures, logged back to the run.

collect (``collect``) -> the summary, sections and parts around them (``tables``, ``sections``, ``overview``,
``caveats``) -> render (``markdown``) -> write the files -> log them to the grid run. The same inputs give the
same files (no timestamps), so regenerating is idempotent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sota_ablate import schema
from sota_ablate.data.names import KNOWN_CLASS_NAMES
from sota_ablate.report import effects, overview, result_plots, sweep, sweep_section, synthesis, verdicts
from sota_ablate.report.caveats import honesty_notes
from sota_ablate.report.collect import ReportError, collect_grid, latest_grid_runs
from sota_ablate.report.dataset import dataset_name, is_imagenette
from sota_ablate.report.illustrations import find_dataset
from sota_ablate.report.keys import param
from sota_ablate.report.links import run_links
from sota_ablate.report.markdown import Report, render
from sota_ablate.report.palette import cell_colours
from sota_ablate.report.precision import precision_section
from sota_ablate.report.sections import build_sections, technique_colours
from sota_ablate.report.tables import cell_summary, find_reference, summary_markdown
from sota_ablate.report.verdicts import DEFAULT_BAND
from sota_ablate.report.writer import FigureWriter


def slug(name: str) -> str:
    """A folder name for a grid name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "grid"


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write-test").touch()
        (folder / ".write-test").unlink()
    except OSError as err:
        raise ReportError(
            f"cannot write the report to {folder} ({err.strerror or err}): pass --out with a writable folder."
        ) from None


def generate_report(
    tracker: Any,
    run_id: str | None = None,
    all_seeds: bool = False,
    out_dir: str | Path = "reports",
    data_path: str | Path | None = None,
    log_to_mlflow: bool = True,
    band: float = DEFAULT_BAND,
) -> Path:
    """Write ``<out_dir>/<grid>/README.md`` and its figures from the MLflow runs of a grid.

    Args:
        tracker: a ``sota_ablate.tracking.Tracker`` (store and experiment).
        run_id: the grid (parent) run; default the newest one in the experiment.
        all_seeds: aggregate every grid run of the same grid, profile and epoch scale (seeds from several
            ``run-grid`` invocations).
        out_dir: the reports folder; the report goes to its ``<grid>/`` subfolder.
        data_path: the dataset folder for the illustrative figures (normalization, mixup); default the grid run's
            recorded ``data.path`` when that folder exists here, else those figures are skipped with a note.
        log_to_mlflow: also log the folder to the grid run as artifacts under ``report/``.
        band: the practical-equivalence band of the verdicts, in accuracy (0.01 = 1 point): an effect whose
            interval lies inside ±band is "no effect larger than ±band".

    Returns:
        The path of the README.md.

    Raises:
        ReportError: no grid run to report on, or the report folder cannot be written.
    """
    data = collect_grid(tracker, run_id=run_id, all_seeds=all_seeds)
    folder = Path(out_dir) / slug(data.grid)
    _writable(folder)
    writer = FigureWriter(folder)
    found_sweep = sweep.sweep_of(data)
    if found_sweep is not None:  # each cell against the reference arm at its own value; no cross-value pairs
        summaries, reference = sweep_section.summaries(data, found_sweep), sweep_section.reference_label(found_sweep)
    else:
        reference = find_reference(data)
        summaries = cell_summary(data, reference)
    colours = cell_colours(data, technique_colours())
    prefix = param("")
    recorded = {k[len(prefix) :]: v for k, v in data.parent.items() if str(k).startswith(prefix)}
    dataset, dataset_note = find_dataset(data_path, recorded)
    book = is_imagenette(data)  # the book's published numbers are about Imagenette
    names = dict(KNOWN_CLASS_NAMES)  # Imagenette's and Imagewoof's ids; other class folders as they are
    glance = overview.glance(data, summaries, reference, colours, writer, tracker.read_artifact_text, names)
    if found_sweep is not None:
        opening = sweep_section.section(found_sweep, sweep_section.arm_colours(found_sweep, colours), writer, band)
        body, used_dataset = [s for s in (precision_section(data),) if s is not None], []
    else:
        opening = overview.verdict_section(data, writer, band)
        chapter = build_sections(data, summaries, reference, writer, dataset, dataset_note, names, band)
        worth = overview.effects_section(data, writer, band, names)
        body = [s for s in (worth, precision_section(data)) if s is not None] + chapter.sections
        used_dataset = chapter.used_dataset
    honesty = honesty_notes(data, summaries, reference, compare_budgets=found_sweep is None)
    honesty += [f"**Figure:** {n}" for n in writer.notes]
    if used_dataset:
        honesty.append(f"**Illustrative figures** ({', '.join(used_dataset)}) use {dataset_note}.")
    report = Report(
        title=(
            f"{data.grid}: fastbook chapter 7, technique by technique"
            if found_sweep is None
            else f"{data.grid}: fastbook chapter 7's techniques against {sweep_section.sweep_title(found_sweep)}"
        )
        + ("" if book else f", on {dataset_name(data)}"),
        overview=overview.overview(data),
        summary_table=_with_links(summary_markdown(summaries, reference, published=book), data, tracker),
        summary_notes=overview.summary_notes(summaries, reference, book),
        honesty=honesty,
        glance=glance,
        sections=body,
        provenance=overview.provenance(data, all_seeds, getattr(tracker, "experiment_name", "sota_ablate")),
        opening=opening,
    )
    readme = folder / "README.md"
    readme.write_text(render(report), encoding="utf-8")
    for stale in folder.glob("*.png"):
        if stale.name not in writer.written:
            stale.unlink()
    if log_to_mlflow:
        tracker.log_artifacts(data.parent_id, folder, schema.REPORT_FOLDER)
    return readme


def _with_links(table: str, data: Any, tracker: Any) -> str:
    """The summary table and, below it, each cell run's MLflow page (``links.run_links``)."""
    uri = getattr(tracker, "uri", None)
    if not isinstance(uri, str) or not uri.lower().startswith(("http://", "https://")):
        return table
    links = run_links(data.runs, uri, tracker.find_experiment_id())
    return f"{table}\n\n{links}" if links else table


SYNTHESIS_FIGURE = "synthesis_forest.png"


def generate_synthesis(
    tracker: Any, out_dir: str | Path = "reports", band: float = DEFAULT_BAND, all_seeds: bool = False
) -> Path:
    """Write ``<out_dir>/README.md``: the verdict table across every grid in the store (the newest run of each),
    linking each grid's report (``<out_dir>/<grid>/README.md``, written by ``generate_report``), with one forest plot
    of every effect and the book's marked.

    Args:
        tracker: a ``sota_ablate.tracking.Tracker``.
        out_dir: the reports folder.
        band: the practical-equivalence band (0.01 = 1 point), as ``generate_report``'s.
        all_seeds: each grid aggregated over its grid runs, as ``generate_report(all_seeds=True)`` (the same
            numbers as the grids' own reports).

    Returns:
        The path of the README.md.

    Raises:
        ReportError: no grid run in the store, or the folder cannot be written.
    """
    runs = latest_grid_runs(tracker)
    if not runs:
        raise ReportError(
            f"no grid run in {getattr(tracker, 'uri', 'the store')}: run `python -m sota_ablate run-grid` first"
        )
    folder = Path(out_dir)
    _writable(folder)
    writer = FigureWriter(folder)
    grids, lines, points, sweeps = [], [], [], []
    for _, run_id in reversed(runs):  # oldest first: the chapter's own grid usually comes first
        data = collect_grid(tracker, run_id=run_id, all_seeds=all_seeds)
        link = f"{slug(data.grid)}/README.md"
        found_sweep = sweep.sweep_of(data)
        if found_sweep is not None:  # a sweep's arms are compared value by value: its own lines, not the table
            sweeps.append(
                f"- [`{data.grid}`]({link}) (grid run `{run_id}`): {sweep_section.synthesis_line(found_sweep)}"
            )
            continue
        found = effects.technique_effects(data)
        grids.append(synthesis.GridEffects(data.grid, link, tuple(found), is_imagenette(data)))
        mde = verdicts.mde_sentence([e.accuracy for e in found if e.equal_budget], band)
        lines.append(f"- [`{data.grid}`]({link}) (grid run `{run_id}`, seeds {', '.join(map(str, data.seeds))}): {mde}")
        points += overview.effect_points(found, prefix=f"{data.grid}: ", book=is_imagenette(data))
    out = [
        "# What each technique of fastbook chapter 7 is worth: every grid",
        "",
        f"The verdict across the {len(grids) + len(sweeps)} grid(s) in `{getattr(tracker, 'uri', '?')}` "
        f"(experiment `{getattr(tracker, 'experiment_name', '?')}`), each from its newest grid run; every number "
        "comes from the runs. Each grid's own report has its caveats, tables and figures.",
        "",
        overview.TERMS,
        "",
    ]
    if grids:
        out += [
            "## Verdict",
            "",
            synthesis.verdict_markdown(grids, band),
            "",
            *[f"- {n}" for n in synthesis.verdict_notes(band, any(g.book for g in grids))],
            "",
            "## What each grid can detect",
            "",
            *lines,
        ]
    if sweeps:
        out += ["", "## Sweeps: from which budget or setting a technique pays off", "", *sweeps]
    if points:
        ref = writer.save(
            SYNTHESIS_FIGURE,
            lambda: result_plots.plot_effects(points, "every grid: what each technique is worth", band),
            "every effect of every grid with its 95% interval, the book's effect marked",
            f"Every effect with its 95% interval (grid: technique), in the technique's colour; grey band: ±{100 * band:g} "
            "point; black cross: the book's effect; diamonds: the cells compared trained different numbers of epochs.",
        )
        if ref is not None:
            out += ["", f"![{ref.alt}]({ref.path})", "", f"*{ref.caption}*"]
    readme = folder / "README.md"
    readme.write_text("\n".join(out).strip() + "\n", encoding="utf-8")
    return readme
