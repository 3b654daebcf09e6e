"""The parts of the report around the chapter's sections: the overview, the summary's footnotes, the figures at a
glance, "What each technique is worth", and the provenance."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from sota_ablate import schema
from sota_ablate.report import effects, result_plots
from sota_ablate.report.collect import GridData
from sota_ablate.report.formatting import pipe_table
from sota_ablate.report.keys import tag
from sota_ablate.report.markdown import FigureRef, Section
from sota_ablate.report.prose import listing
from sota_ablate.report.published import PUBLISHED_NOTE
from sota_ablate.report.sections import representative_run
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
}


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
        f"profile `{p(schema.PROFILE, '?')}` ({p(schema.PROFILE_DESCRIPTION, '')}).",
        "",
        f"- Seeds: {seeds}; cells: {len(data.cells)}; status: {status}.",
        f"- Data: {d('n_train')} training / {d('n_valid')} validation images, "
        f"{d('n_classes')} classes, source `{d('source')}`"
        + (f" ({d('variant', None)})" if d("source", None) == "imagenette" else "")
        + f", split `{d('split')}`, pre-size {d('presize')} px.",
        f"- Device: `{p(schema.DEVICE, '?')}`; epoch scale {p(schema.EPOCHS_SCALE, 1)}; "
        f"code `{data.parent.get(tag(schema.GIT_COMMIT), '?')}`.",
        f"- MLflow grid run{'s' if len(parents) > 1 else ''}: {', '.join(f'`{r}`' for r in parents)}.",
    ]


def _evaluation_only() -> list[str]:
    """The registered techniques that change evaluation only (``trains = False``)."""
    return [t for t in technique_names() if not TECHNIQUES.get(t).trains]


def summary_notes(summaries: Sequence[CellSummary], reference: str | None) -> list[str]:
    """The summary table's footnotes."""
    judged = [f"`{key}`" for _, key in judging_metrics()]
    own_columns = ""
    if judged:
        own_columns = f"; {listing(judged)} {'is its own column' if len(judged) == 1 else 'are their own columns'}"
    evaluation = listing([f"`{t}`" for t in _evaluation_only()])
    notes = [
        "accuracy: final validation accuracy (last epoch), mean ± sample std over the complete seeds, n seeds.",
        f"Δ vs {f'`{reference}`' if reference else 'baseline'}: difference in accuracy points with its 95% "
        "confidence interval (Student t; paired by "
        "seed when both cells ran the same seeds, else Welch); `no CI` with a single seed. Accuracy, Δ and the "
        f"best cell use the plain (centre-crop) accuracy{own_columns}.",
        "epoch time, wall time, images/s: means over seeds (wall time: the whole run"
        + (f", {evaluation} included)." if evaluation else ")."),
        PUBLISHED_NOTE,
    ]
    best = best_cell(summaries)
    if best:
        notes.insert(0, f"Best cell (bold): `{best}`.")
    if reference is None:
        notes.append("No reference cell: Δ is not computed.")
    return notes


def _identical_training(data: GridData) -> str:
    """`` (e.g. `tta` and `baseline`: `tta` only changes inference)``: a pair of cells that train alike, if any."""
    by_set = {data.technique_set(c): c for c in reversed(data.cells)}
    for cell in data.cells:
        techniques = data.technique_set(cell)
        for t in ordered(techniques):
            if t in TECHNIQUES and not TECHNIQUES.get(t).trains and techniques - {t} in by_set:
                pair = f"`{cell}` and `{by_set[techniques - {t}]}`"
                return f" Cells that train identically (e.g. {pair}: `{t}` only changes inference) overlap."
    return ""


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
    if any(not h.empty for h in data.histories.values()):
        refs.append(
            writer.save(
                GLANCE_FILES["accuracy"],
                lambda: result_plots.plot_accuracy_by_epoch(data, colours),
                "validation accuracy by epoch, every cell",
                "Validation accuracy by epoch for every cell (mean over seeds; faint lines: single seeds)."
                + _identical_training(data),
            )
        )
        refs.append(
            writer.save(
                GLANCE_FILES["losses"],
                lambda: result_plots.plot_losses(data, colours, _loss_scale(data)),
                "training and validation loss by epoch",
                "Training (smoothed, as fastai) and validation loss by epoch.",
            )
        )
    if any(s.accuracy.n for s in summaries):
        refs.append(
            writer.save(
                GLANCE_FILES["final"],
                lambda: result_plots.plot_final_accuracy(data, summaries, reference, colours),
                "final accuracy per cell",
                "Final accuracy per cell: mean ± std over seeds (dots: seeds); dashed: the baseline.",
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


def effects_section(data: GridData, writer: FigureWriter) -> Section | None:
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
        table=effects.effects_markdown(found),
    )
    section.effect += [f"- {note}" for note in effects.effect_notes(found)]
    pairs = effects.pair_lines(found)
    if pairs:
        section.effect.append("Pairs compared: " + " ".join(pairs))
    fig = writer.save(
        GLANCE_FILES["effects"],
        lambda: result_plots.plot_effects(found, data.grid),
        "accuracy effect of each technique with its 95% interval",
        "Accuracy effect of switching each technique on, with its 95% interval over seeds (diamonds: the pairs "
        "train a different number of epochs).",
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
