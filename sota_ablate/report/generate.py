"""``generate_report``: MLflow grid run(s) -> ``reports/<grid>/README.md`` + PNG figures, logged back to the run.

The report follows fastbook chapter 7's order (baseline, normalization, progressive resizing, test-time
augmentation, mixup, label smoothing, then mixed precision, an addition, and everything combined). Each
section shows its cell's epoch table in fastai's format for one representative seed (the lowest complete one),
one sentence with the measured effect and its 95% confidence interval, and the chapter's figure for it. The
same inputs give the same files (no timestamps), so regenerating is idempotent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sota_ablate.report import effects, figures, plots, stats
from sota_ablate.report.collect import GridData, ReportError, collect_grid
from sota_ablate.report.markdown import (
    FigureRef,
    Report,
    Section,
    budget_sentence,
    effect_sentence,
    honesty_notes,
    render,
    time_sentence,
    tta_sentence,
)
from sota_ablate.report.tables import (
    ALL_TECHNIQUES,
    BOOK,
    PUBLISHED_RECIPE_TEXT,
    PUBLISHED_RECIPES,
    SOURCE_LABEL,
    CellSummary,
    best_cell,
    cell_summary,
    epoch_table_markdown,
    find_baseline,
    find_reference,
    format_accuracy,
    pipe_table,
    published_epoch_markdown,
    published_epochs,
    published_final,
    summary_markdown,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    techniques: frozenset[str]
    intro: str


SECTIONS = (
    SectionSpec(
        "baseline",
        "Imagenette baseline",
        frozenset(),
        "The chapter trains an xresnet from scratch on Imagenette with `fit_one_cycle(5, 3e-3)` and no input "
        "normalisation. Every other cell is compared with this one.",
    ),
    SectionSpec(
        "normalize",
        "Normalization",
        frozenset({"normalize"}),
        "Normalising each channel to mean 0 and std 1 (with the ImageNet statistics) matters most for pretrained "
        "models; trained from scratch, the book saw no gain (0.8252 without, 0.8245 with).",
    ),
    SectionSpec(
        "progressive",
        "Progressive resizing",
        frozenset({"progressive"}),
        "Train at a small size first (fast epochs), then `fine_tune` at the full size: the size switch is also a "
        "form of augmentation. The book reached 0.8633 this way, its best number without TTA.",
    ),
    SectionSpec(
        "tta",
        "Test time augmentation",
        frozenset({"tta"}),
        "Average the predictions over augmented copies of each validation image (fastai `learn.tta()`: 4 "
        "augmented passes, 0.75/0.25 with the centre crop): no retraining, only extra inference time. The book "
        "applied it to the progressive-resizing model; here every cell with `tta` logs its plain and TTA "
        "accuracy from the same model.",
    ),
    SectionSpec(
        "mixup",
        "Mixup",
        frozenset({"mixup"}),
        "Blend each training image with another one, and their one-hot labels with the same weights "
        "(λ ~ Beta(0.4, 0.4), max(λ, 1 - λ)). The book warns it needs many more epochs to pay off and did not "
        "run it; the grid gives it a longer schedule.",
    ),
    SectionSpec(
        "label_smoothing",
        "Label smoothing",
        frozenset({"label_smoothing"}),
        "Train against targets of 1 - ε + ε/N for the true class and ε/N elsewhere (0.91 and 0.01 for "
        "ε = 0.1 and 10 classes) instead of 1 and 0: less over-confident, more robust to mislabelled images. "
        "Like mixup it needs longer training; the book did not run it.",
    ),
    SectionSpec(
        "fp16",
        "Mixed precision (an addition: chapter 7 never calls `to_fp16`)",
        frozenset({"fp16"}),
        "Half-precision autocast with loss scaling speeds up training on GPUs with tensor cores; the book uses "
        "it in chapter 5. Here it measures the speed and any accuracy cost on the baseline recipe.",
    ),
    SectionSpec(
        "all",
        "All techniques combined",
        ALL_TECHNIQUES,
        "Everything at once, the chapter's closing recipe: mixed precision, normalisation, progressive resizing, "
        "mixup and label smoothing for a long schedule, then TTA.",
    ),
)

GLANCE_FILES = {
    "accuracy": "accuracy_by_epoch.png",
    "losses": "loss_curves.png",
    "final": "final_accuracy.png",
    "time": "accuracy_vs_wall_time.png",
    "confusion": "confusion_matrix_best.png",
    "effects": "technique_effects.png",
}


def slug(name: str) -> str:
    """A folder name for a grid name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "grid"


def match_section(data: GridData, spec: SectionSpec, taken: set[str]) -> str | None:
    """The cell a section is about: same technique set, the cell named like the section first."""
    candidates = [c for c in data.cells if c not in taken and data.technique_set(c) == spec.techniques]
    if spec.key == "all" and not candidates and "all" in data.cells and "all" not in taken:
        candidates = ["all"]
    if spec.key in candidates:
        return spec.key
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


class _Writer:
    """Saves figures into the report folder, remembering what it wrote; a failing figure becomes a note."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: set[str] = set()
        self.notes: list[str] = []

    def save(self, name: str, build: Callable[[], Any], alt: str, caption: str = "") -> FigureRef | None:
        try:
            fig = build()
        except Exception as err:  # one broken figure must not cost the whole report
            log.warning("figure %s not made: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))
            self.notes.append(f"figure `{name}` could not be made: {type(err).__name__}: {err}")
            return None
        plots.save(fig, self.folder / name)
        self.written.add(name)
        return FigureRef(name, alt, caption)


def _epoch_section(data: GridData, cell: str, section: Section) -> None:
    row, how = representative_run(data, cell)
    if row is None:
        section.notes.append(f"`{cell}` has no run yet (missing): run the grid (again) to fill it in.")
        return
    seeds = list(data.values(cell, "metrics.final_accuracy"))
    hist = data.history(row["run_id"])
    stages = row.get("params.stages")
    where = f"seed {int(row['seed'])}, run `{str(row['run_id'])[:8]}`"
    if how == "complete":
        more = f" (one of {len(seeds)} seeds; the summary table averages them)" if len(seeds) > 1 else ""
        section.table_caption = f"Cell `{cell}`, {where}{more}, as fastai prints it:"
    else:
        reason = f": {row.get('failure')}" if row.get("failure") else ""
        section.table_caption = f"Cell `{cell}`, {where}, is **{how}**{reason}. The epochs it logged:"
    if hist is not None and not hist.empty:
        section.table = epoch_table_markdown(hist, stages)
    else:
        section.table = "*(no epochs logged)*"


def _book_lines(techniques: frozenset[str], key: str) -> str:
    items = []
    for source, recipe in PUBLISHED_RECIPES.get(techniques, ()):
        acc = published_final(source, recipe)
        if acc is None:
            continue
        rows = published_epochs(source, recipe)
        epochs = int(rows["epoch"].notna().sum())
        what = f"after {epochs} epochs" if epochs else "(end of training)"
        what = PUBLISHED_RECIPE_TEXT.get(recipe, what)
        items.append(f"{SOURCE_LABEL.get(source, source)} `{recipe}`: {acc:.4f} {what}")
    if not items:
        return ""
    text = "Published: " + "; ".join(items) + "."
    if key == "tta":
        text += " Both applied TTA to the progressive-resizing model, not to the baseline recipe."
    printed = {
        "baseline": ("baseline",),
        "normalize": ("normalize",),
        "progressive": ("progressive_128", "progressive_224_frozen", "progressive_224"),
    }
    if key in printed:
        text += " The book printed (on a GPU; xresnet50, full-size Imagenette):\n\n" + published_epoch_markdown(
            BOOK, *printed[key]
        )
    return text


def _normalization_extras(section: Section, writer: _Writer, folder: Path | None, data: GridData, cell: str | None):
    if folder is None:
        return
    ref = cell or find_baseline(data) or (data.cells[0] if data.cells else None)
    size = int(data.first(ref, "params.train.size", 224) or 224) if ref else 224
    batch = int(data.first(ref, "params.train.batch_size", 64) or 64) if ref else 64
    presize = int(data.parent_param("data.presize", 460) or 460)
    try:
        s = figures.batch_stats(figures.real_batch(folder, batch_size=batch, size=size, presize=presize))
    except Exception as err:
        section.notes.append(f"batch statistics not computed: {type(err).__name__}: {err}")
        return
    book_b, book_a = figures.BOOK_STATS["before"], figures.BOOK_STATS["after"]
    section.illustration.append(
        f"Per-channel statistics of one real training batch ({s.n_images} images at {s.size} px, the training "
        "augmentation), before and after `normalize` with the ImageNet mean and std:\n\n"
        + pipe_table(
            ["", "mean (R, G, B)", "std (R, G, B)", "book: mean", "book: std"],
            [
                ["before", _fmt4(s.mean_before), _fmt4(s.std_before), _fmt4(book_b[0]), _fmt4(book_b[1])],
                ["after", _fmt4(s.mean_after), _fmt4(s.std_after), _fmt4(book_a[0]), _fmt4(book_a[1])],
            ],
        )
    )
    ref_fig = writer.save(
        "normalization_batch_stats.png",
        lambda: figures.normalization_figure(s),
        "per-channel batch mean and std before and after normalization",
        "One real batch: per-channel mean and std before (grey) and after (blue) normalisation; black ticks: "
        "the book's printed values.",
    )
    if ref_fig:
        section.figures.append(ref_fig)


def _fmt4(values: Any) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _class_names() -> dict[str, str]:
    """Imagenette's wnid -> readable name."""
    from sota_ablate.runner import IMAGENETTE_NAMES

    return dict(IMAGENETTE_NAMES)


def _tta_effects(data: GridData, section: Section, writer: _Writer) -> None:
    cells = [c for c in data.cells if "tta" in data.technique_set(c) and data.values(c, "metrics.tta_accuracy")]
    for cell in cells:
        valid_times = []
        for run_id in data.cell_rows(cell)["run_id"]:
            hist = data.history(run_id)
            if hist is not None and {"epoch_time_s", "train_time_s"} <= set(hist.columns) and len(hist):
                valid_times.append(float(hist.iloc[-1]["epoch_time_s"] - hist.iloc[-1]["train_time_s"]))
        section.effect.append(
            tta_sentence(
                cell,
                data.values(cell, "metrics.final_accuracy"),
                data.values(cell, "metrics.tta_accuracy"),
                stats.mean(list(data.values(cell, "metrics.tta_time_s").values())),
                stats.mean(valid_times),
            )
        )
    if cells:
        fig = writer.save(
            "tta_accuracy_and_time.png",
            lambda: plots.plot_tta(data, cells),
            "plain vs TTA accuracy and inference time",
            "Left: plain vs TTA accuracy of the same models. Right: one plain validation pass vs all TTA passes.",
        )
        if fig:
            section.figures.append(fig)
    else:
        section.notes.append("No cell logged a TTA accuracy yet.")


def build_sections(
    data: GridData,
    summaries: list[CellSummary],
    baseline: str | None,
    writer: _Writer,
    dataset: Path | None,
    dataset_note: str,
) -> list[Section]:
    by_cell = {s.cell: s for s in summaries}
    ref = by_cell.get(baseline) if baseline else None
    taken: set[str] = set()
    sections = []
    absent: list[SectionSpec] = []
    names = _class_names()
    for spec in SECTIONS:
        cell = match_section(data, spec, taken)
        if cell:
            taken.add(cell)
        if cell is None:  # e.g. a leave-one-out grid has no cell for this step of the chapter
            absent.append(spec)
            continue
        section = Section(title=spec.title, intro=spec.intro, cell=cell)
        _epoch_section(data, cell, section)
        summary = by_cell[cell]
        if cell == baseline or ref is None:
            section.effect.append(_final_sentence(cell, summary))
        else:
            section.effect.append(
                effect_sentence(cell, baseline or "", summary.accuracy.mean, ref.accuracy.mean, summary.difference)
            )
            budget = budget_sentence(summary, ref)
            if budget:
                section.effect.append(budget)
            if spec.key in ("progressive", "fp16", "all"):
                timing = time_sentence(summary, ref)
                if timing:
                    section.effect.append(timing)
        book = _book_lines(spec.techniques, spec.key)
        if book:
            section.book = book
        if spec.key == "normalize":
            if dataset is None:
                section.notes.append(f"Batch statistics figure skipped: {dataset_note}.")
            _normalization_extras(section, writer, dataset, data, cell)
        elif spec.key == "progressive" and cell and data.cell_rows(cell).shape[0]:
            fig = writer.save(
                "progressive_resizing.png",
                lambda cell=cell: plots.plot_progressive(data, cell, baseline),
                "accuracy by epoch across the size switch",
                "Validation accuracy by epoch; the dashed line marks the switch to the full size.",
            )
            if fig:
                section.figures.append(fig)
        elif spec.key == "tta":
            _tta_effects(data, section, writer)
        elif spec.key == "mixup":
            _mixup_figure(section, writer, dataset, dataset_note, names)
        elif spec.key == "label_smoothing":
            eps = data.first(cell, "params.tech.label_smoothing.eps", 0.1) if cell else 0.1
            imagenette = sorted(names)  # always the book's 10 classes: 0.01 ... 0.91 at eps 0.1
            labels = [names[c] for c in imagenette]
            index = imagenette.index(figures.CHURCH)
            fig = writer.save(
                "label_smoothing_target.png",
                lambda eps=eps, labels=labels, index=index: figures.label_smoothing_figure(float(eps), labels, index),
                "one-hot vs smoothed target vector",
                f"The target for one image: one-hot vs smoothed with ε = {float(eps):g} over {len(labels)} classes.",
            )
            if fig:
                section.figures.append(fig)
        sections.append(section)
    others = [c for c in data.cells if c not in taken]
    if others:
        section = Section(
            title="Other cells",
            intro="Cells of this grid that are not one of the chapter's steps.",
        )
        for cell in others:
            sub = Section(title=cell)
            _epoch_section(data, cell, sub)
            summary = by_cell[cell]
            section.effect.append(f"### `{cell}` ({summary.label})")
            if sub.table_caption:
                section.effect.append(sub.table_caption)
            if sub.table:
                section.effect.append(sub.table)
            section.effect += [f"> {n}" for n in sub.notes]
            if ref is not None and cell != baseline:
                section.effect.append(
                    effect_sentence(cell, baseline or "", summary.accuracy.mean, ref.accuracy.mean, summary.difference)
                )
                budget = budget_sentence(summary, ref)
                if budget:
                    section.effect.append(budget)
            else:
                section.effect.append(_final_sentence(cell, summary))
        sections.append(section)
    if absent:
        listed = ", ".join(spec.title.split(" (")[0] for spec in absent)
        sections.append(
            Section(
                title="Chapter steps not in this grid",
                intro=f"This grid has no cell with exactly the techniques of these steps of the chapter: {listed}. "
                "`ablations/chapter.toml` has them all.",
            )
        )
    return sections


def _final_sentence(cell: str, summary: CellSummary) -> str:
    if summary.accuracy.n == 0:
        return f"`{cell}` has no finished run yet."
    return f"Final accuracy of `{cell}`: {format_accuracy(summary.accuracy)}."


def _mixup_figure(section: Section, writer: _Writer, dataset: Path | None, note: str, names: dict[str, str]) -> None:
    if dataset is None:
        section.notes.append(f"Mixup figure skipped: {note}.")
        return
    example, why = figures.mixup_example(dataset)
    if example is None:
        section.notes.append(f"Mixup figure skipped: {why}.")
        return
    first, second = (
        names.get(example.first_class, example.first_class),
        names.get(example.second_class, example.second_class),
    )
    target = ", ".join(f"{v:g}" for v in example.target)
    fig = writer.save(
        "mixup_example.png",
        lambda: figures.mixup_figure(example, names),
        f"mixup of {first} and {second}",
        f"{example.weight_first:g} × {first} + {1 - example.weight_first:g} × {second} "
        f"(`{example.first.name}`, `{example.second.name}`), and the mixed target [{target}].",
    )
    if fig:
        section.figures.append(fig)
    if why:
        section.notes.append(why)


def _glance(data: GridData, summaries: list[CellSummary], baseline: str | None, writer: _Writer, tracker: Any):
    refs = []
    has_runs = any(not h.empty for h in data.histories.values())
    if has_runs:
        refs.append(
            writer.save(
                GLANCE_FILES["accuracy"],
                lambda: plots.plot_accuracy_by_epoch(data),
                "validation accuracy by epoch, every cell",
                "Validation accuracy by epoch for every cell (mean over seeds; faint lines: single seeds). Cells "
                "that train identically (e.g. `tta` and `baseline`: TTA only changes inference) overlap.",
            )
        )
        refs.append(
            writer.save(
                GLANCE_FILES["losses"],
                lambda: plots.plot_losses(data),
                "training and validation loss by epoch",
                "Training (smoothed, as fastai) and validation loss by epoch.",
            )
        )
    if any(s.accuracy.n for s in summaries):
        refs.append(
            writer.save(
                GLANCE_FILES["final"],
                lambda: plots.plot_final_accuracy(data, summaries, baseline),
                "final accuracy per cell",
                "Final accuracy per cell: mean ± std over seeds (dots: seeds); dashed: the baseline.",
            )
        )
        refs.append(
            writer.save(
                GLANCE_FILES["time"],
                lambda: plots.plot_accuracy_vs_time(data, summaries),
                "accuracy vs wall time",
                "Final accuracy against wall time per run: up and to the left is better.",
            )
        )
    best = best_cell(summaries)
    if best:
        row, _ = representative_run(data, best)
        text = tracker.read_artifact_text(str(row["run_id"]), "confusion_matrix.json") if row is not None else None
        if text:
            import json

            cm = json.loads(text)
            names = _class_names()
            labels = [names.get(c, c) for c in cm.get("classes", [])]
            refs.append(
                writer.save(
                    GLANCE_FILES["confusion"],
                    lambda: plots.plot_confusion_matrix(
                        cm["matrix"], labels, f"best cell {best}, seed {int(row['seed'])}: confusion matrix"
                    ),
                    f"confusion matrix of {best}",
                    f"Confusion matrix of the best cell, `{best}` (seed {int(row['seed'])}); rows: actual class.",
                )
            )
    return [r for r in refs if r is not None]


def _effects_section(data: GridData, writer: _Writer) -> Section | None:
    """ "What each technique is worth": the effect of switching each technique on, over matched pairs of cells."""
    found = effects.technique_effects(data)
    if not found:
        return None
    section = Section(
        title="What each technique is worth",
        intro=(
            "Each technique against the same recipe without it, from the pairs of cells that differ by that "
            "technique only. " + _effect_intro(found)
        ).strip(),
        table=effects.effects_markdown(found),
    )
    section.effect += [f"- {note}" for note in effects.effect_notes(found)]
    pairs = effects.pair_lines(found)
    if pairs:
        section.effect.append("Pairs compared: " + " ".join(pairs))
    fig = writer.save(
        GLANCE_FILES["effects"],
        lambda: plots.plot_effects(found, data.grid),
        "accuracy effect of each technique with its 95% interval",
        "Accuracy effect of switching each technique on, with its 95% interval over seeds (diamonds: the pairs "
        "train a different number of epochs).",
    )
    if fig is not None:
        section.figures.append(fig)
    return section


def _effect_intro(found: list[effects.TechniqueEffect]) -> str:
    kinds = {e.kind for e in found}
    return {
        frozenset(
            {effects.ALONE}
        ): "Here every technique is measured alone, on top of the baseline (the chapter's view).",
        frozenset({effects.FULL_RECIPE}): "Here every technique is measured inside the full recipe: everything "
        "against everything but it.",
        frozenset({effects.MAIN_EFFECT}): "Here every effect is a main effect: the mean over every combination of "
        "the other techniques.",
    }.get(frozenset(kinds), "")


def _overview(data: GridData, summaries: list[CellSummary]) -> list[str]:
    p = data.parent_param
    parents = list(data.parents["run_id"])
    runs = data.runs
    complete = int((runs["state"] == "complete").sum())
    status = "complete" if complete == len(runs) else f"**partial**: {complete} of {len(runs)} cell runs complete"
    if (data.parents["state"] == "running").any():
        status += " (the grid run is still running: regenerate when it ends)"
    seeds = ", ".join(str(s) for s in data.seeds)
    lines = [
        f"What each technique of fastbook chapter 7 is worth, measured: grid `{data.grid}` "
        f"(`{p('grid_file', '?')}`{': ' + data.description if data.description else ''}), "
        f"profile `{p('profile', '?')}` ({p('profile.description', '')}).",
        "",
        f"- Seeds: {seeds}; cells: {len(data.cells)}; status: {status}.",
        f"- Data: {p('data.n_train', '?')} training / {p('data.n_valid', '?')} validation images, "
        f"{p('data.n_classes', '?')} classes, source `{p('data.source', '?')}`"
        + (f" ({p('data.variant')})" if p("data.source") == "imagenette" else "")
        + f", split `{p('data.split', '?')}`, pre-size {p('data.presize', '?')} px.",
        f"- Device: `{p('device', '?')}`; epoch scale {p('epochs_scale', 1)}; code `{data.parent.get('tags.git_commit', '?')}`.",
        f"- MLflow grid run{'s' if len(parents) > 1 else ''}: {', '.join(f'`{r}`' for r in parents)}.",
    ]
    return lines


def _provenance(data: GridData, all_seeds: bool, experiment: str) -> list[str]:
    command = f"python -m sota_ablate report --experiment {experiment} --run-id {data.parent_id}"
    command += " --all-seeds" if all_seeds else ""
    lines = [
        "Generated from the MLflow runs alone (`mlflow.search_runs` and metric histories); regenerate with",
        "",
        f"```\n{command}\n```",
        "",
        "The report is also logged to the grid run as artifacts under `report/`.",
        "",
    ]
    rows = []
    for _, r in data.runs.iterrows():
        run_id = r.get("run_id")
        rows.append(
            [
                f"`{r['cell']}`",
                str(r["seed"]),
                r["state"],
                f"`{run_id}`" if isinstance(run_id, str) else "-",
                str(r.get("failure") or "")[:120] if isinstance(r.get("failure"), str) else "",
            ]
        )
    lines.append(pipe_table(["cell", "seed", "state", "run id", "failure"], rows))
    return lines


def _summary_notes(data: GridData, summaries: list[CellSummary], baseline: str | None) -> list[str]:
    notes = [
        "accuracy: final validation accuracy (last epoch), mean ± sample std over the complete seeds, n seeds.",
        f"Δ vs {f'`{baseline}`' if baseline else 'baseline'}: difference in accuracy points with its 95% "
        "confidence interval (Student t; paired by "
        "seed when both cells ran the same seeds, else Welch); `no CI` with a single seed. Accuracy, Δ and the "
        "best cell use the plain (centre-crop) accuracy; TTA is its own column.",
        "epoch time, wall time, images/s: means over seeds (wall time: the whole run, TTA included).",
        "published: the chapter's printed number (book) and its fp16 replication (repl.), for the matching "
        "recipe; see `sota_ablate/resources/README.md`. The book's TTA number is on the progressive model.",
    ]
    best = best_cell(summaries)
    if best:
        notes.insert(0, f"Best cell (bold): `{best}`.")
    if baseline is None:
        notes.append("No reference cell: Δ is not computed.")
    return notes


def generate_report(
    tracker: Any,
    run_id: str | None = None,
    all_seeds: bool = False,
    out_dir: str | Path = "reports",
    data_path: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Write ``<out_dir>/<grid>/README.md`` and its figures from the MLflow runs of a grid.

    Args:
        tracker: a ``sota_ablate.tracking.Tracker`` (store and experiment).
        run_id: the grid (parent) run; default the newest one in the experiment.
        all_seeds: aggregate every grid run of the same grid, profile and epoch scale (seeds from several
            ``run-grid`` invocations).
        out_dir: the reports folder; the report goes to its ``<grid>/`` subfolder.
        data_path: the dataset folder for the normalization and mixup figures; default the grid run's
            recorded ``data.path`` when that folder exists here, else those figures are skipped with a note.
        log_to_mlflow: also log the folder to the grid run as artifacts under ``report/``.

    Returns:
        The path of the README.md.

    Raises:
        ReportError: no grid run to report on, or the report folder cannot be written.
    """
    data = collect_grid(tracker, run_id=run_id, all_seeds=all_seeds)
    folder = Path(out_dir) / slug(data.grid)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write-test").touch()
        (folder / ".write-test").unlink()
    except OSError as err:
        raise ReportError(
            f"cannot write the report to {folder} ({err.strerror or err}): pass --out with a writable folder."
        ) from None
    writer = _Writer(folder)
    baseline = find_reference(data)
    summaries = cell_summary(data, baseline)
    recorded = {k[len("params.") :]: v for k, v in data.parent.items() if str(k).startswith("params.")}
    dataset, dataset_note = figures.find_dataset(data_path, recorded)
    glance = _glance(data, summaries, baseline, writer, tracker)
    sections = build_sections(data, summaries, baseline, writer, dataset, dataset_note)
    worth = _effects_section(data, writer)
    if worth is not None:
        sections.insert(0, worth)
    honesty = honesty_notes(data, summaries, baseline)
    honesty += [f"**Figure:** {n}" for n in writer.notes]
    if dataset is not None:
        honesty.append(f"**Illustrative figures** (normalization, mixup) use {dataset_note}.")
    report = Report(
        title=f"{data.grid}: fastbook chapter 7, technique by technique",
        overview=_overview(data, summaries),
        summary_table=summary_markdown(summaries, baseline),
        summary_notes=_summary_notes(data, summaries, baseline),
        honesty=honesty,
        glance=glance,
        sections=sections,
        provenance=_provenance(data, all_seeds, getattr(tracker, "experiment_name", "sota_ablate")),
    )
    readme = folder / "README.md"
    readme.write_text(render(report), encoding="utf-8")
    for stale in folder.glob("*.png"):
        if stale.name not in writer.written:
            stale.unlink()
    if log_to_mlflow:
        tracker.log_artifacts(data.parent_id, folder, "report")
    return readme
