"""Decode once into a uint8 cache on disk, then reload it in about a second (airbench's GPU-resident uint8 data).

fastai decodes every JPEG every epoch and applies ``Resize(460)`` on the CPU (fastbook chapter 7). Here each
image is decoded once with PIL (``Image.draft`` for JPEG speed, ``convert("RGB")``), resized bilinearly (PIL's
antialiased resize) so that its short side is ``presize``, and stored top-left in a square uint8 canvas of side
``L = round(presize * min(max_aspect, largest aspect in the data))``; the unused part of the canvas repeats the
image's last row and column. The random (train) or centre (valid) square crop of ``Resize(460)`` is then taken
on the device, as part of the augmentation's single resampling (``augment.py``).

The cache is a folder ``<cache_dir>/<key>/`` with ``images.npy`` (``uint8 [N, 3, L, L]``) and ``sizes.npy``
(``int32 [N, 2]``: h, w of each image in its canvas). The key hashes the items' relative paths, file sizes and
mtimes, ``presize`` and ``max_aspect``, so a change to any image or setting builds a new cache. The folder is
written under a temporary name and renamed when complete (atomic), and reloaded with ``np.load(mmap_mode)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from sota_ablate.data import _decode
from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError
from sota_ablate.data.sources import Item, Items, relative_key

logger = logging.getLogger(__name__)

CACHE_FORMAT = "sota_ablate-uint8-cache-v1"
_INLINE_MAX = 32  # decode this few images in the parent process: a pool costs more than it saves


@dataclass
class CachedImages:
    """Decoded images, in the order of the items given to ``build_cache``.

    Attributes:
        images: ``uint8 [N, 3, L, L]`` canvases (CPU, memory-mapped from the cache file).
        sizes: ``int32 [N, 2]``: height and width of each image inside its canvas.
        labels: ``int64 [N]``.
        keys: relative path of each image (the cache's identity).
        folder: the cache folder.
        bad: relative path -> error of the images that could not be decoded (their rows are blank; skip them).
        hit: True when the cache was loaded rather than built.
        seconds: time spent building or loading.
    """

    images: Tensor
    sizes: Tensor
    labels: Tensor
    keys: list[str]
    folder: Path
    hit: bool
    seconds: float
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def canvas(self) -> int:
        """The side ``L`` of the square canvas."""
        return int(self.images.shape[-1])


def cache_key(items: Sequence[Item], root: Path, presize: int, max_aspect: float) -> str:
    """A hash of (relative paths, file sizes, mtimes, presize, max_aspect): the cache's file name.

    Args:
        items: the images, in cache order.
        root: the folder relative paths are taken from.
        presize: short side in the cache.
        max_aspect: the canvas' aspect cap.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{presize}|{max_aspect!r}|{len(items)}\n".encode())
    for path, _ in items:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise DataError(f"cannot read {path} ({error}): check that the dataset folder is complete.") from error
        digest.update(f"{relative_key(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def build_cache(items: Items | Sequence[Item], cfg: DataConfig, root: Path | None = None) -> CachedImages:
    """Load the uint8 cache of ``items``, decoding and writing it first if it does not exist.

    Args:
        items: an ``Items`` (its train then valid items are cached) or a sequence of ``(path, label)``.
        cfg: ``presize``, ``max_aspect``, ``cache_dir`` and ``workers`` are used.
        root: the folder relative paths are taken from (``items.root`` for an ``Items``; default: the common
            parent of the paths).

    Returns:
        The images in the order of ``items``.

    Raises:
        DataError: an image cannot be read or decoded (the message names it), or the cache cannot be written.
    """
    if isinstance(items, Items):
        root = items.root if root is None else root
        items = items.train + items.valid
    items = list(items)
    if not items:
        raise DataError("no images to cache: check the dataset folder and the per-class subset sizes.")
    if root is None:
        root = Path(os.path.commonpath([os.path.dirname(path) for path, _ in items]))
    start = time.perf_counter()
    key = cache_key(items, root, cfg.presize, cfg.max_aspect)
    folder = cfg.cache_root() / key
    hit = (folder / "images.npy").is_file() and (folder / "sizes.npy").is_file()
    if hit:
        logger.info("loading the uint8 cache %s", folder)
    else:
        _write_cache(items, root, cfg, folder)
    images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: writable for torch, never saved
    sizes = np.load(folder / "sizes.npy")
    bad_file = folder / "bad.json"
    bad = json.loads(bad_file.read_text()) if bad_file.is_file() else {}
    if images.shape[0] != len(items) or sizes.shape != (len(items), 2):
        raise DataError(f"the cache {folder} does not match the dataset: delete the folder so that it is rebuilt.")
    seconds = time.perf_counter() - start
    logger.info(
        "%d images in a %dx%d uint8 canvas (%s, %.1f s)",
        len(items),
        images.shape[-2],
        images.shape[-1],
        "cache hit" if hit else "built",
        seconds,
    )
    return CachedImages(
        images=torch.from_numpy(images),
        sizes=torch.from_numpy(sizes),
        labels=torch.tensor([label for _, label in items], dtype=torch.int64),
        keys=[relative_key(path, root) for path, _ in items],
        folder=folder,
        hit=hit,
        seconds=seconds,
        bad=bad,
    )


def _write_cache(items: list[Item], root: Path, cfg: DataConfig, folder: Path) -> None:
    paths = [path for path, _ in items]
    workers = min(cfg.n_workers(), len(items))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as error:
        raise _unwritable(folder, error) from error
    try:
        with _Workers(workers if len(items) > _INLINE_MAX else 1) as pool:
            probed = list(pool.imap(_decode.probe, paths, chunksize=64))
            # Unreadable images are skipped (their rows stay blank, listed in bad.json) up to max_bad_fraction.
            bad = {i: h for i, h in enumerate(probed) if isinstance(h, str)}
            check_unreadable([(paths[i], e) for i, e in bad.items()], len(items), cfg.max_bad_fraction)
            headers = [(1, 1) if isinstance(h, str) else h for h in probed]
            cap = round(cfg.presize * cfg.max_aspect)
            targets = [_decode.target_size(w, h, cfg.presize, cap) for w, h in headers]
            canvas = max(max(w, h) for i, (w, h) in enumerate(targets) if i not in bad)
            n_squashed = sum(max(w, h) / min(w, h) > cfg.max_aspect for i, (w, h) in enumerate(headers) if i not in bad)
            if n_squashed:
                logger.info(
                    "%d images are longer than max_aspect %.2f: squashed to a %d px long side",
                    n_squashed,
                    cfg.max_aspect,
                    canvas,
                )
            file = staging / "images.npy"
            gib = len(items) * 3 * canvas * canvas / 2**30
            logger.info(
                "decoding %d images from %s into a %dx%d uint8 cache (%.2f GiB) with %d workers",
                len(items),
                root,
                canvas,
                canvas,
                gib,
                workers,
            )
            array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=(len(items), 3, canvas, canvas))
            del array  # workers write through their own maps of the same file
            tasks = [
                (str(file), i, path, w, h)
                for i, (path, (w, h)) in enumerate(zip(paths, targets, strict=True))
                if i not in bad
            ]
            progress = tqdm(
                total=len(tasks), desc="decoding", unit="img", mininterval=1.0, dynamic_ncols=True, disable=None
            )
            with progress:
                for index, error in pool.imap_unordered(_decode.write_one, tasks, chunksize=16):
                    if error is not None:
                        bad[index] = error
                    progress.update(1)
            _decode.release()
            check_unreadable([(paths[i], e) for i, e in sorted(bad.items())], len(items), cfg.max_bad_fraction)
        sizes = np.array([(0, 0) if i in bad else (h, w) for i, (w, h) in enumerate(targets)], dtype=np.int32)
        np.save(staging / "sizes.npy", sizes)
        if bad:
            unreadable = {relative_key(paths[i], root): error for i, error in sorted(bad.items())}
            (staging / "bad.json").write_text(json.dumps(unreadable, indent=1))
        meta: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "n": len(items),
            "canvas": canvas,
            "presize": cfg.presize,
            "max_aspect": cfg.max_aspect,
            "root": str(root),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "images.npy").is_file():  # another process may have finished the same cache
                raise
    except OSError as error:
        raise _unwritable(folder, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unwritable(folder: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot write the image cache under {folder.parent} ({error}): free some disk space or set "
        "SOTA_ABLATE_CACHE (or data.cache_dir) to a writable folder."
    )


def check_unreadable(bad: Sequence[tuple[str, str]], n: int, max_fraction: float) -> None:
    """Raise DataError naming the files when more than ``max_fraction`` of the ``n`` images (or all) are bad."""
    if bad and (len(bad) > max_fraction * n or len(bad) >= n):
        listed = "; ".join(f"{path} ({error})" for path, error in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"cannot decode {len(bad)} of {n} image(s), more than the {max_fraction:.0%} that are skipped: "
            f"{listed}{more}. Remove or replace these files."
        )


class _Workers:
    """A process pool (fork where available: no re-import, nothing pickled but paths) or the parent itself."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool: Any = None

    def __enter__(self) -> _Workers:
        if self.processes > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = context.Pool(self.processes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def imap(self, fn: Any, args: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return self.pool.imap(fn, args, chunksize) if self.pool is not None else map(fn, args)

    def imap_unordered(self, fn: Any, args: Iterable[Any], chunksize: int) -> Iterator[Any]:
        return self.pool.imap_unordered(fn, args, chunksize) if self.pool is not None else map(fn, args)
