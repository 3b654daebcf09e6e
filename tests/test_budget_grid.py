"""Sweep and budget grids: expansion and naming, the budget split, equal compute, the errors, one smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from sota_ablate import budget, schema
from sota_ablate.cli import main
from sota_ablate.data import DataConfig, steps_per_epoch
from sota_ablate.grid import GridError, load_grid, parse_grid
from sota_ablate.plan import RunOptions, equalise_compute, make_plans
from sota_ablate.profiles import Profile, get_profile
from sota_ablate.train.flops import step_flops

ROOT = Path(__file__).resolve().parents[1]
BARE = Profile("bare", "")
INFO = {"n_train": 100, "n_valid": 20, "n_classes": 10, "split": "folder"}


def _opts(profile: Profile = BARE, scale: float = 1.0) -> RunOptions:
    return RunOptions(profile=profile, data=DataConfig(), device=torch.device("cpu"), epochs_scale=scale)


def _budget_grid(**extra) -> dict:
    return {"name": "b", "generate": "budget", "techniques": ["mixup", "label_smoothing"], "budgets": [5, 20],
            **extra}  # fmt: skip


def test_budget_grid_expands_into_named_cells_with_sweep_tags():
    grid = parse_grid(
        _budget_grid(seeds=[0, 1], defaults={"lr": 1e-3}, overrides={"mixup@20": {"mixup": {"alpha": 0.2}}}),
        source="b.toml",
    )
    names = ["baseline@5", "mixup@5", "label_smoothing@5", "baseline@20", "mixup@20", "label_smoothing@20"]
    assert [c.name for c in grid.cells] == names
    assert grid.sweep is not None and (grid.sweep.key, grid.sweep.unit, grid.sweep.reference) == (
        "epochs",
        "epochs",
        "baseline",
    )
    plans = [p.bind(INFO) for p in make_plans(grid, grid.seeds, _opts())]
    assert len(plans) == 12 and {p.seed for p in plans} == {0, 1}
    by = {(p.cell, p.seed): p for p in plans}
    assert [by[(n, 0)].train.epochs for n in names] == [5, 5, 5, 20, 20, 20]
    assert all(p.train.lr == 1e-3 for p in plans)
    assert next(t for t in by[("mixup@20", 1)].techniques).alpha == 0.2
    assert next(t for t in by[("mixup@5", 1)].techniques).alpha != 0.2
    tags = by[("mixup@20", 1)].tags
    assert {k: tags[k] for k in (schema.SWEEP_KEY, schema.SWEEP_VALUE, schema.SWEEP_ARM, schema.SWEEP_REFERENCE,
                                 schema.BUDGET_UNIT)} == {
        "sweep_key": "epochs", "sweep_value": "20", "sweep_arm": "mixup", "sweep_reference": "baseline",
        "budget_unit": "epochs"}  # fmt: skip
    assert by[("baseline@5", 0)].params[schema.BUDGET_EPOCHS] == 5
    assert schema.BUDGET_TARGET_FLOPS not in by[("baseline@5", 0)].params  # equal epochs: no FLOPs target


def test_generic_sweep_sets_the_key_and_tags_it():
    grid = parse_grid(
        {"generate": "sweep", "techniques": ["mixup"], "reference": "label_smoothing",
         "sweep": {"key": "augment.max_rotate", "values": [0, 10.5]}, "defaults": {"augment": {"p_affine": 0.5}}},
        source="rot.toml",
    )  # fmt: skip
    assert [c.name for c in grid.cells] == ["label_smoothing@0", "mixup@0", "label_smoothing@10.5", "mixup@10.5"]
    plans = {p.cell: p.bind(INFO) for p in make_plans(grid, [0], _opts())}
    assert plans["mixup@10.5"].train.augment.max_rotate == 10.5
    assert plans["mixup@0"].train.augment.max_rotate == 0 and plans["mixup@0"].train.augment.p_affine == 0.5
    assert plans["label_smoothing@0"].technique_names == ("label_smoothing",)
    tags = plans["mixup@10.5"].tags
    assert (tags[schema.SWEEP_KEY], tags[schema.SWEEP_VALUE], tags[schema.SWEEP_REFERENCE]) == (
        "augment.max_rotate",
        "10.5",
        "label_smoothing",
    )
    assert schema.BUDGET_UNIT not in tags and schema.BUDGET_EPOCHS not in plans["mixup@0"].params


def test_progressive_budget_is_the_total_split_in_the_grids_proportions():
    assert budget.split_epochs(10, (5, 1, 4)) == (5, 1, 4)
    assert budget.split_epochs(5, (5, 1, 4)) == (2, 1, 2)  # every stage keeps an epoch
    assert budget.split_epochs(20, (5, 1, 4)) == (10, 2, 8)
    assert budget.split_epochs(7, (5, 0, 4)) == (4, 0, 3)  # tie (3.89 / 3.11): largest remainder
    with pytest.raises(budget.BudgetError, match="cannot train 3 stage"):
        budget.split_epochs(2, (5, 1, 4))
    grid = parse_grid(
        {"generate": "budget", "techniques": ["progressive"], "budgets": [5, 10, 40],
         "overrides": {f"progressive@{b}": {"epochs": 4, "progressive": {"initial_epochs": 5, "freeze_epochs": 1}}
                       for b in (5, 10, 40)}},
        source="p.toml",
    )  # fmt: skip
    plans = {p.cell: p for p in make_plans(grid, [0], _opts())}
    for b, (small, frozen, fine) in [(5, (2, 1, 2)), (10, (5, 1, 4)), (40, (20, 4, 16))]:
        (prog,) = plans[f"progressive@{b}"].techniques
        assert (prog.initial_epochs, prog.freeze_epochs, plans[f"progressive@{b}"].train.epochs) == (
            small,
            frozen,
            fine,
        )
        assert plans[f"baseline@{b}"].train.epochs == b


def test_flops_of_a_small_conv_net_against_a_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    n, conv, linear = 2, 2 * (3 * 3 * 3) * 4 * (6 * 6), 2 * (4 * 6 * 6) * 5
    # forward: conv + linear; backward: the linear's input and weight gradients, the conv's weight gradient only
    # (the image needs no gradient); ReLU, the bias add and the loss are not matmuls and count 0
    assert step_flops(model, n, 6) == n * (conv + linear) + n * (2 * linear + conv)


def test_equal_compute_gives_progressive_more_of_its_cheap_small_epochs():
    profile = Profile("p", "", train={"model": "xresnet18", "size": 32, "batch_size": 8},
                      techniques={"progressive": {"initial_size": 16, "initial_batch_size": 8}})  # fmt: skip
    grid = parse_grid(
        {"generate": "budget", "budget_unit": "flops", "techniques": ["progressive", "mixup"], "budgets": [10],
         "defaults": {"progressive": {"initial_epochs": 5, "freeze_epochs": 1}, "epochs": 4}},
        source="c.toml",
    )  # fmt: skip
    plans = {p.cell: p for p in equalise_compute([p.bind(INFO) for p in make_plans(grid, [0], _opts(profile))])}
    steps = steps_per_epoch(INFO["n_train"], 8)
    with torch.device("meta"):
        from sota_ablate.models import create_model

        model = create_model("xresnet18", n_out=10)
    full, small = step_flops(model, 8, 32, True), step_flops(model, 8, 16, True)
    target = 10 * steps * full  # the baseline's 10 epochs at 32 px
    # by hand: total E split 5:1:4 -> the largest E whose small epochs at 16 px + the rest at 32 px fit
    fits = [e for e in range(3, 100) if (lambda p: steps * (p[0] * small + (p[1] + p[2]) * full))(
        budget.split_epochs(e, (5, 1, 4))) <= target]  # fmt: skip
    best = max(fits)
    parts = budget.split_epochs(best, (5, 1, 4))
    prog = plans["progressive@10"]
    (tech,) = prog.techniques
    assert (tech.initial_epochs, tech.freeze_epochs, prog.train.epochs) == parts
    assert best > 10 and parts[0] > 5  # more of the cheap small epochs than at equal epochs
    assert prog.target_flops == target and prog.achieved_flops <= target
    assert prog.achieved_flops == steps * (parts[0] * small + (parts[1] + parts[2]) * full)
    mix = plans["mixup@10"]  # the same cost per epoch as the baseline: the same 10 epochs
    assert mix.train.epochs == 10 and mix.achieved_flops == target == plans["baseline@10"].achieved_flops
    assert prog.params[schema.BUDGET_TARGET_FLOPS] == target and prog.params[schema.BUDGET_EPOCHS] == best
    assert prog.tags[schema.BUDGET_UNIT] == "flops"
    # an arm whose reference is not selected still gets its target
    only = equalise_compute([p.bind(INFO) for p in make_plans(grid.select(["progressive@10"]), [0], _opts(profile))])
    assert [p.cell for p in only] == ["progressive@10"] and only[0].train == prog.train


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"budgets": []}, "budgets must be a non-empty list"),
        ({"budgets": [5, 5]}, "lists 5 more than once"),
        ({"budgets": [0, 5]}, "0 is not a budget"),
        ({"budgets": [2.5]}, "2.5 is not a budget"),
        ({"budget_unit": "minutes"}, "budget_unit = 'minutes'"),
        ({"reference": "mixup"}, "reference 'mixup' is also in techniques"),
        ({"techniques": ["mixpu"]}, "Did you mean 'mixup'"),
        ({"budget": [5]}, "unknown key 'budget'"),
        ({"generate": "sweep", "sweep": {"key": "lrr", "values": [1]}}, "Did you mean 'lr'"),
        ({"generate": "sweep", "sweep": {"key": "lr", "values": ["fast"]}}, "lr = 'fast'"),
        ({"generate": "sweep", "sweep": {"key": "lr", "values": [1], "step": 2}}, "unknown key 'step'"),
        ({"generate": "sweep"}, "needs a [sweep] table"),
        ({"generate": "one_at_a_time"}, "'budgets' needs generate"),
    ],
)
def test_bad_sweep_grids_are_refused_naming_the_file(extra, message):
    data = {**_budget_grid(), **extra}
    if data["generate"] == "sweep":
        data.pop("budgets")
    with pytest.raises(GridError, match=r"bad\.toml") as err:
        parse_grid(data, source="bad.toml")
    assert message in str(err.value)


def test_shipped_budget_grids():
    grid = load_grid(ROOT / "ablations" / "budget.toml")
    assert grid.seeds == (0, 1, 2) and grid.sweep is not None and grid.sweep.values == (5, 10, 20, 40)
    assert {c.sweep.arm for c in grid.cells if c.sweep} == {"baseline", "mixup", "label_smoothing"}
    compute = load_grid(ROOT / "ablations" / "chapter_compute.toml")
    opts = _opts(get_profile("quick"))
    quick = {**INFO, "n_train": 1000}  # the quick profile's 100 per class
    plans = {p.cell: p for p in equalise_compute([p.bind(quick) for p in make_plans(compute, [0], opts)])}
    assert len(plans) == 8 and plans["fp16@10"].total_epochs == plans["mixup@10"].total_epochs == 10
    (prog,) = plans["progressive@10"].techniques
    assert prog.initial_epochs > 5 and plans["progressive@10"].total_epochs > 10  # 40 px epochs are cheap
    assert all(p.achieved_flops <= p.target_flops == plans["baseline@10"].target_flops for p in plans.values())


def test_smoke_equal_compute_grid_lands_in_mlflow(image_folder, tmp_path):
    grid = tmp_path / "tiny.toml"
    grid.write_text('name = "tiny"\ngenerate = "budget"\ntechniques = ["label_smoothing"]\nbudgets = [1, 2]\n'
                    'budget_unit = "flops"\n')  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(image_folder), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--experiment", "bg", "--device", "cpu",
            "--cells", "baseline@1,label_smoothing@2"]  # fmt: skip
    assert main(args) == 0
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["bg"])
    parent = df[df["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert (parent["tags.sweep_key"], parent["tags.sweep_reference"], parent["tags.budget_unit"]) == (
        "epochs",
        "baseline",
        "flops",
    )
    cells = df[df["tags.mlflow.parentRunId"].notna()].set_index("tags.cell")
    assert sorted(cells.index) == ["baseline@1", "label_smoothing@2"] and set(cells["status"]) == {"FINISHED"}
    ls = cells.loc["label_smoothing@2"]
    assert (ls["tags.sweep_arm"], ls["tags.sweep_value"], ls["tags.budget_unit"]) == ("label_smoothing", "2", "flops")
    # its reference (baseline@2, not run) defined the target; the smoke profile's 1 epoch costs the same
    assert ls["params.budget.achieved_flops"] == ls["params.train_flops"] == ls["params.budget.target_flops"]
    assert cells.loc["baseline@1", "params.budget.target_flops"] == cells.loc["baseline@1", "params.train_flops"]
    assert ls["metrics.final_accuracy"] >= 0 and int(ls["params.optimizer_steps"]) > 0
    # the cells --cells left out are on the grid run, and the report says nothing speaks for them
    assert sorted(json.loads(parent[f"params.{schema.CELLS_LEFT_OUT}"])) == ["baseline@2", "label_smoothing@1"]
    out = tmp_path / "reports"
    assert main(["report", "--tracking-uri", uri, "--experiment", "bg", "--out", str(out), "--no-log"]) == 0
    text = (out / "tiny" / "README.md").read_text()
    assert "`run-grid --cells` left out `label_smoothing@1` and `baseline@2` of the grid file" in text
