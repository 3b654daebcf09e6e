"""Sweep grids' report: the crossover rule and the trend on synthetic numbers, the sentences of a label-noise
sweep, and ``report`` end to end on a synthetic budget grid logged to a temporary sqlite store."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import scipy.stats
from mlflow.entities import Metric, Param

from sota_ablate import schema
from sota_ablate.cli import main
from sota_ablate.report import stats, sweep, sweep_section
from sota_ablate.report.collect import GridData
from sota_ablate.report.sweep import ABOVE, BELOW, NOT_REACHED, Crossover


def _d(low: float, high: float, method: str = "paired") -> stats.Difference:
    return stats.Difference((low + high) / 2, low, high, 3, method, 2.0, 0.01)


UP, CROSSES, DOWN = _d(0.01, 0.03), _d(-0.01, 0.02), _d(-0.03, -0.01)


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([DOWN, CROSSES, UP, UP], Crossover(ABOVE, 20)),
        ([UP, CROSSES, UP, UP], Crossover(ABOVE, 20)),  # reliable at 5 but not at 10: the run starts at 20
        ([UP, UP, UP, UP], Crossover(ABOVE, 5)),
        ([UP, UP, UP, CROSSES], Crossover(NOT_REACHED, None)),  # must hold up to the largest budget
        ([CROSSES, DOWN, DOWN, DOWN], Crossover(BELOW, 10)),
        ([UP, UP, None, UP], Crossover(ABOVE, 40)),  # a budget that was not compared breaks the run
        ([UP, UP, _d(0.01, 0.01), UP], Crossover(ABOVE, 40)),  # a zero-width interval is no evidence
        ([UP, UP, _d(math.nan, math.nan, "none"), UP], Crossover(ABOVE, 40)),  # one seed: no interval
    ],
)
def test_crossover_rule(diffs, expected):
    assert sweep.crossover(list(zip([5, 10, 20, 40], diffs, strict=True))) == expected


def test_trend_is_the_mean_of_per_seed_slopes_with_a_t_interval():
    values = [0.0, 5.0, 25.0, 50.0]
    per_seed = {0: [0.00, 0.01, 0.03, 0.06], 1: [0.01, 0.01, 0.04, 0.06], 2: [0.00, 0.02, 0.03, 0.05]}
    t = sweep.trend([(v, {s: d[i] for s, d in per_seed.items()}) for i, v in enumerate(values)])
    slopes = [scipy.stats.linregress(values, d).slope for d in per_seed.values()]
    expected = stats.summarize(slopes)
    assert t is not None and t.n == 3
    assert (t.slope, t.ci_low, t.ci_high) == pytest.approx((expected.mean, expected.ci_low, expected.ci_high))
    assert t.direction == "grows"
    flat = sweep.trend([(v, {0: 0.01 * (-1) ** i, 1: -0.01 * (-1) ** i}) for i, v in enumerate(values)])
    assert flat is not None and flat.direction == "unclear"


def _noise_grid() -> GridData:
    """A label-noise sweep: label smoothing's advantage grows with the noise, mixup's stays inside noise."""
    base = {0: 0.80, 25: 0.70, 50: 0.55}
    gain = {"label_smoothing": {0: 0.0, 25: 0.03, 50: 0.08}, "mixup": {0: 0.0, 25: 0.0, 50: 0.0}}
    jitter = [0.004, -0.003, 0.001]
    rows, cells = [], []
    for arm in ("baseline", "label_smoothing", "mixup"):
        for value, acc in base.items():
            cell = f"{arm}@{value}"
            cells.append(cell)
            for seed in range(3):
                own = 0.0 if arm == "baseline" else gain[arm][value] + jitter[(seed + value) % 3]
                rows.append({"run_id": f"{cell}-{seed}", "cell": cell, "seed": seed, "state": "complete",
                             "techniques": "none" if arm == "baseline" else arm,
                             "metrics.final_accuracy": acc + 0.01 * seed + own,
                             "tags.sweep_key": "label_noise", "tags.sweep_value": str(value),
                             "tags.sweep_arm": arm, "tags.sweep_reference": "baseline"})  # fmt: skip
    return GridData("label_noise", pd.DataFrame([{"run_id": "parent"}]), pd.DataFrame(rows), cells, [0, 1, 2])


def test_label_noise_sweep_sentences():
    found = sweep.sweep_of(_noise_grid())
    assert found is not None and not found.is_budget and found.values == (0.0, 25.0, 50.0)
    assert [a.name for a in found.arms] == ["baseline", "label_smoothing", "mixup"]
    smoothing, mixup = found.compared
    assert smoothing.crossover == Crossover(ABOVE, 25.0)
    assert smoothing.points[2].diff.delta == pytest.approx(0.08 + stats.mean([0.004, -0.003, 0.001]))
    assert sweep_section.lead(found, smoothing).startswith("`label_smoothing` is reliably above `baseline` from "
                                                           "`label_noise` = 25 on: +3.")  # fmt: skip
    assert "its advantage grows with `label_noise`" in sweep_section.trend_sentence(found, smoothing)
    assert mixup.crossover.kind == NOT_REACHED
    assert sweep_section.lead(found, mixup).startswith("`mixup`: not reached up to `label_noise` = 50")
    assert "no reliable trend" in sweep_section.trend_sentence(found, mixup)
    assert sweep_section.book_lines(found) == []  # the chapter's statements are about epochs
    line = sweep_section.synthesis_line(found)  # the grid's line in reports/README.md
    assert line.startswith("sweep over `label_noise` against `baseline`: `label_smoothing` is reliably above")


def _log_budget_grid(uri: str) -> str:
    """A budget grid in the sqlite store: baseline, mixup and label_smoothing at 5, 10 and 20 epochs, 3 seeds.
    Mixup is worse at 5 and pays off from 10 on; label smoothing never separates from the noise."""
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sota_ablate")
    budgets, arms = [5, 10, 20], ["baseline", "mixup", "label_smoothing"]
    cells = [f"{arm}@{b}" for arm in arms for b in budgets]
    sweep_tags = {schema.SWEEP_KEY: "epochs", schema.SWEEP_REFERENCE: "baseline", schema.BUDGET_UNIT: "epochs"}
    parent = client.create_run(experiment, run_name="budget", tags={schema.ROLE: schema.ROLE_GRID,
                               schema.GRID: "budget", **sweep_tags})  # fmt: skip
    cells_param = Param(schema.CELLS, str(cells).replace("'", '"'))
    client.log_batch(parent.info.run_id, params=[cells_param, Param(schema.SEEDS, "[0, 1, 2]")])
    client.set_terminated(parent.info.run_id)
    base = {5: 0.50, 10: 0.60, 20: 0.66}
    gain = {"baseline": {5: 0, 10: 0, 20: 0}, "mixup": {5: -0.04, 10: 0.02, 20: 0.05},
            "label_smoothing": {5: 0.0, 10: 0.0, 20: 0.0}}  # fmt: skip
    jitter = [0.006, -0.004, -0.002]
    for arm in arms:
        for b in budgets:
            for seed in range(3):
                run = client.create_run(experiment, run_name=f"{arm}@{b}-s{seed}", tags={
                    schema.PARENT: parent.info.run_id, schema.CELL: f"{arm}@{b}", schema.SEED: str(seed),
                    schema.TECHNIQUES: "none" if arm == "baseline" else arm, schema.COMPLETE: "true",
                    schema.SWEEP_VALUE: str(b), schema.SWEEP_ARM: arm, **sweep_tags})  # fmt: skip
                rid = run.info.run_id
                stages = [{"name": "train", "epochs": b, "size": 32, "batch_size": 8}]
                params = {schema.STAGES: str(stages).replace("'", '"'), schema.TRAIN_FLOPS: str(b * 1e9),
                          schema.TRAIN_IMAGES: str(b * 32), schema.OPTIMIZER_STEPS: str(b * 4)}  # fmt: skip
                own = 0.0 if arm == "baseline" else gain[arm][b] + jitter[(seed + b) % 3]
                wall = b * 2.0 * (1.1 if arm == "mixup" else 1.0) + 0.1 * seed
                metrics = {schema.FINAL_ACCURACY: base[b] + 0.01 * seed + own, schema.WALL_TIME: wall}
                client.log_batch(rid, metrics=[Metric(k, v, 0, b - 1) for k, v in metrics.items()],
                                 params=[Param(k, v) for k, v in params.items()])  # fmt: skip
                client.set_terminated(rid)
    return parent.info.run_id


def test_budget_report_end_to_end(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = _log_budget_grid(uri)
    out = tmp_path / "reports"
    assert main(["report", "--tracking-uri", uri, "--run-id", parent, "--out", str(out), "--no-log"]) == 0
    readme = (out / "budget" / "README.md").read_text(encoding="utf-8")
    assert "## Budget sweep: accuracy against the training budget" in readme
    assert "`mixup` pays off from 10 epochs on: +" in readme
    assert "`label_smoothing`: not reached up to 20 epochs" in readme
    assert "`mixup` is reliably below `baseline` at 5 epochs." in readme  # below zero before its crossover
    assert "Training FLOPs: equal between the arms at every budget" in readme
    assert "Wall time: not equal: `mixup` 1.10x" in readme
    assert "Mixup requires far more epochs" in readme and "how many epochs do you have to train" in readme
    assert "it does not reach 80 epochs" in readme
    assert "Budgets differ between compared cells" not in readme
    for name in sweep_section.FIGURES.values():
        assert (out / "budget" / name).stat().st_size > 10_000


def test_sweep_cells_share_their_arm_colour_and_differ_in_line_style():
    from sota_ablate.report.result_plots import sweep_line_styles

    styles = sweep_line_styles(_noise_grid(), ["baseline@0", "baseline@25", "baseline@50", "mixup@50"])
    assert styles == {"baseline@50": "-", "mixup@50": "-", "baseline@25": "--", "baseline@0": "-."}
    plain = GridData("g", pd.DataFrame([{"run_id": "p"}]), pd.DataFrame([{"run_id": "r", "cell": "c", "seed": 0,
                     "state": "complete"}]), ["c"], [0])  # fmt: skip
    assert sweep_line_styles(plain, ["c"]) == {}
