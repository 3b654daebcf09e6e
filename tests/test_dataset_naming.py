"""Datasets named from their identity: Imagenette and Imagewoof by their WordNet ids, any other by its folder; the
report's titles, published numbers and class names follow."""

from __future__ import annotations

from pathlib import Path

from sota_ablate.cli import main
from sota_ablate.data import DataConfig, load_data
from sota_ablate.data.names import IMAGEWOOF_NAMES, class_names, dataset_name
from tests.conftest import WNIDS, make_image_folder

WOOF = ["n02086240", "n02099601", "n02115641"]  # Shih-Tzu, golden retriever, dingo


def _renamed(root: Path, names: list[str]) -> Path:
    """``make_image_folder`` with its class folders renamed to ``names``."""
    make_image_folder(root, n_train=4, n_valid=2)
    for split in ("train", "val"):
        for old, new in zip(WNIDS, names, strict=True):
            (root / split / old).rename(root / split / new)
    return root


def _folder(path: str) -> DataConfig:
    return DataConfig(source="folder", path=path)


def test_names_from_class_ids_else_the_folder(tmp_path: Path) -> None:
    assert dataset_name(WOOF, _folder(str(tmp_path / "woof"))) == "Imagewoof"
    assert dataset_name(WNIDS, _folder(str(tmp_path / "x"))) == "Imagenette"  # a subset of its classes
    assert dataset_name(sorted(IMAGEWOOF_NAMES), _folder("/data/imagewoof2-320")) == "Imagewoof"
    assert dataset_name(["cat", "dog"], _folder(str(tmp_path / "pets") + "/")) == "pets"
    assert dataset_name([*WOOF, "n01440764"], _folder(str(tmp_path / "mixed"))) == "mixed"  # neither dataset
    assert dataset_name(WNIDS, DataConfig()) == "Imagenette"
    assert class_names(WOOF) == {"n02086240": "Shih-Tzu", "n02099601": "golden retriever", "n02115641": "dingo"}
    assert class_names(["cat", "n02086240"]) == {"cat": "cat", "n02086240": "n02086240"}  # no known dataset


def test_the_data_info_names_a_folder_of_any_classes(tmp_path: Path) -> None:
    folder = _renamed(tmp_path / "insects", ["ant", "bee", "wasp"])
    data = load_data(DataConfig(source="folder", path=str(folder), presize=16, cache_dir=str(tmp_path / "c")), "cpu")
    assert data.info["dataset"] == "insects" and data.classes == ["ant", "bee", "wasp"]


def test_the_report_names_the_dataset(tmp_path: Path) -> None:
    name = "Imagewoof"
    folder = _renamed(tmp_path / "woof", WOOF)
    grid = tmp_path / "g.toml"
    grid.write_text('name = "named"\nseeds = [0]\n\n[[cells]]\nname = "baseline"\ntechniques = []\n')
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--tracking-uri", uri, "--experiment", "named"]
    assert main(["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache"), *args]) == 0  # fmt: skip
    assert main(["report", *args, "--out", str(tmp_path / "reports"), "--no-log"]) == 0
    text = (tmp_path / "reports" / "named" / "README.md").read_text()
    assert f"## {name} baseline" in text and "Imagenette baseline" not in text
    assert f"- Data: {name}, 12 training / 6 validation images" in text
    assert f"**Not Imagenette.** The data is {name} (3 classes" in text
    assert "Not full-size Imagenette" not in text and "| published |" not in text and "Published:" not in text
    assert "chapter's printed number" not in text and "black cross: the book's effect" not in text
