"""run-grid --precision: Stein's two-stage seed count (scipy as the reference), the cap, zero variance, the plan
of extra cell runs, and one smoke grid that runs its extra seeds once and a rerun that adds nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import scipy.stats

from sota_ablate.cli import main
from sota_ablate.precision import (
    PROCEDURE,
    PrecisionError,
    Target,
    check_target,
    extra_runs,
    plan_comparisons,
    stein_plan,
)


def _reference_n(pilot: list[float], h: float) -> int:
    """Stein's total sample size, written out with scipy/numpy."""
    n0 = len(pilot)
    s0 = float(np.std(pilot, ddof=1))
    t = scipy.stats.t.ppf(0.975, n0 - 1)
    return max(n0, math.ceil((t * s0 / h) ** 2))


@pytest.mark.parametrize("pilot, h", [([1.0, 3.0, 2.0], 1.0), ([0.5, -1.5, 2.0, 4.0], 0.75), ([10, 12, 7, 9, 11], 2)])
def test_seed_count_on_known_variances_matches_scipy(pilot, h):
    plan = stein_plan(pilot, h, max_seeds=10_000)
    assert plan.needed == _reference_n(pilot, h) and plan.planned == plan.needed and not plan.capped
    assert plan.s0 == pytest.approx(np.std(pilot, ddof=1))
    assert plan.t == pytest.approx(scipy.stats.t.ppf(0.975, len(pilot) - 1))
    assert plan.half_width(plan.planned) <= h  # by construction
    # pilot [1, 3, 2]: s0 = 1, t(0.975, 2) = 4.303, (4.303 / 1)^2 = 18.5 -> 19 seeds
    if pilot == [1.0, 3.0, 2.0]:
        assert plan.needed == 19


def test_cap_and_zero_variance():
    capped = stein_plan([1.0, 3.0, 2.0], 1.0, max_seeds=6)
    assert capped.needed == 19 and capped.planned == 6 and capped.capped
    assert (
        capped.half_width(6) == pytest.approx(scipy.stats.t.ppf(0.975, 2) / math.sqrt(6)) and capped.half_width(6) > 1
    )
    flat = stein_plan([2.0, 2.0, 2.0], 0.1, max_seeds=10)
    assert flat.s0 == 0 and flat.needed == flat.planned == 3
    wide = stein_plan([1.0, 3.0, 2.0], 100.0, max_seeds=10)
    assert wide.planned == 3  # a wide target needs no more than the pilot


def test_bad_targets_name_the_fix():
    with pytest.raises(PrecisionError, match="at least 3 seeds"):
        check_target(Target(1.0), 2)
    with pytest.raises(PrecisionError, match="--max-seeds 2"):
        check_target(Target(1.0, 2), 3)
    with pytest.raises(PrecisionError, match="positive"):
        check_target(Target(math.nan), 3)


def test_extra_seed_plan_for_a_small_grid():
    """baseline / mixup / label_smoothing: mixup's pilot is noisy (needs seeds), label smoothing's is flat."""
    cells = [("baseline", frozenset()), ("mixup", frozenset({"mixup"})), ("ls", frozenset({"label_smoothing"}))]
    acc = "final_accuracy"
    values = {
        "baseline": {acc: {0: 0.50, 1: 0.50, 2: 0.50}},
        "mixup": {acc: {0: 0.51, 1: 0.53, 2: 0.52}},  # effects 1, 3, 2 points: 19 seeds, capped at 5
        "ls": {acc: {0: 0.52, 1: 0.52, 2: 0.52}},  # 2, 2, 2: no spread
    }
    plans = plan_comparisons(cells, values, [0, 1, 2], Target(1.0, 5))
    by = {c.technique: c for c in plans}
    assert set(by) == {"mixup", "label_smoothing"}
    assert by["mixup"].pairs == (("baseline", "mixup"),) and by["mixup"].plan.needed == 19
    assert by["mixup"].plan.planned == 5 and by["label_smoothing"].plan.planned == 3
    assert extra_runs(plans, [0, 1, 2]) == {"baseline": [3, 4], "mixup": [3, 4]}
    assert extra_runs(plans, [0, 4, 7]) == {"baseline": [8, 9], "mixup": [8, 9]}  # after the largest pilot seed


def test_a_sweep_plans_each_arm_at_each_value_against_the_reference_there():
    """A budget sweep: each arm's cell is one comparison against the reference's cell at the same value, on the
    judged metric of the one technique between them; only the noisy values get extra seeds (and their reference)."""
    from sota_ablate.pairing import sweep_pairs

    cells = [(f"{arm}@{b}", frozenset(t)) for b in (5, 10) for arm, t in
             (("baseline", ()), ("mixup", ("mixup",)), ("tta", ("tta",)))]  # fmt: skip
    points = {name: (name.split("@")[0], name.split("@")[1], "baseline") for name, _ in cells}
    assert sweep_pairs(cells, points) == [
        ("mixup@5", "mixup", ("baseline@5", "mixup@5")),
        ("tta@5", "tta", ("baseline@5", "tta@5")),
        ("mixup@10", "mixup", ("baseline@10", "mixup@10")),
        ("tta@10", "tta", ("baseline@10", "tta@10")),
    ]
    acc = "final_accuracy"
    flat, noisy = {0: 0.50, 1: 0.50, 2: 0.50}, {0: 0.51, 1: 0.53, 2: 0.52}  # effects 1, 3, 2 points vs flat
    values = {
        "baseline@5": {acc: flat}, "mixup@5": {acc: noisy}, "tta@5": {acc: flat, "tta_accuracy": flat},
        "baseline@10": {acc: flat}, "mixup@10": {acc: {0: 0.52, 1: 0.52, 2: 0.52}}, "tta@10": {acc: flat},
    }  # fmt: skip
    plans = plan_comparisons(cells, values, [0, 1, 2], Target(1.0, 6), points)
    by = {c.label: c for c in plans}
    assert list(by) == ["mixup@5", "tta@5", "mixup@10", "tta@10"]
    assert by["mixup@5"].plan.needed == 19 and by["mixup@5"].plan.planned == 6 and by["mixup@10"].plan.planned == 3
    assert by["tta@5"].metric == "tta_accuracy vs final_accuracy"  # TTA judged as on any grid
    assert extra_runs(plans, [0, 1, 2]) == {"baseline@5": [3, 4, 5], "mixup@5": [3, 4, 5]}
    # a cell that differs from its reference by more than one technique is compared on the plain accuracy
    both = [("baseline@5", frozenset()), ("all@5", frozenset({"mixup", "tta"}))]
    assert sweep_pairs(both, {"baseline@5": ("baseline", "5", "baseline"), "all@5": ("all", "5", "baseline")}) == [
        ("all@5", "", ("baseline@5", "all@5"))
    ]


GRID = """
name = "prec"
seeds = [0, 1, 2]
[[cells]]
name = "baseline"
techniques = []
[[cells]]
name = "norm"
techniques = ["normalize"]
lr = 0.05
[overrides.baseline]
lr = 0.05
"""


def _precision_args(tmp_path: Path, grid_text: str, image_folder: Path) -> tuple[list[str], str]:
    """The smoke ``run-grid --precision 0.01 --max-seeds 4`` command line of a grid file with ``grid_text``; its
    store's URI."""
    grid = tmp_path / "grid.toml"
    grid.write_text(grid_text)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(image_folder), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress", "--precision", "0.01",
            "--max-seeds", "4"]  # fmt: skip
    return args, uri


def _precision_plan(run_id: str) -> dict:
    """The grid run's ``precision.json``."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="precision.json")
    return json.loads(Path(path).read_text())


def test_smoke_grid_runs_the_extra_seeds_once(tmp_path: Path, image_folder: Path, capsys):
    args, uri = _precision_args(tmp_path, GRID, image_folder)
    assert main(args) == 0
    first = capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    parent = runs[runs["tags.sota_ablate.role"] == "grid"]
    children = runs[runs["tags.sota_ablate.role"] != "grid"]
    assert len(parent) == 1 and parent.iloc[0]["tags.sota_ablate.complete"] == "true", first
    plan = _precision_plan(parent.iloc[0]["run_id"])
    (norm,) = plan["comparisons"]
    accuracy = children.set_index(["tags.cell", "tags.seed"])["metrics.final_accuracy"].to_dict()
    assert norm["s0_points"] > 0, f"the pilot has no spread on this folder: the test needs one ({accuracy})"
    assert norm["capped"] and norm["planned"] == 4 and plan["extra_runs"] == {"baseline": [3], "norm": [3]}
    assert parent.iloc[0]["params.precision.procedure"] == PROCEDURE
    assert parent.iloc[0]["metrics.precision.planned_n.normalize"] == 4
    keys = sorted(zip(children["tags.cell"], children["tags.seed"], children["status"], strict=True))
    assert keys == sorted((c, str(s), "FINISHED") for c in ("baseline", "norm") for s in range(4))  # extras once
    assert "capped at 4" in first

    assert main(args) == 0  # the same command again: the same grid run, nothing new
    again = mlflow.search_runs(experiment_names=["sota_ablate"])
    assert len(again) == len(runs)
    assert "8 cell runs" in capsys.readouterr().out

    from sota_ablate.report.generate import generate_report
    from sota_ablate.tracking import Tracker

    readme = generate_report(Tracker(uri, "sota_ablate"), out_dir=tmp_path / "reports", log_to_mlflow=False)
    text = readme.read_text()
    section = text[text.index("## Precision") :]
    assert "Stein (1945) two-stage procedure" in section and "capped at 4; needs" in section
    assert "the cap stopped it short" in section


def test_cli_refuses_bad_precision_before_training(tmp_path: Path, image_folder: Path, capsys):
    grid = tmp_path / "prec.toml"
    grid.write_text(GRID)
    base = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(image_folder),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu"]  # fmt: skip
    for extra, message in [
        (["--precision", "0"], "--precision 0.0: use a number > 0"),
        (["--precision", "inf"], "--precision inf"),
        (["--precision", "1", "--max-seeds", "2"], "--max-seeds 2: use an integer >= 3"),
        (["--precision", "1", "--seeds", "0,1"], "a pilot of at least 3 seeds"),
        (["--max-seeds", "5"], "--max-seeds needs --precision"),
    ]:
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_cell_without_extra_seeds_is_not_missing_them() -> None:
    """The report expects of each cell the grid's seeds and the extra seeds ``--precision`` planned for that cell
    (``precision.json``): a cell no comparison needed more seeds of is complete, not ``3/4 seeds; 1 missing``; an
    extra seed planned but not run is missing only where it was planned."""
    import pandas as pd

    from sota_ablate.report.collect import choose_runs, precision_extra_runs

    children = pd.DataFrame(
        [{"run_id": f"{c}{s}", "cell": c, "seed": s, "state": "complete", "start_time": "2026-12-04"}
         for c, seeds in (("baseline", (0, 1, 2, 3)), ("norm", (0, 1, 2)), ("mixup", (0, 1, 2))) for s in seeds]
    )  # fmt: skip
    runs, _ = choose_runs(children, ["baseline", "norm", "mixup"], [0, 1, 2], {"baseline": [3], "norm": [3]})
    states = {(r["cell"], r["seed"]): r["state"] for _, r in runs.iterrows()}
    assert states[("norm", 3)] == "missing" and ("mixup", 3) not in states
    assert sum(s == "complete" for s in states.values()) == 10

    class Store:
        def read_artifact_text(self, run_id: str, path: str) -> str | None:
            assert path == "precision.json"
            return json.dumps({"extra_runs": {"baseline": [3, 4], "norm": [3]}}) if run_id == "planned" else "{oops"

    parent = pd.Series({"run_id": "planned", "params.precision.half_width_points": "1.0"})
    assert precision_extra_runs(Store(), parent) == {"baseline": [3, 4], "norm": [3]}
    assert precision_extra_runs(Store(), parent.drop("params.precision.half_width_points")) == {}
    assert precision_extra_runs(Store(), parent.replace("planned", "damaged")) == {}  # a damaged plan: none


SWEEP_GRID = """
name = "sweepprec"
seeds = [0, 1, 2]
generate = "budget"
techniques = ["normalize"]
budgets = [1, 2]
[defaults]
lr = 0.05
"""


def test_smoke_budget_sweep_with_precision(tmp_path: Path, image_folder: Path, capsys):
    """--precision on a budget sweep: one plan per arm and budget, extra seeds only where a plan asks for them,
    and the report's Precision section names the cells."""
    args, uri = _precision_args(tmp_path, SWEEP_GRID, image_folder)
    assert main(args) == 0
    out = capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    parent = runs[runs["tags.sota_ablate.role"] == "grid"].iloc[0]
    plan = _precision_plan(parent["run_id"])
    assert [c["cell"] for c in plan["comparisons"]] == ["normalize@1", "normalize@2"], out
    assert all(
        c["pairs"] == [[f"baseline@{b}", f"normalize@{b}"]] for c, b in zip(plan["comparisons"], (1, 2), strict=True)
    )
    noisy = [c for c in plan["comparisons"] if c["s0_points"] > 0]
    assert noisy, f"the pilot has no spread on this folder: the test needs one ({out})"
    expected = {cell: [3] for c in noisy for cell in c["pairs"][0]}
    assert plan["extra_runs"] == expected
    children = runs[runs["tags.sota_ablate.role"] != "grid"]
    ran = sorted(zip(children["tags.cell"], children["tags.seed"].astype(int), strict=True))
    assert ran == sorted([(c, s) for c in ("baseline@1", "normalize@1", "baseline@2", "normalize@2") for s in range(3)]
                         + [(c, 3) for c in expected])  # fmt: skip
    assert parent["metrics.precision.planned_n.normalize_1"] == 4 or "normalize@1" not in expected

    from sota_ablate.report.generate import generate_report
    from sota_ablate.tracking import Tracker

    text = generate_report(Tracker(uri, "sota_ablate"), out_dir=tmp_path / "reports", log_to_mlflow=False).read_text()
    section = text[text.index("## Precision") :]
    assert "| cell | metric |" in section and "`normalize@1`" in section and "`normalize@2`" in section
    assert "missing" not in text  # cells without extra seeds are complete
