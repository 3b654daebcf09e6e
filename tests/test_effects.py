"""What each technique is worth: matched pairs of cells, on hand-made grids and on a real factorial smoke grid."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from sota_ablate.cli import main
from sota_ablate.report import effects, stats, tables
from sota_ablate.report.collect import GridData
from sota_ablate.report.generate import generate_report
from sota_ablate.tracking import Tracker

STAGES = [{"name": "train", "epochs": 2, "size": 32, "batch_size": 8}]
LONG = [{"name": "train", "epochs": 6, "size": 32, "batch_size": 8}]


def _grid(cells: dict[str, tuple[str, list[float]]], tta: dict[str, list[float]] | None = None, stages=None):
    """GridData with one complete run per (cell, seed): cell -> (techniques tag, accuracy per seed)."""
    rows = []
    for cell, (techniques, accs) in cells.items():
        for seed, acc in enumerate(accs):
            rows.append(
                {
                    "run_id": f"{cell}-{seed}",
                    "cell": cell,
                    "seed": seed,
                    "techniques": techniques,
                    "state": "complete" if acc is not None else "failed",
                    "metrics.final_accuracy": acc,
                    "metrics.tta_accuracy": (tta or {}).get(cell, [math.nan] * len(accs))[seed],
                    "metrics.wall_time_s": 20.0 if "mixup" in techniques else 10.0,
                    "params.stages": (stages or {}).get(cell, STAGES),
                    "params.train.epochs": 2,
                }
            )
    seeds = sorted({r["seed"] for r in rows})
    parents = pd.DataFrame([{"run_id": "parent"}])
    return GridData("toy", parents, pd.DataFrame(rows), list(cells), seeds, {})


def test_one_at_a_time_is_each_technique_alone_and_tta_counts_its_tta_accuracy():
    data = _grid(
        {
            "baseline": ("none", [0.50, 0.52, 0.54]),
            "tta": ("tta", [0.50, 0.52, 0.54]),  # trains exactly as the baseline: same plain accuracy
            "mixup": ("mixup", [0.55, 0.58, 0.58]),
            "all": ("tta,mixup", [0.60, 0.60, 0.61]),
        },
        tta={"tta": [0.53, 0.53, 0.56], "all": [0.62, 0.61, 0.63]},
        stages={"mixup": LONG, "all": LONG},
    )
    found = {e.technique: e for e in effects.technique_effects(data)}
    assert [e.technique for e in effects.technique_effects(data)] == ["tta", "mixup"]  # registry order
    tta = found["tta"]
    # tta alone (baseline -> tta) and tta on top of mixup (mixup -> all): a main effect over 2 pairs
    assert tta.pairs == (("baseline", "tta"), ("mixup", "all"))
    per_seed = [
        ((0.53 - 0.50) + (0.62 - 0.55)) / 2,
        ((0.53 - 0.52) + (0.61 - 0.58)) / 2,
        ((0.56 - 0.54) + (0.63 - 0.58)) / 2,
    ]
    expected = stats.summarize(per_seed)
    assert tta.accuracy.delta == pytest.approx(expected.mean)
    assert (tta.accuracy.ci_low, tta.accuracy.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    assert tta.accuracy.method == "paired" and tta.accuracy.n == 3 and tta.seeds == (0, 1, 2)
    assert tta.equal_budget and tta.context.startswith("main effect, mean over 2 pairs")
    mixup = found["mixup"]
    assert mixup.pairs == (("baseline", "mixup"), ("tta", "all"))  # all uses tta: both sides of that pair do
    assert not mixup.equal_budget  # baseline 2 epochs, mixup 6
    assert mixup.time_ratio == pytest.approx(2.0)
    table = effects.effects_markdown(list(found.values()))
    assert "⚠ differs" in table and "2.00x" in table and "confounded by the longer schedule" in table
    assert any("epochs differ within the pairs of `mixup`" in n for n in effects.effect_notes(list(found.values())))


def test_a_single_pair_alone_is_labelled_and_significance_decides_the_verdict():
    data = _grid({"baseline": ("none", [0.50, 0.52, 0.51]), "label_smoothing": ("label_smoothing", [0.60, 0.63, 0.61])})
    (e,) = effects.technique_effects(data)
    assert e.context == "alone: `label_smoothing` vs `baseline`"
    expected = stats.paired_difference([0.60, 0.63, 0.61], [0.50, 0.52, 0.51])
    assert (e.accuracy.delta, e.accuracy.ci_low, e.accuracy.ci_high) == pytest.approx(
        (expected.delta, expected.ci_low, expected.ci_high)
    )
    assert "**helps**" in effects.effects_markdown([e])
    noisy = _grid({"baseline": ("none", [0.50, 0.60, 0.40]), "fp16": ("fp16", [0.52, 0.55, 0.45])})
    (e,) = effects.technique_effects(noisy)
    assert e.accuracy.has_ci and not e.accuracy.significant
    assert "inconclusive" in effects.effects_markdown([e])
    one_seed = _grid({"baseline": ("none", [0.5]), "normalize": ("normalize", [0.6])})
    (e,) = effects.technique_effects(one_seed)
    assert not e.accuracy.has_ci and "one seed: unknown" in effects.effects_markdown([e])


def test_leave_one_out_measures_inside_the_full_recipe_and_the_reference_is_all():
    full = "normalize,mixup,label_smoothing"
    data = _grid(
        {
            "all": (full, [0.70, 0.72]),
            "no_normalize": ("mixup,label_smoothing", [0.69, 0.72]),
            "no_mixup": ("normalize,label_smoothing", [0.64, 0.66]),
            "no_label_smoothing": ("normalize,mixup", [0.66, 0.69]),
        }
    )
    assert tables.find_baseline(data) is None and tables.find_reference(data) == "all"
    found = {e.technique: e for e in effects.technique_effects(data)}
    assert set(found) == {"normalize", "mixup", "label_smoothing"}
    assert found["mixup"].pairs == (("no_mixup", "all"),)
    assert found["mixup"].context == "in the full recipe: `all` vs `no_mixup`"
    assert found["mixup"].accuracy.delta == pytest.approx(0.06)
    assert found["normalize"].accuracy.delta == pytest.approx(0.005)
    summary = tables.summary_markdown(tables.cell_summary(data, "all"), "all")
    assert "Δ vs `all` [95% CI]" in summary and "(reference)" in summary


def test_failed_cells_are_left_out_and_a_grid_without_pairs_has_no_effects():
    data = _grid({"baseline": ("none", [0.5, 0.5]), "mixup": ("mixup", [None, None])})
    assert effects.technique_effects(data) == []
    assert effects.technique_effects(_grid({"mixup": ("mixup", [0.6]), "fp16": ("fp16", [0.5])})) == []


# ---------------------------------------------------------------------------------------------------------------
# A real factorial grid (2 techniques x 2 seeds, smoke profile) through MLflow and the report


FACTORIAL = """
name = "tiny_factorial"
description = "normalize x label_smoothing"
seeds = [0, 1]
generate = "factorial"
techniques = ["normalize", "label_smoothing"]
"""


def test_factorial_grid_report_has_main_effects(tmp_path: Path):
    from tests.conftest import make_image_folder

    grid = tmp_path / "tiny_factorial.toml"
    grid.write_text(FACTORIAL)
    folder = make_image_folder(tmp_path / "images")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--experiment", "fx", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    readme = generate_report(Tracker(uri, "fx"), out_dir=tmp_path / "reports", log_to_mlflow=False)
    text = readme.read_text()
    section = text.split("## What each technique is worth", 1)[1].split("\n## ", 1)[0]
    effects_table = section.split("\n\n")[2]  # intro, table; then the notes and the per-image table
    rows = [line for line in effects_table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `(\w+)`", r).group(1) for r in rows] == ["normalize", "label_smoothing"]
    assert all("main effect, mean over 2 pairs of cells" in r for r in rows)
    interval = r"[+-]\d+\.\d\d pts (\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]|\(identical on every seed\))"
    assert all(re.search(interval, r) for r in rows)  # 2 seeds: a CI, or no spread (never a zero-width interval)
    assert "Here every effect is a main effect" in section
    verdict = text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "(verdict_forest.png)" in verdict and (readme.parent / "verdict_forest.png").stat().st_size > 5000
    assert "(cost_vs_effect.png)" in section and "Per-image view" in section
    titles = re.findall(r"^## (.+)$", text, flags=re.M)
    assert "Imagenette baseline" in titles and "Normalization" in titles and "Label smoothing" in titles
    assert "Mixup" not in titles and "Progressive resizing" not in titles  # no such cell: one note instead
    assert "Chapter steps not in this grid" in titles
    assert "Progressive resizing, Test time augmentation, Mixup" in text


def test_only_cells_that_train_alike_are_drawn_once():
    """tta trains as the baseline (same recipe and stages); baseline@10 trains 10 epochs, not as baseline@5."""
    from sota_ablate.report.overview import distinct_training

    data = _grid(
        {"baseline": ("none", [0.5, 0.5]), "tta": ("tta", [0.5, 0.5]), "baseline@10": ("none", [0.6, 0.6])},
        stages={"baseline@10": LONG},
    )
    drawn, labels, note = distinct_training(data)
    assert drawn == ["baseline", "baseline@10"] and labels["baseline"] == "baseline = tta"
    assert "`tta` trains exactly as `baseline`" in note and "baseline@10" not in note
