"""Issue 17's lower-severity set, as a hostile but realistic user makes it: unusual image files and folders, store
edge cases, damaged caches. Each either works (as the README says) or is one clear ``error:`` naming the file and
the fix, before any training; never a traceback, a hang or silently wrong labels. Unit-level calls of the
listing, the cache and the tracker, plus one smoke training (a store with only a failed run) for the store cases.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from sota_ablate.cli import main
from sota_ablate.data import _decode
from sota_ablate.data.cache import build_cache
from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError
from sota_ablate.data.loader import load_data
from sota_ablate.data.sources import list_items, relative_key
from sota_ablate.tracking import Tracker, TrackingError, check_store_file
from tests.conftest import WNIDS, make_image_folder

W = WNIDS[0]


def _image(path: Path, size: tuple[int, int] = (40, 52), mode: str = "RGB", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image = image if mode == "RGB" else image.convert(mode)
    image.save(path, format=fmt)
    return path


def _cfg(root: Path, cache: Path, **kw: object) -> DataConfig:
    return DataConfig(source="folder", path=str(root), presize=32, cache_dir=str(cache), workers=1, **kw)  # type: ignore[arg-type]


def _labels(items: list[tuple[str, int]], root: Path) -> dict[str, int]:
    return {relative_key(path, root): label for path, label in items}


# ---------------------------------------------------------------------------------------------------------------
# 1. Unusual image files and folders: the listing (each case adds to a generated 3-class folder)


def _outside(root: Path) -> Path:
    return root.parent / "outside"


def _linked_class_and_file(root: Path) -> None:
    for name in ("t/1.JPEG", "t/2.JPEG", "v/1.JPEG", "f.JPEG"):
        _image(_outside(root) / name, fmt="JPEG")
    os.symlink(_outside(root) / "t", root / "train" / "nlinked")
    os.symlink(_outside(root) / "v", root / "val" / "nlinked")
    os.symlink(_outside(root) / "f.JPEG", root / "train" / W / "link.JPEG")


def _one_class_folder_in_both_splits(root: Path) -> None:
    _image(_outside(root) / "c" / "1.JPEG")
    for split in ("train", "val"):
        os.symlink(_outside(root) / "c", root / split / "nlinked")


WORKS: dict[str, tuple[Callable[[Path], object], dict[str, int], int]] = {
    # case: (make it, {relative path: label} that must be listed, number of training images)
    "non-images ignored": (
        lambda r: [(r / "train" / W / n).write_bytes(b"junk") for n in ("a.txt", ".DS_Store", "Thumbs.db", "._b.JPEG")],
        {},
        15,
    ),
    "upper-case extensions": (
        lambda r: [_image(r / "train" / W / n, fmt="JPEG") for n in ("a.JPG", "b.Jpeg", "c.PNG")],
        {f"train/{W}/a.JPG": 0, f"train/{W}/b.Jpeg": 0, f"train/{W}/c.PNG": 0},
        18,
    ),
    "non-ASCII and spaces": (
        lambda r: [_image(r / s / "class é 1" / "ü x.JPEG", fmt="JPEG") for s in ("train", "val")],
        {"train/class é 1/ü x.JPEG": 0, f"train/{W}/{W}_0.JPEG": 1},  # "class é 1" sorts first: label 0
        16,
    ),
    "nested sub-folders: labelled by the class folder": (
        lambda r: _image(r / "train" / W / "sub" / "deeper" / "n.JPEG", fmt="JPEG"),
        {f"train/{W}/sub/deeper/n.JPEG": 0},
        16,
    ),
    "symlinked file and class folder (distinct targets)": (
        _linked_class_and_file,
        {"train/nlinked/1.JPEG": 3, "train/nlinked/2.JPEG": 3, f"train/{W}/link.JPEG": 0},
        18,
    ),
    "symlink loop walked once": (lambda r: os.symlink(r / "train" / W, r / "train" / W / "loop"), {}, 15),
    "image directly in train/: ignored": (lambda r: _image(r / "train" / "stray.JPEG", fmt="JPEG"), {}, 15),
}


@pytest.mark.parametrize("case", list(WORKS))
def test_unusual_folders_that_work(case: str, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    make, expected, n_train = WORKS[case]
    make(root)
    items = list_items(_cfg(root, tmp_path / "cache"))
    labels = _labels(items.train, root)
    assert len(items.train) == n_train and len(items.valid) >= 9
    assert {k: labels.get(k) for k in expected} == expected
    assert len(set(map(os.path.realpath, (p for p, _ in items.train + items.valid)))) == len(items.train + items.valid)


REFUSED: dict[str, tuple[Callable[[Path], object], str]] = {
    # case: (make it, what the error must say)
    "empty class folder": (lambda r: [(r / s / "nzzz").mkdir() for s in ("train", "val")], "nzzz has no images"),
    "class only in train": (lambda r: _image(r / "train" / "nzzz" / "a.JPEG"), "only in train: ['nzzz']"),
    "class only in val": (lambda r: _image(r / "val" / "nzzz" / "a.JPEG"), "only in val: ['nzzz']"),
    "missing val/": (lambda r: shutil.rmtree(r / "val"), "has no val/ folder"),
    "--data is a file": (lambda r: None, "is a file, not a folder"),
    "broken symlink": (lambda r: os.symlink(r / "gone.JPEG", r / "train" / W / "x.JPEG"), "x.JPEG is a broken"),
    "FIFO named .JPEG (would hang)": (lambda r: os.mkfifo(r / "train" / W / "p.JPEG"), "p.JPEG has an image name"),
    "one file in two classes": (
        lambda r: os.symlink(r / "train" / W / f"{W}_1.JPEG", r / "train" / WNIDS[1] / "dup.JPEG"),
        "are the same file",
    ),
    "one class folder in train/ and val/": (_one_class_folder_in_both_splits, "in both train/ and val/"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unusual_folders_refused_by_name(case: str, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images")
    make, says = REFUSED[case]
    make(root)
    path = root / "train" / W / f"{W}_0.JPEG" if case == "--data is a file" else root
    with pytest.raises(DataError) as err:
        list_items(_cfg(path, tmp_path / "cache"))
    assert says in str(err.value), str(err.value)
    assert ": " in str(err.value)  # the problem, then the fix


def test_unusual_image_files_decode_or_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """RGBA, greyscale, CMYK, 16-bit PNG, 1x1 and very wide images decode; zero-byte, truncated, corrupt and
    floating-point images are skipped with a warning naming them (up to max_bad_fraction)."""
    root = make_image_folder(tmp_path / "images", n_train=12)
    folder = root / "train" / W
    for name, mode in (("rgba.png", "RGBA"), ("gray.jpg", "L"), ("cmyk.jpg", "CMYK"), ("pal.gif", "P")):
        _image(folder / name, mode=mode)
    grey = (np.arange(52 * 40).reshape(52, 40) % 256).astype(np.uint8)
    Image.fromarray(grey).save(folder / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "g16.png")  # PIL mode I;16
    _image(folder / "one.png", size=(1, 1))
    _image(folder / "wide.png", size=(2000, 20))
    (folder / "zero.JPEG").write_bytes(b"")
    (folder / "corrupt.JPEG").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 2)
    truncated = folder / f"{W}_1.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:200])
    Image.fromarray(grey.astype(np.float32) / 255).save(folder / "float.tif")  # PIL mode F
    with caplog.at_level(logging.WARNING):
        data = load_data(_cfg(root, tmp_path / "cache", max_bad_fraction=0.1), "cpu")
    assert data.info["bad_images"] == 4 and data.info["n_train"] == 36 + 8 - 1  # 8 good added, 1 truncated
    warned = caplog.text
    for name in ("zero.JPEG", "corrupt.JPEG", f"{W}_1.JPEG", "float.tif (ValueError: a 32-bit floating-point"):
        assert name in warned, name
    assert np.array_equal(
        _decode.decode(str(folder / "g16.png"), 40, 52), _decode.decode(str(folder / "g8.png"), 40, 52)
    )
    assert data.info["canvas"] == 48  # the wide image is squashed to presize * max_aspect


# ---------------------------------------------------------------------------------------------------------------
# 3. Damaged caches: rebuilt once with a warning, then a plain hit


DAMAGE: dict[str, Callable[[Path], object]] = {
    "meta.json missing": lambda k: (k / "meta.json").unlink(),
    "meta.json garbage": lambda k: (k / "meta.json").write_bytes(b"\xf7\x00garbage"),
    "meta.json truncated": lambda k: (k / "meta.json").write_text((k / "meta.json").read_text()[:40]),
    "images.npy is a folder": lambda k: ((k / "images.npy").unlink(), (k / "images.npy").mkdir()),
    "the cache is a file": lambda k: (shutil.rmtree(k), k.write_text("x")),
    "the cache is a broken symlink": lambda k: (shutil.rmtree(k), os.symlink(k.parent / "gone", k)),
}


@pytest.fixture(scope="module")
def small_items(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, int]], Path]:
    root = make_image_folder(tmp_path_factory.mktemp("cache_images"), n_train=3, n_valid=1)
    items = list_items(_cfg(root, root / "unused"))
    return items.train + items.valid, root


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_rebuilt_once(damage: str, small_items, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    items, root = small_items
    cfg = _cfg(root, tmp_path / "cache")
    first = build_cache(items, cfg, root)
    DAMAGE[damage](first.folder)
    with caplog.at_level(logging.WARNING):
        repaired = build_cache(items, cfg, root)
    assert repaired.rebuilt and not repaired.hit and "rebuilding it" in caplog.text
    assert np.array_equal(repaired.images.numpy(), first.images.numpy())
    again = build_cache(items, cfg, root)
    assert again.hit and not again.rebuilt  # stays repaired


def test_stale_build_folders_are_removed(small_items, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    items, root = small_items
    cfg = _cfg(root, tmp_path / "cache")
    key = build_cache(items, cfg, root).folder
    killed = key.parent / f".{key.name}.tmp-killed"  # a killed build: its lock file is there, nobody holds it
    killed.mkdir()
    (killed / ".lock").write_text("12345\n")
    (killed / "images.npy").write_bytes(b"\0" * 1000)
    old = key.parent / f".{key.name}.tmp-old"  # killed before it took its lock, over an hour ago
    old.mkdir()
    os.utime(old, (0, 0))
    with caplog.at_level(logging.WARNING):
        assert build_cache(items, cfg, root).hit
    assert not killed.exists() and not old.exists() and "removed 2 temporary folder(s)" in caplog.text


def test_cache_folder_that_cannot_be_written(small_items, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    items, root = small_items
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match=r"cannot write the image cache under .*a_file.*--cache-dir"):
        build_cache(items, _cfg(root, tmp_path / "a_file"), root)
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only cache folder (chmod 555) does not stop root's writes")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(DataError, match="cannot write the image cache"):
        build_cache(items, _cfg(root, locked), root)


# ---------------------------------------------------------------------------------------------------------------
# 2. Store edge cases


def _report(uri: str, out: Path, *extra: str) -> int:
    return main(["report", "--tracking-uri", uri, "--out", str(out), "--no-log", *extra])


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(bytes(range(256)) * 16), "is not an SQLite database"),
        (lambda p: p.write_text("hello\n"), "is not an SQLite database"),
        (lambda p: p.mkdir(), "is a folder, not a database file"),
        (lambda p: None, "there is no MLflow store"),
    ],
    ids=["garbage bytes", "text file", "a folder", "missing (report)"],
)
def test_store_that_is_not_one(make, says: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    make(db)
    before = sorted(db.parent.rglob("*"))
    assert _report(f"sqlite:///{db}", tmp_path / "rep") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and "Traceback" not in err
    assert sorted(db.parent.rglob("*")) == before  # nothing created or changed
    if says != "there is no MLflow store":
        with pytest.raises(TrackingError, match=says):
            check_store_file(f"sqlite:///{db}")  # run-grid's check (Tracker.check) refuses it the same way


def test_store_folder_that_cannot_be_made(tmp_path: Path) -> None:
    """(A store folder that does not exist is created: ``failed_store``'s ``new/deeper/``.)"""
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(TrackingError, match=r"cannot create the folder .*a_file"):
        Tracker(f"sqlite:///{tmp_path}/a_file/mlflow.db", "e").check()
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only store folder (chmod 555) does not stop root's writes")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(TrackingError):
        Tracker(f"sqlite:///{locked}/mlflow.db", "e").check()


@pytest.fixture(scope="module")
def failed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A store whose only cell run FAILED (a diverging lr), made by one real smoke run-grid."""
    root = tmp_path_factory.mktemp("failed_store")
    tmp = root / "new" / "deeper"  # folders that do not exist yet: run-grid creates them
    images = make_image_folder(root / "images")
    grid = root / "g.toml"
    grid.write_text('name = "hostile"\n[defaults]\nepochs = 100\n[[cells]]\nname = "a"\ntechniques = []\n')
    run = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(images), "--cache-dir",
           str(root / "cache"), "--device", "cpu", "--no-progress", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]  # fmt: skip
    assert not tmp.parent.exists()
    assert main([*run, "--set", "lr=1e30"]) == 1  # the cell fails (nan), the grid reports it
    assert (tmp / "mlflow.db").is_file()
    return tmp, run


def test_report_on_empty_store_and_only_failed_runs(failed_store, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    tmp, _ = failed_store
    uri = f"sqlite:///{tmp}/mlflow.db"
    assert _report(uri, tmp_path / "rep") == 0
    text = (tmp_path / "rep" / "hostile" / "README.md").read_text()
    assert "0 of 1 cell runs complete" in text and "is **failed**: non-finite loss" in text
    assert _report(uri, tmp_path / "rep", "--experiment", "empty") == 2  # no such experiment: never created
    assert "no experiment 'empty'" in capsys.readouterr().err
    Tracker(uri, "empty").check()  # an experiment without runs
    assert _report(uri, tmp_path / "rep", "--experiment", "empty") == 2
    assert "no grid run in experiment 'empty'" in capsys.readouterr().err


def test_artifact_folder_gone_then_experiment_deleted(failed_store, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    tmp, run = failed_store
    uri = f"sqlite:///{tmp}/mlflow.db"
    shutil.move(tmp / "mlartifacts", tmp / "moved")
    try:
        assert _report(uri, tmp_path / "rep") == 0
        err = capsys.readouterr().err
        assert f"warning: the artifact folder {tmp}/mlartifacts of experiment 'sota_ablate' no longer exists" in err
    finally:
        shutil.rmtree(tmp / "mlartifacts", ignore_errors=True)
        shutil.move(tmp / "moved", tmp / "mlartifacts")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("sota_ablate")
    client.delete_experiment(experiment.experiment_id)
    try:
        for argv in (["report", "--tracking-uri", uri, "--out", str(tmp_path / "rep")], run):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: experiment 'sota_ablate' is deleted") and "mlflow experiments restore" in err
    finally:
        client.restore_experiment(experiment.experiment_id)
    assert client.get_experiment(experiment.experiment_id).lifecycle_stage == "active"
