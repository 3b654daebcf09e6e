"""Where the images come from and how they are split, subset and pre-sized (fastbook chapter 7's DataBlock).

The chapter builds its data with ``DataBlock(get_items=get_image_files, get_y=parent_label,
item_tfms=Resize(460))`` over ``untar_data(URLs.IMAGENETTE)`` and, since it passes no splitter, a fresh
``RandomSplitter(valid_pct=0.2)`` over both folders. ``DataConfig`` makes those choices explicit: the dataset
(an official Imagenette archive or a local folder), the split (``official`` folders or the ``chapter``'s seeded
random 20 %, fixed once), optional per-class subsets for quick CPU runs, and the pre-size of the uint8 cache
(fastai's ``Resize(460)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sota_ablate.data.errors import DataError

SOURCES = ("imagenette", "folder")
VARIANTS = ("full", "320px", "160px")
SPLITS = ("official", "chapter")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, split, subset and cache settings.

    Attributes:
        source: ``"imagenette"`` downloads (or finds) an official archive chosen by ``variant``; ``"folder"``
            reads a local folder laid out as ``train/<class>/*`` and ``val/<class>/*``.
        path: for ``"folder"``, that folder; for ``"imagenette"``, the download root (default
            ``$SOTA_ABLATE_DATA`` or ``~/.cache/sota_ablate/datasets``).
        variant: Imagenette archive: ``"full"`` (the chapter's ``imagenette2``), ``"320px"`` or ``"160px"``
            (shortest side resized to 320 / 160 px).
        download_url: base URL that replaces the official one (mirrors, tests); default
            ``$SOTA_ABLATE_IMAGENETTE_URL``, else torchvision's official URL. The md5 is only checked for the
            official URL.
        split: ``"official"`` uses the ``train/`` and ``val/`` folders; ``"chapter"`` reproduces fastai's
            ``RandomSplitter``: the union of both folders sorted by relative path, a ``torch.randperm`` seeded
            with ``split_seed``, the first ``int(valid_pct * n)`` items valid. The split is fixed for the whole
            cell, so progressive resizing keeps the same validation set (the book re-split, see the docs).
        valid_pct: validation fraction for ``split="chapter"``.
        split_seed: seed of the chapter split and of the per-class subsets.
        train_per_class: keep a seeded subset of this many training images per class (after the split).
        valid_per_class: the same for the validation set.
        presize: fastai's ``Resize(460)``: images are cached with their short side resized to this many pixels.
        max_aspect: the cache canvas is a square of side ``round(presize * min(max_aspect, a))`` where ``a`` is
            the largest aspect ratio in the data. An image whose long side would exceed that side is squashed on
            its long side to fit (a slight distortion, for panoramas only), which bounds the cache's memory.
        cache_dir: where the decoded uint8 cache is stored (default ``$SOTA_ABLATE_CACHE`` or
            ``~/.cache/sota_ablate/cache``).
        workers: decode processes for building the cache; 0 means ``os.cpu_count()``.
        max_bad_fraction: unreadable images (corrupt, truncated, empty files) are skipped, with a warning and
            ``bad_images`` in the data info, while they are at most this fraction of the images; beyond it, the
            data is refused with a DataError naming them.
    """

    source: str = "imagenette"
    path: str | None = None
    variant: str = "full"
    download_url: str | None = None
    split: str = "official"
    valid_pct: float = 0.2
    split_seed: int = 42
    train_per_class: int | None = None
    valid_per_class: int | None = None
    presize: int = 460
    max_aspect: float = 1.5
    max_bad_fraction: float = 0.05
    cache_dir: str | None = None
    workers: int = 0

    def validate(self) -> None:
        """Raise DataError naming the first bad value and what is allowed."""
        if self.source not in SOURCES:
            raise DataError(f"data.source = {self.source!r} is unknown: use one of {', '.join(SOURCES)}.")
        if self.source == "folder" and not self.path:
            raise DataError(
                "data.source = 'folder' needs data.path: pass --data PATH to a folder laid out as "
                "train/<class>/*.JPEG and val/<class>/*.JPEG."
            )
        if self.variant not in VARIANTS:
            raise DataError(f"data.variant = {self.variant!r} is unknown: use one of {', '.join(VARIANTS)}.")
        if self.split not in SPLITS:
            raise DataError(f"data.split = {self.split!r} is unknown: use one of {', '.join(SPLITS)}.")
        checks: list[tuple[str, bool, str]] = [
            ("valid_pct", 0.0 < self.valid_pct < 1.0, "a number in (0, 1)"),
            ("split_seed", isinstance(self.split_seed, int), "an integer"),
            ("train_per_class", self.train_per_class is None or self.train_per_class >= 1, "None or >= 1"),
            ("valid_per_class", self.valid_per_class is None or self.valid_per_class >= 1, "None or >= 1"),
            ("presize", self.presize >= 8, "an integer >= 8 (pixels)"),
            ("max_aspect", self.max_aspect >= 1.0, "a number >= 1"),
            ("workers", self.workers >= 0, "an integer >= 0 (0 = one per CPU)"),
            ("max_bad_fraction", 0.0 <= self.max_bad_fraction < 1.0, "a number in [0, 1)"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise DataError(f"data.{key} = {getattr(self, key)!r} is out of range: it must be {allowed}.")

    def data_root(self) -> Path:
        """The dataset folder (``folder``) or download root (``imagenette``), with defaults and ``~`` resolved."""
        if self.path:
            return Path(self.path).expanduser()
        if self.source == "folder":
            raise DataError("data.source = 'folder' needs data.path: pass --data PATH.")
        return Path(os.environ.get("SOTA_ABLATE_DATA") or "~/.cache/sota_ablate/datasets").expanduser()

    def cache_root(self) -> Path:
        """The folder of the decoded uint8 caches, with defaults and ``~`` resolved."""
        return Path(self.cache_dir or os.environ.get("SOTA_ABLATE_CACHE") or "~/.cache/sota_ablate/cache").expanduser()

    def n_workers(self) -> int:
        """Decode processes to use (``workers``, or one per CPU when 0)."""
        return self.workers or os.cpu_count() or 1

    def identity(self) -> dict[str, str | int | float]:
        """What defines the dataset a run saw, flat and loggable (MLflow params); None subsets read ``"all"``."""
        out: dict[str, str | int | float] = {"source": self.source}
        if self.source == "folder":
            out["path"] = str(self.path)
        else:
            out["variant"] = self.variant
        out["split"] = self.split
        out["valid_pct"] = self.valid_pct  # logged for both splits so runs compare column by column
        out["split_seed"] = self.split_seed
        out["train_per_class"] = "all" if self.train_per_class is None else self.train_per_class
        out["valid_per_class"] = "all" if self.valid_per_class is None else self.valid_per_class
        out["presize"] = self.presize
        out["max_aspect"] = self.max_aspect
        return out
