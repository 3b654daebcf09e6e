"""Label noise (``train.label_noise``): the CSV's columns matched by path, seeded symmetric noise without it, clean
validation labels, the key in plans and grids, and what a cell run logs."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import torch
from scipy import stats

from sota_ablate.cli import main
from sota_ablate.config import ConfigError, TrainConfig, apply_overrides
from sota_ablate.data import DataConfig, DataError, load_data
from sota_ablate.data.noise import NOISY_CSV, SYMMETRIC_SEED, check_label_noise, symmetric_noise
from tests.conftest import WNIDS, make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def _data(folder: Path, tmp: Path):
    return load_data(
        DataConfig(source="folder", path=str(folder), presize=16, cache_dir=str(tmp / "cache"), workers=1), "cpu"
    )


def _write_csv(folder: Path, flip: dict[str, str], skip: str | None = None) -> None:
    """noisy_imagenette.csv for ``folder``: clean labels but ``flip`` (path -> wnid) in noisy_labels_25."""
    rows = []
    for split in ("train", "val"):
        for path in sorted((folder / split).glob("*/*.JPEG")):
            key = path.relative_to(folder).as_posix()
            if key == skip:
                continue
            clean = path.parent.name
            noisy = flip.get(key, clean)
            rows.append([key, clean, clean, clean, noisy, clean, str(split == "val")])
    with open(folder / NOISY_CSV, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", *[f"noisy_labels_{n}" for n in (0, 1, 5, 25, 50)], "is_valid"])
        writer.writerows(rows)


def test_csv_columns_map_by_path_and_validation_stays_clean(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", n_train=4, n_valid=2)
    flip = {f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG": WNIDS[2], f"train/{WNIDS[1]}/{WNIDS[1]}_3.JPEG": WNIDS[0]}
    _write_csv(folder, flip)
    data = _data(folder, tmp_path)
    assert data.noisy is not None and sorted(data.noisy.columns) == [0, 1, 5, 25, 50]
    noisy, info = data.with_label_noise(25)
    assert info["source"] == "csv column noisy_labels_25" and info["flipped"] == 2
    assert info["flip_fraction"] == pytest.approx(2 / 12)
    for path, label, clean in zip(
        data.train.paths, noisy.train.labels.tolist(), data.train.labels.tolist(), strict=True
    ):
        assert data.classes[label] == flip.get(path, data.classes[clean]), path
    assert noisy.valid is data.valid and torch.equal(noisy.train.images, data.train.images)
    assert torch.equal(data.with_label_noise(5)[0].train.labels, data.train.labels)  # this CSV's 5 % column is clean
    assert data.with_label_noise(0) == (data, {"source": "clean", "flipped": 0, "flip_fraction": 0.0})
    # The CSV is part of the data identity: other noisy labels, another digest.
    sha = data.info["label_noise_csv_sha256"]
    _write_csv(folder, {})
    assert _data(folder, tmp_path).info["label_noise_csv_sha256"] != sha


def test_unmatched_paths_are_named_before_training(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", n_train=2, n_valid=1)
    missing = f"train/{WNIDS[1]}/{WNIDS[1]}_0.JPEG"
    _write_csv(folder, {}, skip=missing)
    data = _data(folder, tmp_path)
    check_label_noise(data.noisy, [0])  # clean cells do not need the CSV
    with pytest.raises(DataError, match=r"1 of 6 training images are not in .*" + missing):
        check_label_noise(data.noisy, [0, 25])
    with pytest.raises(DataError, match="not in"):
        data.with_label_noise(25)


def test_symmetric_noise_flips_exactly_the_rate_deterministically() -> None:
    clean = torch.arange(1000) % 10
    noisy = symmetric_noise(clean, 10, 25)
    flipped = noisy != clean
    assert int(flipped.sum()) == 250  # exactly round(0.25 * 1000)
    assert torch.equal(noisy, symmetric_noise(clean, 10, 25))  # the same draw every time: a fixed seed
    torch.manual_seed(123)  # the global RNG (the cell's seed) plays no part
    assert torch.equal(noisy, symmetric_noise(clean, 10, 25))
    assert int((symmetric_noise(clean, 10, 5) != clean).sum()) == 50
    assert int((symmetric_noise(clean, 10, 1) != clean).sum()) == 10
    # a flipped label is uniform among the 9 other classes: the offsets (new - old) mod 10 are uniform on 1..9
    offsets = ((symmetric_noise(clean, 10, 50) - clean) % 10)[symmetric_noise(clean, 10, 50) != clean]
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0 and stats.chisquare(counts[1:].numpy()).pvalue > 0.001


def test_without_csv_noise_is_symmetric_and_logged(tmp_path: Path) -> None:
    data = _data(make_image_folder(tmp_path / "images", n_train=10, n_valid=1), tmp_path)
    assert data.noisy is None and "label_noise_csv" not in data.info
    noisy, info = data.with_label_noise(50)
    assert info == {"source": f"symmetric, seed {SYMMETRIC_SEED + 50}", "flipped": 15, "flip_fraction": 0.5}
    assert torch.equal(noisy.valid.labels, data.valid.labels)


def test_label_noise_is_a_validated_recipe_key() -> None:
    cfg = apply_overrides(TrainConfig(), {"label_noise": 25}, where="--set")
    cfg.validate()
    assert cfg.label_noise == 25
    with pytest.raises(ConfigError, match=r"label_noise = 7 .* one of 0, 1, 5, 25, 50"):
        apply_overrides(TrainConfig(), {"label_noise": 7}).validate()


def _grid(tmp: Path) -> Path:
    path = tmp / "noise.toml"
    path.write_text(
        'name = "noise"\nseeds = [0]\n\n[[cells]]\nname = "baseline"\ntechniques = []\n\n'
        '[[cells]]\nname = "noisy"\ntechniques = []\nlabel_noise = 25\n'
    )
    return path


def _run(folder: Path, tmp: Path, grid: Path, *extra: str) -> int:
    return main([
        "run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--device", "cpu",
        "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--cache-dir", str(tmp / "cache"), "--experiment", "noise",
        *extra,
    ])  # fmt: skip


def test_a_grid_cell_and_set_train_on_noisy_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_image_folder(tmp_path / "images", n_train=4, n_valid=2)
    assert _run(folder, tmp_path, _grid(tmp_path)) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["noise"])
    cells = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("tags.cell")
    assert cells.loc["baseline", "params.train.label_noise"] == "0"
    assert cells.loc["baseline", "params.label_noise.source"] == "clean"
    noisy = cells.loc["noisy"]
    assert noisy["params.train.label_noise"] == "25"
    assert noisy["params.label_noise.source"] == f"symmetric, seed {SYMMETRIC_SEED + 25}"
    assert noisy["params.label_noise.flipped"] == "3" and float(noisy["params.label_noise.flip_fraction"]) == 0.25
    assert noisy["tags.config_hash"] != cells.loc["baseline", "tags.config_hash"]
    assert "noisy: label noise 25 % (symmetric" in capsys.readouterr().out
    # the report: the book's (clean-label) numbers are no counterpart of the noisy cell, and it says so
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "reports"
    assert main(["report", "--tracking-uri", uri, "--experiment", "noise", "--out", str(out), "--no-log"]) == 0
    lines = (out / "noise" / "README.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| cell |") and "| published |" in line)
    column = [c.strip() for c in lines[header].split("|")].index("published")
    published = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.split("|")]
        published[cells[1].strip("*`")] = cells[column]
    assert published["noisy"] == "-" and published["baseline"] != "-", published
    assert (
        "No published number for `noisy`: trained with wrong training labels"
        in (out / "noise" / "README.md").read_text()
    )
    # --set overrides every cell, and a level that is not a noise level is refused before any run
    assert _run(folder, tmp_path, _grid(tmp_path), "--set", "label_noise=7", "--force") == 2
    assert "label_noise = 7" in capsys.readouterr().err


def test_the_label_noise_sweep_grid() -> None:
    from sota_ablate.grid import load_grid

    grid = load_grid(str(ROOT / "ablations" / "label_noise.toml"))
    names = {c.name for c in grid.cells}
    arms, levels = ("baseline", "label_smoothing", "mixup"), (0, 5, 25, 50)
    assert names == {f"{arm}@{level}" for arm in arms for level in levels}
    assert {c.overrides.get("label_noise") for c in grid.cells} == set(levels)
    assert list(grid.seeds) == [0, 1, 2]
