"""``report --all-seeds`` averages only runs that differ in the seed alone, and says which it left out and why."""

from __future__ import annotations

from pathlib import Path

from conftest import make_image_folder

from sota_ablate.cli import main
from sota_ablate.report.collect import collect_grid
from sota_ablate.tracking import Tracker


def test_all_seeds_leaves_out_runs_with_another_config(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = ["run-grid", "--profile", "smoke", "--grid", "chapter", "--cells", "baseline", "--data", str(folder),
            "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main([*base, "--seeds", "0", "--set", "lr=1e-3"]) == 0
    assert main([*base, "--seeds", "1", "--set", "lr=3e-3"]) == 0
    assert main([*base, "--seeds", "2", "--set", "lr=3e-3"]) == 0
    data = collect_grid(Tracker(uri, "sota_ablate"), all_seeds=True)
    assert data.seeds == [1, 2]  # seed 0 trained at another lr: not a seed of the same recipe
    assert sorted(data.values("baseline", "metrics.final_accuracy")) == [1, 2]
    left_out = [n for n in data.notes if "left out of the aggregation" in n]
    assert len(left_out) == 1 and "`train.lr`" in left_out[0] and "0.001" in left_out[0]
