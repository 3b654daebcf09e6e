"""Grid files: generators, overrides, seeds, and the errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sota_ablate.config import ConfigError, TrainConfig
from sota_ablate.grid import Cell, Grid, GridError, builtin_grids, find_grid, generate_cells, load_grid, parse_grid
from sota_ablate.plan import resolve_cell as plan_cell
from sota_ablate.profiles import Profile

ROOT = Path(__file__).resolve().parents[1]
SIX = ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"]
BARE = Profile("bare", "no overrides: the TrainConfig defaults")


def resolve_cell(cell: Cell, base: TrainConfig, techniques: dict | None = None, grid: Grid | None = None):
    """A cell resolved on top of the code defaults (``base`` must be them) and the given technique settings."""
    assert base == TrainConfig()
    profile = Profile("bare", "", techniques=techniques or {})
    return plan_cell(cell, grid or Grid("g", (cell,), source="<test>"), profile, {}, 1.0)


def resolve_all(grid: Grid) -> None:
    for cell in grid.cells:
        resolve_cell(cell, TrainConfig(), grid=grid)


def test_generators():
    cells = generate_cells("one_at_a_time", SIX)
    assert [c.name for c in cells] == ["baseline", *SIX, "all"]
    assert cells[0].techniques == () and cells[-1].techniques == tuple(SIX)
    loo = generate_cells("leave_one_out", SIX)
    assert len(loo) == 7 and loo[1].name == "no_fp16" and "fp16" not in loo[1].techniques
    fact = generate_cells("factorial", ["a", "b", "c"])
    assert len(fact) == 8 and fact[0].name == "baseline" and fact[-1].name == "a+b+c"
    assert [c.name for c in generate_cells("all", SIX)] == ["all"]


def test_chapter_grid_recipes():
    grid = load_grid(ROOT / "ablations" / "chapter.toml")
    assert [c.name for c in grid.cells] == ["baseline", *SIX, "all"]
    by_name = {c.name: c for c in grid.cells}
    base = TrainConfig()
    cfg, techs = resolve_cell(by_name["baseline"], base)
    assert (cfg.epochs, cfg.size, cfg.batch_size, cfg.lr, techs) == (5, 224, 64, 3e-3, [])
    cfg, techs = resolve_cell(by_name["mixup"], base)
    assert cfg.epochs == 15 and [t.name for t in techs] == ["mixup"]
    cfg, techs = resolve_cell(by_name["progressive"], base, {"progressive": {"initial_size": 128}})
    (prog,) = techs
    assert (prog.initial_epochs, prog.initial_size, prog.fine_tune_lr, cfg.epochs) == (4, 128, 1e-3, 5)
    cfg, techs = resolve_cell(by_name["all"], base)
    assert cfg.epochs == 10 and {t.name for t in techs} == set(SIX)
    assert next(t for t in techs if t.name == "progressive").initial_epochs == 15


@pytest.mark.parametrize("name", ["chapter", "fair", "leave_one_out", "factorial"])
def test_shipped_grids_load(name):
    grid = load_grid(ROOT / "ablations" / f"{name}.toml")
    assert grid.cells and grid.seeds


def test_fair_grid_has_equal_epoch_budgets():
    grid = load_grid(ROOT / "ablations" / "fair.toml")
    for cell in grid.cells:
        cfg, techs = resolve_cell(cell, TrainConfig())
        prog = [t for t in techs if t.name == "progressive"]
        total = cfg.epochs + (prog[0].initial_epochs + prog[0].freeze_epochs if prog else 0)
        assert total == 10, cell.name


def test_overrides_and_seeds():
    grid = parse_grid(
        {
            "name": "g",
            "seeds": [0, 1, 2],
            "generate": "one_at_a_time",
            "techniques": ["mixup"],
            "defaults": {"epochs": 3, "mixup": {"alpha": 0.2}, "augment": {"max_rotate": 0}},
            "overrides": {"mixup": {"epochs": 7}},
        }
    )
    assert grid.seeds == (0, 1, 2)
    by_name = {c.name: c for c in grid.cells}
    cfg, techs = resolve_cell(by_name["mixup"], TrainConfig())
    assert cfg.epochs == 7 and techs[0].alpha == 0.2 and cfg.augment.max_rotate == 0.0
    cfg, techs = resolve_cell(by_name["baseline"], TrainConfig())
    assert cfg.epochs == 3 and techs == []


def test_generators_respect_techniques_that_cannot_be_combined():
    from sota_ablate.techniques import TECHNIQUES

    batch = sorted(n for n, cls in TECHNIQUES.entries().items() if "batch" in cls.claims)
    if len(batch) < 2:
        pytest.skip("only one technique claims the batch")
    names = [c.name for c in generate_cells("factorial", [*batch[:2], "normalize"])]
    assert "+".join(batch[:2]) not in names and len(names) == 6  # 8 subsets minus the two with both
    with pytest.raises(GridError, match="cannot be combined"):
        generate_cells("leave_one_out", batch[:2])


def test_select_cells():
    grid = load_grid(ROOT / "ablations" / "chapter.toml")
    assert [c.name for c in grid.select(["mixup", "baseline"]).cells] == ["baseline", "mixup"]
    with pytest.raises(GridError, match=r"unknown cell 'mixpu'.*Did you mean 'mixup'"):
        grid.select(["mixpu"])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name = 'x'\n[[cells]]\nname = 'a'\ntechniques = ['mixpu']\n", r"unknown technique 'mixpu'.*Known techniques"),
        ("name = 'x'\nseedz = [1]\n[[cells]]\nname = 'a'\n", r"unknown key 'seedz'.*Did you mean 'seeds'"),
        ("name = 'x'\n[[cells]]\nname = 'a'\nlr = -1.0\n", r"lr = -1.0 is out of range"),
        ("name = 'x'\n[[cells]]\nname = 'a'\nsize = 0\n", r"size = 0 is out of range"),
        ("name = 'x'\n[[cells]]\nname = 'a'\nepochs = 'five'\n", r"epochs = 'five'.*wrong type"),
        ("name = 'x'\n[[cells]]\nname = 'a'\nlrr = 1e-3\n", r"unknown setting 'lrr'.*Did you mean 'lr'"),
        (
            "name = 'x'\n[[cells]]\nname = 'a'\ntechniques = ['label_smoothing']\nlabel_smoothing = {eps = 1.5}\n",
            r"label_smoothing.eps = 1.5 is out of range",
        ),
        ("name = 'x'\n[[cells]]\nname = 'a'\nmixup = {alpha = 0.2}\n", r"not among its techniques"),
        ("name = 'x'\n", r"no cells"),
        ("name = 'x'\nseeds = []\n[[cells]]\nname = 'a'\n", r"seeds must be a non-empty list"),
        ("name = 'x'\ngenerate = 'everything'\n", r"unknown generator 'everything'"),
    ],
)
def test_bad_grid_files(tmp_path, text, pattern):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises((GridError, KeyError, ValueError), match=pattern) as err:
        resolve_all(load_grid(p))
    assert "bad.toml" in str(err.value)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("name = 'x'\n\n[[cells]\nname = 'a'\n")
    with pytest.raises(GridError) as err:
        load_grid(p)
    assert "broken.toml" in str(err.value) and "line 3" in str(err.value)


def test_missing_grid_file():
    with pytest.raises(GridError, match="neither a file nor a built-in grid"):
        load_grid("nope/none.toml")


def test_builtin_grids_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(builtin_grids()) >= {"chapter", "fair", "leave_one_out", "factorial"}
    assert load_grid("chapter").name == "chapter"
    assert find_grid("fair.toml") == builtin_grids()["fair"]
    with pytest.raises(GridError, match=r"Did you mean 'chapter'.*chapter, "):
        load_grid("chaptr")


def test_ablations_folder_is_the_package_grids():
    """One source: the checkout's ablations/ is the package's grids folder, not a copy that can drift."""
    assert (ROOT / "ablations").resolve() == (ROOT / "sota_ablate" / "grids").resolve()


def test_command_line_overrides_come_last_and_are_checked():
    grid = load_grid("chapter")
    mixup = next(c for c in grid.cells if c.name == "mixup")
    cfg, _ = plan_cell(mixup, grid, Profile("p", "", train={"lr": 1e-2, "epochs": 2}), {"lr": 5e-4}, 1.0)
    assert (cfg.lr, cfg.epochs) == (5e-4, 15)  # profile < grid defaults (lr 3e-3) < cell (15 epochs) < --set
    with pytest.raises(ConfigError, match=r"from --set"):
        plan_cell(mixup, grid, BARE, {"lr": -1.0}, 1.0)


def test_cells_that_both_replace_the_batch_are_refused():
    from sota_ablate.techniques import TECHNIQUES

    both = [n for n, cls in TECHNIQUES.entries().items() if "batch" in cls.claims]
    assert "mixup" in both
    if len(both) < 2:
        pytest.skip("only one technique claims the batch")
    grid = parse_grid({"name": "g", "cells": [{"name": "x", "techniques": both[:2]}]}, source="g.toml")
    with pytest.raises(GridError, match=r"g.toml: cell .x.*cannot be combined.*batch") as err:
        resolve_all(grid)
    assert f"'{both[0]}'" in str(err.value) and f"'{both[1]}'" in str(err.value)


def test_progressive_must_start_smaller_than_the_recipe_size():
    grid = load_grid("fair")
    progressive = next(c for c in grid.cells if c.name == "progressive")
    profile = Profile("p", "", train={"size": 32}, techniques={"progressive": {"initial_size": 40}})
    with pytest.raises(GridError, match=r"cell 'progressive'.*initial_size = 40 is not smaller than.*size = 32.*lower"):
        plan_cell(progressive, grid, profile, {}, 1.0)
    with pytest.raises(GridError, match=r"initial_size = 40 is not smaller than the recipe's size = 40"):
        plan_cell(progressive, grid, profile, {"size": 40}, 1.0)
    cfg, _ = plan_cell(progressive, grid, profile, {"size": 64}, 1.0)
    assert cfg.size == 64
