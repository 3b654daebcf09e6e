"""Listing images and labels: a local ``train/``/``val/`` folder, or an official Imagenette archive.

Items and labels follow fastai's ``get_image_files`` + ``parent_label`` (fastbook chapter 7): every image file
under a class folder, labelled by that folder, classes sorted (for Imagenette the wnids, ``n01440764`` …
``n03888257`` → 0–9, the same order as fastai's vocab and torchvision's ``Imagenette.wnids``).

Imagenette archives are fetched with torchvision's ``download_url`` + ``extract_archive`` (the two halves of
``download_and_extract_archive``, split so that an interrupted download or extraction never leaves a folder that
looks complete), with the URLs and md5 sums of ``torchvision.datasets.Imagenette._ARCHIVES``; the items are then
listed by ``torchvision.datasets.Imagenette`` itself, so the official dataset class defines the layout.

The split is either the official folders or the chapter's ``RandomSplitter(valid_pct=0.2)`` made reproducible
(items sorted by relative path, a seeded ``torch.randperm``); optional per-class subsets are drawn after it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# Used only when torchvision has no Imagenette._ARCHIVES (the same values as torchvision 0.17+).
_FALLBACK_ARCHIVES: dict[str, tuple[str, str]] = {
    "full": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "320px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "160px": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}

URL_ENV = "SOTA_ABLATE_IMAGENETTE_URL"

Item = tuple[str, int]


@dataclass
class Items:
    """The listed dataset.

    Attributes:
        root: the folder holding ``train/`` and ``val/``; paths are keyed relative to it (cache, chapter split).
        train: ``(absolute path, label)`` of the training images.
        valid: ``(absolute path, label)`` of the validation images.
        classes: class names (folder names / wnids), sorted; label ``i`` is ``classes[i]``.
    """

    root: Path
    train: list[Item]
    valid: list[Item]
    classes: list[str]


def list_items(cfg: DataConfig) -> Items:
    """List, split and subset the images that ``cfg`` describes (downloading Imagenette if needed).

    Args:
        cfg: the data configuration.

    Returns:
        The items, with the split and the per-class subsets applied.

    Raises:
        DataError: a bad configuration, a missing or badly laid out folder, or a failed download.
    """
    cfg.validate()
    if cfg.source == "folder":
        root = cfg.data_root()
        train, valid, classes = _list_folder(root)
    else:
        base_url = cfg.download_url or os.environ.get(URL_ENV) or None
        root = ensure_imagenette(cfg.data_root(), cfg.variant, base_url)
        train, valid, classes = _list_imagenette(root.parent, cfg.variant)
    if cfg.split == "chapter":
        train, valid = chapter_split(train + valid, root, cfg.valid_pct, cfg.split_seed)
    if cfg.train_per_class is not None:
        train = subset_per_class(train, cfg.train_per_class, cfg.split_seed, "train")
    if cfg.valid_per_class is not None:
        valid = subset_per_class(valid, cfg.valid_per_class, cfg.split_seed + 1, "valid")
    logger.info(
        "%d training and %d validation images in %d classes from %s", len(train), len(valid), len(classes), root
    )
    return Items(root=root, train=train, valid=valid, classes=classes)


def relative_key(path: str, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators: a portable sort and cache key."""
    return Path(os.path.relpath(path, root)).as_posix()


def chapter_split(items: Sequence[Item], root: Path, valid_pct: float, seed: int) -> tuple[list[Item], list[Item]]:
    """fastai's ``RandomSplitter(valid_pct, seed)``, made portable: items sorted by relative path first.

    ``torch.randperm(n)`` from a generator seeded with ``seed``; the first ``int(valid_pct * n)`` indices are
    the validation set (in permutation order, as fastai), the rest the training set.

    Args:
        items: all items (both folders).
        root: the folder the relative paths are taken from.
        valid_pct: validation fraction.
        seed: the split seed.

    Returns:
        ``(train, valid)``.
    """
    ordered = sorted(items, key=lambda item: relative_key(item[0], root))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ordered), generator=generator).tolist()
    cut = int(valid_pct * len(ordered))
    return [ordered[i] for i in order[cut:]], [ordered[i] for i in order[:cut]]


def subset_per_class(items: Sequence[Item], per_class: int, seed: int, name: str) -> list[Item]:
    """A seeded subset of at most ``per_class`` items of each class, in the original order.

    Args:
        items: the items of one split.
        per_class: how many to keep per class (all of a class that has fewer, with a warning).
        seed: the subset seed.
        name: ``"train"`` or ``"valid"``, for the warning.

    Returns:
        The kept items, in the order they had in ``items``.
    """
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for label in sorted(by_class):
        indices = by_class[label]
        if len(indices) < per_class:
            logger.warning(
                "%s class %d has %d images, fewer than %d: keeping all", name, label, len(indices), per_class
            )
        chosen = torch.randperm(len(indices), generator=generator)[:per_class].tolist()
        keep.extend(indices[i] for i in chosen)
    return [items[i] for i in sorted(keep)]


# ---------------------------------------------------------------------------------------------------------------
# Local folder: train/<class>/* and val/<class>/*


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    """Every image file under ``folder``, sub-folders and symbolic links included, each real folder once.

    Sub-folders belong to the class (labelled by ``folder``, not by their own names); a symbolic link that loops
    back to a folder already walked is not followed again. Links that make one file appear under two classes or
    splits are refused by ``_check_listing``.

    Raises:
        DataError: an image name that is a broken symbolic link or not a regular file (a FIFO would hang the
            reader), naming it.
    """
    found: list[str] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not _is_image(name):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.exists(path):
                raise DataError(
                    f"{path} is a broken symbolic link (to {os.readlink(path)}): restore its target or delete it."
                )
            if not os.path.isfile(path):
                raise DataError(f"{path} has an image name but is not a regular file: move it out of the dataset.")
            found.append(path)
    return found


def _check_listing(root: Path, splits: Sequence[Sequence[Item]], classes: Sequence[str]) -> None:
    """Refuse a file listed twice (through symbolic links): two labels for one image, or one in both splits.

    Raises:
        DataError: naming both paths and their class and split.
    """
    where: dict[str, tuple[str, str]] = {}
    for split, items in zip(("train", "val"), splits, strict=True):
        for path, label in items:
            real = os.path.realpath(path)
            if real in where:
                first, first_where = where[real]
                raise DataError(
                    f"{path} ({split}/, class {classes[label]!r}) and {first} ({first_where}) are the same file "
                    f"({real}, through symbolic links): one image would count twice, with two labels or in both "
                    "train/ and val/. Replace the links by distinct images or remove one of them."
                )
            where[real] = (path, f"{split}/, class {classes[label]!r}")
    stray = [
        entry.name
        for split in ("train", "val")
        for entry in os.scandir(root / split)
        if _is_image(entry.name) and not entry.is_dir()
    ]
    if stray:
        logger.warning(
            "ignoring %d image(s) directly in train/ or val/ of %s (%s): images are labelled by their class folder, "
            "move them into one",
            len(stray),
            root,
            ", ".join(sorted(stray)[:5]),
        )


def _list_folder(root: Path) -> tuple[list[Item], list[Item], list[str]]:
    layout = "pass --data PATH to a folder laid out as train/<class>/*.JPEG and val/<class>/*.JPEG"
    if root.exists() and not root.is_dir():
        raise DataError(f"the dataset path {root} is a file, not a folder: {layout}.")
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist: {layout}.")
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:
        raise DataError(f"dataset folder {root} has no {' or '.join(f'{m}/' for m in missing)} folder: {layout}.")
    classes = _class_folders(root / "train")
    valid_classes = _class_folders(root / "val")
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders: {layout}.")
    if classes != valid_classes:
        only_train = sorted(set(classes) - set(valid_classes))
        only_valid = sorted(set(valid_classes) - set(classes))
        raise DataError(
            f"train/ and val/ of {root} have different class folders (only in train: {only_train or 'none'}; "
            f"only in val: {only_valid or 'none'}): give both folders the same class subfolders."
        )
    splits: list[list[Item]] = []
    for split in ("train", "val"):
        items: list[Item] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            paths = _images_under(folder)
            if not paths:
                raise DataError(
                    f"class folder {folder} has no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}, any "
                    "case): add images to it or remove it from both train/ and val/."
                )
            items.extend((path, label) for path in paths)
        splits.append(items)
    _check_listing(root, splits, classes)
    return splits[0], splits[1], classes


# ---------------------------------------------------------------------------------------------------------------
# Official Imagenette archives


def imagenette_archive(variant: str, base_url: str | None = None) -> tuple[str, str | None]:
    """The download URL and md5 of an Imagenette variant (md5 None for a non-official URL).

    Args:
        variant: ``"full"``, ``"320px"`` or ``"160px"``.
        base_url: a folder URL holding the archive (its file name is appended), or the archive's full URL
            (ending in ``.tgz``); None for the official one.
    """
    from torchvision.datasets import Imagenette

    archives: dict[str, tuple[str, str]] = getattr(Imagenette, "_ARCHIVES", None) or _FALLBACK_ARCHIVES
    if variant not in archives:
        raise DataError(f"unknown Imagenette variant {variant!r}: use one of {', '.join(archives)}.")
    official_url, md5 = archives[variant]
    if not base_url:
        return official_url, md5
    if base_url.endswith((".tgz", ".tar.gz")):
        return base_url, None
    return f"{base_url.rstrip('/')}/{official_url.rsplit('/', 1)[1]}", None


def ensure_imagenette(root: str | Path, variant: str, base_url: str | None = None) -> Path:
    """Download and extract an Imagenette archive into ``root`` unless it is already there.

    ``root/<archive stem>`` (e.g. ``root/imagenette2-160``) is the layout of ``torchvision.datasets.Imagenette``.
    The archive is downloaded to a ``.part`` file and renamed when complete, and extracted into a temporary
    folder that is renamed when complete, so an interrupted run never leaves something that looks finished.

    Args:
        root: the download root.
        variant: ``"full"``, ``"320px"`` or ``"160px"``.
        base_url: mirror URL (see ``imagenette_archive``); None for the official URL (md5 checked).

    Returns:
        The extracted dataset folder, holding ``train/`` and ``val/``.

    Raises:
        DataError: the download or the extraction failed; the message says how to use a local copy instead.
    """
    from torchvision.datasets.utils import check_integrity, download_url, extract_archive

    root = Path(root).expanduser()
    url, md5 = imagenette_archive(variant, base_url)
    filename = url.rsplit("/", 1)[1]
    stem = filename.removesuffix(".tgz").removesuffix(".tar.gz")
    target = root / stem
    if target.is_dir():
        logger.info("Imagenette %s found at %s", variant, target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / filename
    fix = (
        f"pass --data PATH to a local copy (a folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, e.g. an "
        f"extracted {filename}), or set {URL_ENV} to a reachable mirror"
    )
    if archive.is_file() and (md5 is None or check_integrity(str(archive), md5)):
        logger.info("using the downloaded archive %s", archive)
    else:
        part = root / f"{filename}.part"
        part.unlink(missing_ok=True)
        logger.info("downloading Imagenette %s from %s to %s", variant, url, root)
        try:
            download_url(url, str(root), filename=part.name, md5=md5)
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as error:
            part.unlink(missing_ok=True)
            raise DataError(f"could not download {url} ({error}): {fix}.") from error
        os.replace(part, archive)
    logger.info("extracting %s", archive)
    staging = Path(tempfile.mkdtemp(prefix=f".extract-{stem}-", dir=root))
    try:
        try:
            extract_archive(str(archive), str(staging))
        except Exception as error:  # tarfile, gzip and OS errors all mean a bad archive
            raise DataError(
                f"could not extract {archive} ({error}): delete it so that it is downloaded again, or {fix}."
            ) from error
        extracted = staging / stem
        if not (extracted / "train").is_dir() or not (extracted / "val").is_dir():
            raise DataError(
                f"{archive} does not contain {stem}/train and {stem}/val: delete it so that it is downloaded "
                f"again, or {fix}."
            )
        if not target.exists():
            os.replace(extracted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Imagenette %s ready at %s", variant, target)
    return target


def _list_imagenette(download_root: Path, variant: str) -> tuple[list[Item], list[Item], list[str]]:
    """List both official splits through ``torchvision.datasets.Imagenette`` (it defines the layout)."""
    from torchvision.datasets import Imagenette

    splits: list[list[Item]] = []
    classes: list[str] = []
    for split in ("train", "val"):
        try:
            dataset = Imagenette(str(download_root), split=split, size=variant, download=False)
        except (RuntimeError, FileNotFoundError) as error:
            raise DataError(
                f"torchvision could not read Imagenette {variant} {split} under {download_root} ({error}): delete "
                "the folder so that it is extracted again, or pass --data PATH to a local copy."
            ) from error
        wnids = list(dataset.wnids)
        if classes and wnids != classes:
            raise DataError(f"Imagenette train/ and val/ under {download_root} have different class folders.")
        classes = wnids
        splits.append([(str(path), int(label)) for path, label in dataset._samples])
        if not splits[-1]:
            raise DataError(f"Imagenette {variant} {split} under {download_root} has no images.")
    return splits[0], splits[1], classes
