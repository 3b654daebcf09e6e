"""The parts of the report around the chapter's sections: the overview, the summary's footnotes, the figures at a
glance, "What each technique is worth", and the provenance."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from sota_ablate import schema
from sota_ablate.report import effects, predictions, result_plots, stats, synthesis, verdicts
from sota_ablate.report.collect import GridData
from sota_ablate.report.comparison import prediction_array
from sota_ablate.report.dataset import dataset_name, is_imagenette
from sota_ablate.report.formatting import format_points, pipe_table
from sota_ablate.report.keys import param, tag
from sota_ablate.report.markdown import FigureRef, Section
from sota_ablate.report.prose import listing
from sota_ablate.report.published import PUBLISHED_NOTE, published_effect
from sota_ablate.report.result_plots import EffectPoint
from sota_ablate.report.sections import representative_run, technique_colours
from sota_ablate.report.tables import CellSummary, best_cell, judging_metrics
from sota_ablate.report.writer import FigureWriter
from sota_ablate.techniques import TECHNIQUES, ordered, technique_names

GLANCE_FILES = {
    "accuracy": "accuracy_by_epoch.png",
    "losses": "loss_curves.png",
    "final": "final_accuracy.png",
    "time": "accuracy_vs_wall_time.png",
    "confusion": "confusion_matrix_best.png",
    "effects": "technique_effects.png",
    "verdict": "verdict_forest.png",
    "cost": "cost_vs_effect.png",
}
TERMS = (
    "Terms: a *cell* is one recipe of the grid (a set of techniques and a schedule), trained once per seed; "
    "*points* are accuracy percentage points (+1.00 pts = +0.01 accuracy); a recipe `5x40px bs128 -> 1+4x64px bs64` "
    "is 5 epochs at 40 px with batch size 128, then fastai's `fine_tune`: 1 frozen + 4 epochs at 64 px, batch 64; "
    "intervals are 95% Student-t intervals *paired by seed* (seed k shares initialisation and data order in every "
    "cell; a cell with extra seeds is paired on the other's), or *Welch*'s unequal-variance interval when two "
    "cells ran different seeds."
)


def overview(data: GridData) -> list[str]:
    """The lines under the title: the grid, its profile, seeds, status, data, device, code, MLflow runs."""
    p = data.parent_param
    parents = list(data.parents["run_id"])
    runs = data.runs
    complete = int((runs["state"] == "complete").sum())
    status = "complete" if complete == len(runs) else f"**partial**: {complete} of {len(runs)} cell runs complete"
    if (data.parents["state"] == "running").any():
        status += " (the grid run is still running: regenerate when it ends)"
    seeds = ", ".join(str(s) for s in data.seeds)

    def d(field: str, default: object = "?") -> object:
        return p(schema.data_param(field), default)

    return [
        f"What each technique of fastbook chapter 7 is worth, measured: grid `{data.grid}` "
        f"(`{p(schema.GRID_FILE, '?')}`{': ' + data.description if data.description else ''}), "
        f"profile `{p(schema.PROFILE, '?')}` ({_scale(data)}).",
        "",
        f"- Seeds: {seeds}; cells: {len(data.cells)}; status: {status}.",
        f"- Data: {dataset_name(data)}, {d('n_train')} training / {d('n_valid')} validation images, "
        f"{d('n_classes')} classes, source `{d('source')}`"
        + (f" ({d('variant', None)})" if d("source", None) == "imagenette" else "")
        + f", split `{d('split')}`, pre-size {d('presize')} px.",
        f"- Device: `{p(schema.DEVICE, '?')}`; epoch scale {p(schema.EPOCHS_SCALE, 1)}; "
        f"code `{data.parent.get(tag(schema.GIT_COMMIT), '?')}`.",
        f"- MLflow grid run{'s' if len(parents) > 1 else ''}: {', '.join(f'`{r}`' for r in parents)}.",
        "",
        TERMS,
    ]


def _scale(data: GridData) -> str:
    """What the profile made of the cells, from their params: model(s), final image size(s), batch size(s)."""

    def values(field: str) -> str:
        found = sorted(
            {str(v) for v in data.runs.get(param(schema.train_param(field)), []) if v == v and v is not None}
        )
        return "/".join(found) or "?"

    return f"{values('model')} at {values('size')} px, batch size {values('batch_size')}"


def _evaluation_only() -> list[str]:
    """The registered techniques that change evaluation only (``trains = False``)."""
    return [t for t in technique_names() if not TECHNIQUES.get(t).trains]


def summary_notes(summaries: Sequence[CellSummary], reference: str | None, book: bool = True) -> list[str]:
    """The summary table's footnotes (``book``: the table has the published column, Imagenette only)."""
    judged = [f"`{key}`" for _, key in judging_metrics()]
    own_columns = ""
    if judged:
        own_columns = f"; {listing(judged)} {'is its own column' if len(judged) == 1 else 'are their own columns'}"
    evaluation = listing([f"`{t}`" for t in _evaluation_only()])
    notes = [
        "accuracy: final validation accuracy (last epoch), mean ± sample std over the complete seeds, n seeds.",
        f"Δ vs {f'`{reference}`' if reference else 'baseline'}: difference in accuracy points with its 95% "
        "confidence interval (Student t; paired by "
        "seed on the seeds both cells ran when one ran all of the other's, else Welch); `no CI` with a single seed. Accuracy, Δ and the "
        f"best cell use the plain (centre-crop) accuracy{own_columns}.",
        "epoch time, wall time, images/s: means over seeds (wall time: the whole run"
        + (f", {evaluation} included)." if evaluation else ")."),
        *([PUBLISHED_NOTE] if book else []),
    ]
    noisy = [f"`{s.cell}`" for s in summaries if s.label_noise]
    if book and noisy:
        notes.append(
            f"No published number for {listing(noisy)}: trained with wrong training labels (`label_noise`), "
            "where the book's were clean."
        )
    best = best_cell(summaries)
    if best:
        notes.insert(0, f"Best cell (bold): `{best}`.")
    if reference is None:
        notes.append("No reference cell: Δ is not computed.")
    return notes


def _training_recipe(rows: pd.DataFrame, training: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """What a cell's first complete run trained with: its recipe (``train.*`` but the seed), its stages and the
    hyperparameters of its training techniques; two cells train alike only when these agree."""
    if rows.empty:
        return ()
    row = rows.iloc[0]
    prefixes = (param(schema.TRAIN_PREFIX), *(param(f"{schema.TECH_PREFIX}{t}.") for t in training))
    keys = [
        c
        for c in rows.columns
        if (c.startswith(prefixes) and c != param(schema.train_param("seed"))) or c == param(schema.STAGES)
    ]
    return tuple(sorted((c, str(row[c])) for c in keys))


def distinct_training(data: GridData) -> tuple[list[str], dict[str, str], str]:
    """(cells to draw, legend label per cell, note): a cell that trains exactly like another (it differs only by
    techniques that change evaluation, ``trains = False``) is drawn once, under both names."""
    drawn: list[str] = []
    labels: dict[str, str] = {}
    merged = []
    trained_as: dict[tuple, str] = {}
    for cell in data.cells:
        techniques = data.technique_set(cell)
        training = frozenset(t for t in techniques if t not in TECHNIQUES or TECHNIQUES.get(t).trains)
        rows = data.cell_rows(cell)
        key = (training, _training_recipe(rows, training))
        if key in trained_as and rows.shape[0]:
            first = trained_as[key]
            labels[first] = f"{labels[first]} = {cell}"
            merged.append(f"`{cell}` trains exactly as `{first}`")
            continue
        if rows.shape[0]:
            trained_as[key] = cell
        drawn.append(cell)
        labels[cell] = cell
    note = (
        f" Cells that train identically are drawn once ({listing(merged)}: they differ only in evaluation)."
        if merged
        else ""
    )
    return drawn, labels, note


def _loss_scale(data: GridData) -> str:
    """Which of the grid's techniques change the loss's scale: those with a loss of their own, then those that
    replace the training batch (and with it the targets)."""
    used = ordered(data.techniques_used())
    claims = {t: TECHNIQUES.get(t).claims if t in TECHNIQUES else frozenset() for t in used}
    names = [t for t in used if "loss" in claims[t]] + [
        t for t in used if "batch" in claims[t] and "loss" not in claims[t]
    ]
    if not names:
        return ""
    return f"{listing([n.replace('_', ' ') for n in names])} change{'s' if len(names) == 1 else ''} the loss's scale"


def glance(
    data: GridData,
    summaries: list[CellSummary],
    reference: str | None,
    colours: Mapping[str, str],
    writer: FigureWriter,
    read_artifact: Callable[[str, str], str | None],
    class_names: Mapping[str, str],
) -> list[FigureRef]:
    """The figures "at a glance": curves, final accuracy, accuracy vs time, the best cell's confusion matrix."""
    refs = []
    drawn, labels, merged = distinct_training(data)
    styles = (
        " Colour: the arm; line style: the swept value (solid: the largest, then dashed, dash-dotted, dotted)."
        if result_plots.sweep_line_styles(data, drawn)
        else ""
    )
    if any(not h.empty for h in data.histories.values()):
        refs.append(
            writer.save(
                GLANCE_FILES["accuracy"],
                lambda: result_plots.plot_accuracy_by_epoch(data, colours, drawn, labels),
                "validation accuracy by epoch and by elapsed time, every cell",
                "Validation accuracy by epoch (left) and against elapsed training + validation time (right): mean "
                "over seeds, shaded band: the seeds' range." + styles + merged,
            )
        )
        refs.append(
            writer.save(
                GLANCE_FILES["losses"],
                lambda: result_plots.plot_losses(data, colours, _loss_scale(data), drawn, labels),
                "training and validation loss by epoch",
                "Training (smoothed, as fastai) and validation loss by epoch (band: the seeds' range)." + merged,
            )
        )
    if any(s.accuracy.n for s in summaries):
        refs.append(
            writer.save(
                GLANCE_FILES["final"],
                lambda: result_plots.plot_final_accuracy(data, summaries, reference, colours),
                "final accuracy per cell",
                "Final accuracy per cell: mean with its 95% interval (small dots: seeds)"
                + ("; dashed: the reference." if reference in data.cells else "."),
            )
        )
        refs.append(
            writer.save(
                GLANCE_FILES["time"],
                lambda: result_plots.plot_accuracy_vs_time(data, summaries, colours),
                "accuracy vs wall time",
                "Final accuracy against wall time per run: up and to the left is better.",
            )
        )
    best = best_cell(summaries)
    if best:
        row, _ = representative_run(data, best)
        text = read_artifact(str(row["run_id"]), schema.CONFUSION_MATRIX_JSON) if row is not None else None
        if text:
            cm = json.loads(text)
            labels = [class_names.get(c, c) for c in cm.get("classes", [])]
            seed = int(row["seed"])
            refs.append(
                writer.save(
                    GLANCE_FILES["confusion"],
                    lambda: result_plots.plot_confusion_matrix(
                        cm["matrix"], labels, f"best cell {best}, seed {seed}: confusion matrix"
                    ),
                    f"confusion matrix of {best}",
                    f"Confusion matrix of the best cell, `{best}` (seed {seed}); rows: actual class.",
                )
            )
    return [r for r in refs if r is not None]


EFFECT_INTROS = {
    frozenset({effects.ALONE}): "Here every technique is measured alone, on top of the baseline (the chapter's view).",
    frozenset({effects.FULL_RECIPE}): "Here every technique is measured inside the full recipe: everything "
    "against everything but it.",
    frozenset({effects.MAIN_EFFECT}): "Here every effect is a main effect: the mean over every combination of "
    "the other techniques.",
}


def effect_points(found: Sequence[effects.TechniqueEffect], prefix: str = "", book: bool = True) -> list[EffectPoint]:
    """The forest plot's rows: each effect in its technique's colour, with the book's effect where it has one
    (``book``: the data is Imagenette, which the book's effects are about)."""
    colours = technique_colours()
    out = []
    for e in found:
        if math.isnan(e.accuracy.delta):
            continue
        published = published_effect(e.technique) if book else None
        label = f"{prefix}{e.technique}" + ("" if e.metric == "accuracy" else f" ({e.metric})")
        out.append(
            EffectPoint(
                label=label,
                delta=e.accuracy.delta,
                low=e.accuracy.ci_low if e.accuracy.has_ci else math.nan,
                high=e.accuracy.ci_high if e.accuracy.has_ci else math.nan,
                colour=colours.get(e.technique, "#888888"),
                time_ratio=e.time_ratio,
                confounded=not e.equal_budget,
                book=published.delta if published else math.nan,
            )
        )
    return out


def verdict_section(data: GridData, writer: FigureWriter, band: float) -> Section | None:
    """The report's opening: the verdict table of this grid's techniques, its notes, the forest plot."""
    found = effects.technique_effects(data)
    if not found:
        return None
    book = is_imagenette(data)
    table = synthesis.verdict_markdown([synthesis.GridEffects(data.grid, "", tuple(found), book)], band)
    section = Section(title="Verdict", table=table)
    section.effect += [f"- {n}" for n in synthesis.verdict_notes(band, book)]
    section.effect.append(verdicts.mde_sentence([e.accuracy for e in found if e.equal_budget], band))
    points = effect_points(found, book=book)
    fig = writer.save(
        GLANCE_FILES["verdict"],
        lambda: result_plots.plot_effects(points, f"{data.grid}: what each technique is worth", band),
        "each technique's effect with its 95% interval" + (", the book's effect marked" if book else ""),
        f"Each technique's effect with its 95% interval, in its colour; grey band: ±{100 * band:g} point; "
        + ("black cross: the book's effect; " if book else "")
        + "diamonds: the cells compared trained different numbers of epochs.",
    )
    if fig is not None:
        section.figures.append(fig)
    return section


def _classes(changes: Sequence[tuple[str, float]], names: Mapping[str, str], gain: bool, k: int = 2) -> str:
    picked = [c for c in changes if (c[1] > 0 if gain else c[1] < 0)]
    picked = picked[:k] if gain else list(reversed(picked))[:k]
    return ", ".join(f"{names.get(c, c)} {format_points(v)}" for c, v in picked) or "-"


def per_image_lines(data: GridData, found: Sequence[effects.TechniqueEffect], names: Mapping[str, str]) -> list[str]:
    """The per-image view of each effect: a bootstrap over validation images (jointly across seeds, paired between
    the cells), the probability of improvement over seed pairs, and the classes that gain and lose most."""
    rows = []
    for e in found:
        usable = [c for c in e.comparisons if c.diff is not None]
        if not usable:
            continue
        c = usable[0]
        with_values = [stats.mean([u.values_with[s] for u in usable]) for s in e.seeds] if e.seeds else []
        without_values = [stats.mean([u.values_without[s] for u in usable]) for s in e.seeds] if e.seeds else []
        poi = stats.probability_of_improvement(with_values, without_values)
        poi_text = "-" if math.isnan(poi.value) else f"{poi.value:.2f}"
        if poi.has_ci:
            poi_text += f" [{poi.ci_low:.2f}, {poi.ci_high:.2f}]"
        image = None
        if len(usable) == 1:
            a, b = prediction_array(c.key_with), prediction_array(c.key_without)
            if a and b:
                image = predictions.compare_images(
                    data.cell_predictions(c.with_cell),
                    data.cell_predictions(c.without_cell),
                    a,
                    b,
                )
        if image is None:
            boot, gains, losses = "-", "-", "-"
        else:
            d = image.difference
            boot = f"{format_points(d.value)} pts"
            if d.has_ci and d.ci_low == d.ci_high:
                boot += " (identical on every image)"
            elif d.has_ci:
                boot += f" [{format_points(d.ci_low)}, {format_points(d.ci_high)}]"
            boot += f" ({len(image.seeds)} seeds × {image.n_images} images)"
            gains, losses = _classes(image.class_changes, names, True), _classes(image.class_changes, names, False)
        rows.append([f"`{e.technique}`", e.metric, boot, poi_text, gains, losses])
    if not rows:
        return []
    lines = [
        "**Per-image view.** The same effects from each run's per-image predictions: a percentile bootstrap over "
        "validation images (2,000 resamples, seeded; a resampled image keeps its result in every seed and in both "
        "cells), P(with > without) over every pair of seeds as rliable computes it (ties count 1/2; bootstrap "
        "interval over seeds), and the classes whose accuracy changes most (points, mean over seeds).",
        pipe_table(
            [
                "technique",
                "metric",
                "bootstrap over images [95% CI]",
                "P(with > without) [95% CI]",
                "classes that gain most",
                "classes that lose most",
            ],
            rows,
        ),
    ]
    if not data.predictions:
        lines.append(f"Per-image columns: {predictions.NO_PREDICTIONS}.")
    elif any(r[2] == "-" for r in rows):
        lines.append(
            "`-` in the bootstrap column: a main effect over several pairs, or cells without per-image predictions."
        )
    return lines


def effects_section(
    data: GridData, writer: FigureWriter, band: float = verdicts.DEFAULT_BAND, names: Mapping[str, str] | None = None
) -> Section | None:
    """ "What each technique is worth": the effect of switching each technique on, over matched pairs of cells."""
    found = effects.technique_effects(data)
    if not found:
        return None
    intro = EFFECT_INTROS.get(frozenset(e.kind for e in found), "")
    section = Section(
        title="What each technique is worth",
        intro=(
            "Each technique against the same recipe without it, from the pairs of cells that differ by that "
            "technique only. " + intro
        ).strip(),
        table=effects.effects_markdown(found, band),
    )
    section.effect += [f"- {note}" for note in effects.effect_notes(found, band)]
    pairs = effects.pair_lines(found)
    if pairs:
        section.effect.append("Pairs compared: " + " ".join(pairs))
    section.effect += per_image_lines(data, found, names or {})
    points = effect_points(found, book=is_imagenette(data))
    fig = writer.save(
        GLANCE_FILES["cost"],
        lambda: result_plots.plot_cost_effect(points, f"{data.grid}: effect against its cost in wall time"),
        "effect with its interval against the wall-time ratio",
        "Each technique's effect with its 95% interval against its wall-time ratio (with / without): up and to the "
        "left is better; diamonds: epochs differ.",
    )
    if fig is not None:
        section.figures.append(fig)
    return section


def provenance(data: GridData, all_seeds: bool, experiment: str) -> list[str]:
    """How to regenerate the report, and every run it read."""
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
