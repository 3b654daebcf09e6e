"""Listing, splitting, subsetting, caching and batching of a small image folder (CPU, synthetic JPEG/PNG files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sota_ablate.data import (
    AugmentConfig,
    DataConfig,
    DataError,
    ImageData,
    load_data,
    steps_per_epoch,
    train_batches,
    tta_batches,
    valid_batches,
)
from sota_ablate.data import cache as cache_module
from sota_ablate.data.cache import build_cache
from sota_ablate.data.sources import list_items, relative_key

CLASSES = ["cat", "dog", "fish"]
# (file name, width, height, mode) per class folder; sizes vary in aspect (landscape, portrait, square).
TRAIN_FILES = [
    ("a.jpg", 48, 36, "RGB"),
    ("b.JPEG", 30, 40, "RGB"),
    ("c.jpeg", 40, 40, "RGB"),
    ("d.png", 50, 32, "RGBA"),
]
VALID_FILES = [("e.jpg", 36, 48, "RGB"), ("f.JPG", 44, 33, "RGB")]


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def write_image(path: Path, width: int, height: int, mode: str, seed: int) -> None:
    """A synthetic image with smooth content in the given PIL mode (RGB, RGBA, L, CMYK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(_pixels(width, height, seed)).convert(mode)
    if path.suffix.lower() == ".png":
        image.save(path, format="PNG")
    else:
        image.save(path, format="JPEG", quality=95)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """train/<class>/* and val/<class>/* with JPEG (RGB, greyscale, CMYK) and PNG files plus non-image files."""
    root = tmp_path / "images"
    seed = 0
    for split, files in (("train", TRAIN_FILES), ("val", VALID_FILES)):
        for name in CLASSES:
            for file, width, height, mode in files:
                seed += 1
                write_image(root / split / name / file, width, height, mode, seed)
    write_image(root / "train" / "cat" / "grey.jpg", 40, 30, "L", 100)
    write_image(root / "train" / "dog" / "cmyk.jpg", 30, 45, "CMYK", 101)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / ".hidden.jpg").write_bytes(b"resource fork junk")
    (root / "labels.csv").write_text("path,label\n")
    return root


def folder_config(root: Path, tmp_path: Path, **kwargs: object) -> DataConfig:
    return DataConfig(source="folder", path=str(root), cache_dir=str(tmp_path / "cache"), presize=24, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Listing


def test_folder_listing_labels_and_extensions(image_folder: Path, tmp_path: Path) -> None:
    items = list_items(folder_config(image_folder, tmp_path))
    assert items.classes == CLASSES
    assert len(items.train) == 3 * len(TRAIN_FILES) + 2 and len(items.valid) == 3 * len(VALID_FILES)
    for path, label in items.train + items.valid:
        assert Path(path).parent.name == CLASSES[label]
    names = {Path(path).name for path, _ in items.train}
    assert {"b.JPEG", "d.png", "grey.jpg", "cmyk.jpg"} <= names  # extensions are case-insensitive
    assert "notes.txt" not in names and ".hidden.jpg" not in names


def test_chapter_split_is_sorted_seeded_and_fixed(image_folder: Path, tmp_path: Path) -> None:
    official = list_items(folder_config(image_folder, tmp_path))
    everything = official.train + official.valid
    cfg = folder_config(image_folder, tmp_path, split="chapter", valid_pct=0.2, split_seed=3)
    first, again = list_items(cfg), list_items(cfg)
    assert first.train == again.train and first.valid == again.valid  # fixed: same split on every call
    assert len(first.valid) == int(0.2 * len(everything))
    assert not {p for p, _ in first.train} & {p for p, _ in first.valid}
    assert sorted(first.train + first.valid) == sorted(everything)  # the union of both folders
    # The reference: items sorted by relative path, then a seeded randperm; the first 20 % are valid.
    ordered = sorted(everything, key=lambda item: relative_key(item[0], image_folder))
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(3)).tolist()
    cut = int(0.2 * len(ordered))
    assert first.valid == [ordered[i] for i in perm[:cut]]
    other = list_items(folder_config(image_folder, tmp_path, split="chapter", split_seed=4))
    assert other.valid != first.valid


def test_subset_per_class_is_deterministic(image_folder: Path, tmp_path: Path) -> None:
    cfg = folder_config(image_folder, tmp_path, train_per_class=2, valid_per_class=1)
    items, again = list_items(cfg), list_items(cfg)
    assert items.train == again.train and items.valid == again.valid
    full = list_items(folder_config(image_folder, tmp_path))
    for subset, whole, per_class in ((items.train, full.train, 2), (items.valid, full.valid, 1)):
        assert [label for _, label in subset].count(0) == per_class
        assert all([label for _, label in subset].count(c) == per_class for c in range(len(CLASSES)))
        assert set(subset) <= set(whole)
        assert subset == [item for item in whole if item in subset]  # listing order kept


# --------------------------------------------------------------------------------------------------------------
# Cache


def test_cache_round_trip(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_INLINE_MAX", 0)  # use the worker pool even for a few images
    cfg = folder_config(image_folder, tmp_path, workers=2)
    data = load_data(cfg, "cpu")
    assert data.info["cache_hit"] is False
    files = sorted(p.name for p in Path(data.info["cache_folder"]).iterdir())
    assert files == ["images.npy", "meta.json", "sizes.npy"]
    # Largest aspect in the data: 50x32 = 1.5625, capped at max_aspect 1.5 -> canvas round(24 * 1.5) = 36.
    n_train, n_valid = 3 * len(TRAIN_FILES) + 2, 3 * len(VALID_FILES)
    assert data.train.images.shape == (n_train, 3, 36, 36) and data.train.images.dtype == torch.uint8
    assert data.valid.images.shape == (n_valid, 3, 36, 36)
    assert data.train.sizes.dtype == torch.int32 and data.train.labels.dtype == torch.int64
    assert bool((data.train.sizes.min(dim=1).values == 24).all())  # short side = presize
    assert data.info["canvas"] == 36 and data.info["n_train"] == n_train and data.info["n_valid"] == n_valid
    sizes = dict(zip(data.train.paths, data.train.sizes.tolist(), strict=True))
    assert sizes["train/cat/a.jpg"] == [24, 32]  # 48x36 -> 32x24 (w x h)
    assert sizes["train/cat/b.JPEG"] == [32, 24]  # portrait 30x40 -> 24x32
    assert sizes["train/cat/d.png"] == [24, 36]  # 50x32 -> 37.5 wide, squashed to the canvas' 36

    grey = data.train.images[data.train.paths.index("train/cat/grey.jpg")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert grey.float().std() > 10  # real content, not a blank

    again = load_data(cfg, "cpu")
    assert again.info["cache_hit"] is True and again.info["cache_folder"] == data.info["cache_folder"]
    assert torch.equal(again.train.images, data.train.images) and again.train.paths == data.train.paths

    # The chapter split over the same files reuses the same cache (one cache of the sorted union).
    chapter = load_data(folder_config(image_folder, tmp_path, workers=2, split="chapter"), "cpu")
    assert chapter.info["cache_hit"] is True
    index = chapter.train.paths[0]
    assert torch.equal(chapter.train.images[0], data_images_by_path(data)[index])

    # The key hashes the files' contents: a touched file keeps the cache, a changed one gives a new cache key.
    path = image_folder / "train" / "cat" / "a.jpg"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_data(cfg, "cpu").info["cache_hit"] is True
    write_image(path, 48, 36, "RGB", 999)
    changed = load_data(cfg, "cpu")
    assert changed.info["cache_hit"] is False and changed.info["cache_folder"] != data.info["cache_folder"]
    assert changed.info["content_sha256"] != data.info["content_sha256"]


def data_images_by_path(data: ImageData) -> dict[str, torch.Tensor]:
    return dict(zip(data.train.paths + data.valid.paths, [*data.train.images, *data.valid.images], strict=True))


def test_cache_of_an_item_list_keeps_its_order(image_folder: Path, tmp_path: Path) -> None:
    items = list_items(folder_config(image_folder, tmp_path))
    cfg = folder_config(image_folder, tmp_path, max_aspect=1.0)  # every image squashed to a square
    cached = build_cache(items.valid[::-1], cfg, items.root)
    assert cached.canvas == 24 and bool((cached.sizes == 24).all())
    assert cached.labels.tolist() == [label for _, label in items.valid[::-1]]
    assert cached.keys[0] == relative_key(items.valid[-1][0], items.root)


# --------------------------------------------------------------------------------------------------------------
# Batches


def test_batches_shapes_order_and_drop_last(image_folder: Path, tmp_path: Path) -> None:
    data = load_data(folder_config(image_folder, tmp_path), "cpu")
    n_train, n_valid = len(data.train), len(data.valid)
    assert steps_per_epoch(n_train, 4) == n_train // 4
    torch.manual_seed(0)
    batches = list(train_batches(data.train, 4, 16, AugmentConfig()))
    assert len(batches) == n_train // 4  # drop_last
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist())) > 1 and labels.dtype == torch.int64
    for x, y in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (4,)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0

    valid = list(valid_batches(data.valid, 4, 16))
    assert [len(y) for _, y in valid] == [4] * (n_valid // 4) + ([n_valid % 4] if n_valid % 4 else [])
    assert torch.equal(torch.cat([y for _, y in valid]), data.valid.labels)  # in order, nothing dropped
    again = torch.cat([x for x, _ in valid_batches(data.valid, 4, 16)])
    assert torch.equal(torch.cat([x for x, _ in valid]), again)  # deterministic (cached per size)
    assert 16 in data.valid._valid_cache

    tta = list(tta_batches(data.valid, 4, 16, AugmentConfig()))
    assert sum(len(y) for _, y in tta) == n_valid
    assert not torch.equal(torch.cat([x for x, _ in tta]), again)  # augmented


def test_too_few_images_for_a_batch() -> None:
    with pytest.raises(DataError, match="no full batch of 64"):
        steps_per_epoch(10, 64)


# --------------------------------------------------------------------------------------------------------------
# Errors and configuration


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as error:
        list_items(folder_config(tmp_path / "nowhere", tmp_path))
    assert "--data PATH" in str(error.value) and "train/<class>" in str(error.value)


def test_folder_without_val(image_folder: Path, tmp_path: Path) -> None:
    os.rename(image_folder / "val", image_folder / "valid")
    with pytest.raises(DataError, match=r"has no val/ folder") as error:
        list_items(folder_config(image_folder, tmp_path))
    assert "val/<class>" in str(error.value)


def test_empty_class_folder(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "train" / "bird").mkdir()
    (image_folder / "val" / "bird").mkdir()
    (image_folder / "val" / "bird" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images") as error:
        list_items(folder_config(image_folder, tmp_path))
    assert str(image_folder / "train" / "bird") in str(error.value)


def test_class_folders_differ(image_folder: Path, tmp_path: Path) -> None:
    write_image(image_folder / "val" / "bird" / "x.jpg", 20, 20, "RGB", 7)
    with pytest.raises(DataError, match=r"only in val: \['bird'\]"):
        list_items(folder_config(image_folder, tmp_path))


def test_corrupt_image_is_named(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg") as error:
        load_data(folder_config(image_folder, tmp_path, max_bad_fraction=0.0), "cpu")  # no image may be skipped
    assert "Remove or replace" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "web"}, "data.source"),
        ({"source": "folder"}, "--data PATH"),
        ({"variant": "640px"}, "data.variant"),
        ({"split": "random"}, "data.split"),
        ({"valid_pct": 1.5}, "data.valid_pct"),
        ({"presize": 2}, "data.presize"),
        ({"max_aspect": 0.5}, "data.max_aspect"),
        ({"train_per_class": 0}, "data.train_per_class"),
        ({"workers": -1}, "data.workers"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataConfig(**kwargs).validate()  # type: ignore[arg-type]


def test_identity_is_flat_and_loggable() -> None:
    identity = DataConfig(variant="160px", split="chapter", train_per_class=100).identity()
    assert identity["source"] == "imagenette" and identity["variant"] == "160px" and "path" not in identity
    assert identity["split"] == "chapter" and identity["valid_pct"] == 0.2 and identity["split_seed"] == 42
    assert identity["train_per_class"] == 100 and identity["valid_per_class"] == "all"
    assert identity["presize"] == 460
    assert all(isinstance(v, str | int | float) for v in identity.values())
    assert DataConfig(source="folder", path="/data/x").identity()["path"] == "/data/x"
