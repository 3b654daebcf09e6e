"""Decode once into a uint8 cache on disk, then reload it in about a second (airbench's GPU-resident uint8 data).

fastai decodes every JPEG every epoch and applies ``Resize(460)`` on the CPU (fastbook chapter 7). Here each
image is decoded once with PIL (``Image.draft`` for JPEG speed, ``convert("RGB")``), resized bilinearly (PIL's
antialiased resize) so that its short side is ``presize``, and stored top-left in a square uint8 canvas of side
``L = round(presize * min(max_aspect, largest aspect in the data))``; the unused part of the canvas repeats the
image's last row and column. The random (train) or centre (valid) square crop of ``Resize(460)`` is then taken
on the device, as part of the augmentation's single resampling (``augment.py``).

The cache is a folder ``<cache_dir>/<key>/`` with ``images.npy`` (``uint8 [N, 3, L, L]``), ``sizes.npy``
(``int32 [N, 2]``: h, w of each image in its canvas), ``meta.json`` and, when some images are unreadable,
``bad.json``. The key hashes the items' relative paths and the SHA-256 of each file's bytes (``checksum.py``),
``presize`` and ``max_aspect``: a change to any image's content or to a setting builds a new cache, even when a
replaced file keeps its name, size and mtime; a file that is only touched or copied keeps its cache. The folder
is written under a locked temporary name and renamed when complete (atomic; ``staging.py``), and reloaded with
``np.load(mmap_mode)``.

Reliability. Before writing, the free space of the cache folder is compared with the bytes the cache needs, and
the file is allocated up front (``posix_fallocate``), so a full disk is a ``DataError`` within seconds rather
than decode workers dying of SIGBUS on the memory-mapped file; a worker that dies anyway is reported as the same
error (``workers.py``: a pool that cannot hang). ``meta.json`` records the size and 32 MiB-chunk SHA-256 of each
file; every load verifies them, and a cache that is truncated, zeroed, missing a file or foreign is rebuilt with
a warning (``rebuilt`` / ``cache_rebuilt``). Temporary folders of killed builds are removed on every load.

Cost, measured on a shared 2-core VM (numbers vary about 2x with its load), page cache warm, for the 13,394-image
imagenette2-224 folder (134 MiB of JPEGs) at presize 131 (a 690 MB cache): hashing the source files takes 0.3 to
0.8 s on every load (about 6 s once from a cold disk); verifying the cache 0.45 to 0.65 s (1.0 to 1.5 GB/s:
SHA-256 over a read-only map, up to 8 threads). A cache hit went from 0.3 s to 1.5 to 2 s; the build (17 to 28 s
with 2 workers, 22 s before) gains one checksum pass, about as long as a check. A quick-profile-sized subset
(1,500 of these images, 100 + 50 per class, a 77 MB cache) loads from its cache in 0.13 s in all. For the chapter profile (full-size Imagenette,
1.5 GB of JPEGs, a 19 GB cache at presize 460) expect about 1 s of source hashing and, not measured, a few
seconds of verification with 8 hash threads, next to the ~19 GB copy to the GPU that every load makes anyway.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from sota_ablate.data import _decode
from sota_ablate.data.checksum import file_checksum, file_digests, verify_checksum
from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError
from sota_ablate.data.sources import Item, Items, relative_key
from sota_ablate.data.staging import Staging, discard, remove_stale
from sota_ablate.data.workers import WorkerDied, Workers

logger = logging.getLogger(__name__)

CACHE_FORMAT = "sota_ablate-uint8-cache-v2"  # v2: the key hashes file contents; meta.json holds checksums
_INLINE_MAX = 32  # decode this few images in the parent process: a pool costs more than it saves
_SPARE_BYTES = 16 * 2**20  # room asked beyond images.npy: sizes.npy, meta.json, bad.json, the filesystem's own
_FILES = ("images.npy", "sizes.npy", "bad.json")


@dataclass
class CachedImages:
    """Decoded images, in the order of the items given to ``build_cache``.

    Attributes:
        images: ``uint8 [N, 3, L, L]`` canvases (CPU, memory-mapped from the cache file).
        sizes: ``int32 [N, 2]``: height and width of each image inside its canvas.
        labels: ``int64 [N]``.
        keys: relative path of each image (the cache's identity).
        digests: SHA-256 (hex) of each image file's bytes, as hashed for this load.
        folder: the cache folder.
        bad: relative path -> error of the images that could not be decoded (their rows are blank; skip them).
        hit: True when the cache was loaded rather than built.
        rebuilt: True when a cache existed but failed its check (truncated, overwritten, foreign) and was rebuilt.
        seconds: time spent hashing, checking and building or loading.
    """

    images: Tensor
    sizes: Tensor
    labels: Tensor
    keys: list[str]
    folder: Path
    hit: bool
    seconds: float
    bad: dict[str, str] = field(default_factory=dict)
    digests: list[str] = field(default_factory=list)
    rebuilt: bool = False

    @property
    def canvas(self) -> int:
        """The side ``L`` of the square canvas."""
        return int(self.images.shape[-1])


def cache_key(keys: Sequence[str], digests: Sequence[str], presize: int, max_aspect: float) -> str:
    """A hash of (relative paths, file contents' SHA-256, presize, max_aspect): the cache's file name.

    Args:
        keys: the images' relative paths, in cache order.
        digests: the SHA-256 of each image file's bytes (``checksum.file_digests``).
        presize: short side in the cache.
        max_aspect: the canvas' aspect cap.
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{presize}|{max_aspect!r}|{len(keys)}\n".encode())
    for key, file_digest in zip(keys, digests, strict=True):
        digest.update(f"{key}|{file_digest}\n".encode())
    return digest.hexdigest()[:32]


def build_cache(items: Items | Sequence[Item], cfg: DataConfig, root: Path | None = None) -> CachedImages:
    """Load the uint8 cache of ``items``, decoding and writing it first if it does not exist or fails its check.

    Args:
        items: an ``Items`` (its train then valid items are cached) or a sequence of ``(path, label)``.
        cfg: ``presize``, ``max_aspect``, ``cache_dir`` and ``workers`` are used.
        root: the folder relative paths are taken from (``items.root`` for an ``Items``; default: the common
            parent of the paths).

    Returns:
        The images in the order of ``items``.

    Raises:
        DataError: an image cannot be read or decoded (the message names it), or the cache cannot be written
            (not enough disk space, a read-only folder: the message says how much is needed and where).
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
    keys = [relative_key(path, root) for path, _ in items]
    digests = file_digests([path for path, _ in items])
    hashed = time.perf_counter() - start
    folder = cfg.cache_root() / cache_key(keys, digests, cfg.presize, cfg.max_aspect)
    remove_stale(folder.parent)
    hit, rebuilt = False, False
    if os.path.lexists(folder):  # a file or a broken link in its place is damage too, repaired the same way
        problem = check_cache(folder, len(items))
        if problem is None:
            hit = True
            logger.info("loading the uint8 cache %s", folder)
        else:
            logger.warning("the image cache %s is damaged (%s): rebuilding it", folder, problem)
            discard(folder)
            rebuilt = True
    if not hit:
        _write_cache(items, root, cfg, folder)
    images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: writable for torch, never saved
    sizes = np.load(folder / "sizes.npy")
    bad_file = folder / "bad.json"
    bad = json.loads(bad_file.read_text()) if bad_file.is_file() else {}
    if images.shape[0] != len(items) or sizes.shape != (len(items), 2):
        raise DataError(f"the cache {folder} does not match the dataset: delete the folder so that it is rebuilt.")
    seconds = time.perf_counter() - start
    logger.info(
        "%d images in a %dx%d uint8 canvas (%s, %.1f s, of which %.1f s hashing the files)",
        len(items),
        images.shape[-2],
        images.shape[-1],
        "cache hit" if hit else "rebuilt" if rebuilt else "built",
        seconds,
        hashed,
    )
    return CachedImages(
        images=torch.from_numpy(images),
        sizes=torch.from_numpy(sizes),
        labels=torch.tensor([label for _, label in items], dtype=torch.int64),
        keys=keys,
        folder=folder,
        hit=hit,
        seconds=seconds,
        bad=bad,
        digests=digests,
        rebuilt=rebuilt,
    )


def check_cache(folder: Path, n: int) -> str | None:
    """None when the cache ``folder`` of ``n`` images is complete and unchanged, else what is wrong, in words.

    Reads every byte of the cache (see the module docstring for the cost).
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError) as error:
        return f"meta.json cannot be read ({error})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return f"meta.json is not a {CACHE_FORMAT} cache"
    if meta.get("n") != n:
        return f"it holds {meta.get('n')} images, not {n}"
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or not {"images.npy", "sizes.npy"} <= set(checksums):
        return "meta.json has no checksums"
    for name in _FILES:
        if name in checksums:
            problem = verify_checksum(folder / name, checksums[name])
            if problem is not None:
                return problem
        elif (folder / name).exists():
            return f"{name} was not written with the cache"
    return None


def _write_cache(items: list[Item], root: Path, cfg: DataConfig, folder: Path) -> None:
    paths = [path for path, _ in items]
    workers = min(cfg.n_workers(), len(items))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(folder, error) from error
    needed = _SPARE_BYTES  # until the canvas is known
    try:
        # Workers exit first (killed on any error), then the temporary folder goes: nothing is left behind.
        with Staging(folder) as staging, Workers(workers if len(items) > _INLINE_MAX else 1) as pool:
            probed = pool.map(_decode.probe, paths, chunksize=64)
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
            shape = (len(items), 3, canvas, canvas)
            needed = int(np.prod(shape)) + _SPARE_BYTES
            check_space(folder.parent, needed)
            logger.info(
                "decoding %d images from %s into a %dx%d uint8 cache (%.2f GiB) with %d workers",
                len(items),
                root,
                canvas,
                canvas,
                np.prod(shape) / 2**30,
                workers,
            )
            file = staging.path / "images.npy"
            _allocate(file, shape, folder.parent, needed)
            tasks = [
                (str(file), i, path, w, h)
                for i, (path, (w, h)) in enumerate(zip(paths, targets, strict=True))
                if i not in bad
            ]
            progress = tqdm(
                total=len(tasks), desc="decoding", unit="img", mininterval=1.0, dynamic_ncols=True, disable=None
            )
            try:
                with progress:
                    for index, error in pool.map_unordered(_decode.write_one, tasks, chunksize=16):
                        if error is not None:
                            bad[index] = error
                        progress.update(1)
            finally:
                _decode.release()
            check_unreadable([(paths[i], e) for i, e in sorted(bad.items())], len(items), cfg.max_bad_fraction)
            sizes = np.array([(0, 0) if i in bad else (h, w) for i, (w, h) in enumerate(targets)], dtype=np.int32)
            _finish(staging, items, root, cfg, canvas, sizes, bad)
    except WorkerDied as error:
        raise _worker_died(folder, needed, error) from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(folder.parent, needed) from error
        raise _unwritable(folder, error) from error


def _finish(
    staging: Staging,
    items: list[Item],
    root: Path,
    cfg: DataConfig,
    canvas: int,
    sizes: np.ndarray,
    bad: dict[int, str],
) -> None:
    """Write sizes.npy, bad.json and meta.json (with every file's checksum) and publish the folder."""
    np.save(staging.path / "sizes.npy", sizes)
    if bad:
        unreadable = {relative_key(items[i][0], root): error for i, error in sorted(bad.items())}
        (staging.path / "bad.json").write_text(json.dumps(unreadable, indent=1))
    checksums = {name: file_checksum(staging.path / name) for name in _FILES if (staging.path / name).is_file()}
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "n": len(items),
        "canvas": canvas,
        "presize": cfg.presize,
        "max_aspect": cfg.max_aspect,
        "root": str(root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checksums": checksums,
    }
    (staging.path / "meta.json").write_text(json.dumps(meta, indent=1))
    staging.publish()  # False: another process finished the same cache first (same contents: its folder is used)


def _allocate(file: Path, shape: tuple[int, ...], where: Path, needed: int) -> None:
    """Create ``images.npy`` (zeros) and reserve its blocks, so that writing through maps can never hit a full disk."""
    array = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape)
    del array  # workers write through their own maps of the same file
    fd = os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(where, needed) from error
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: checked above
            raise
    finally:
        os.close(fd)


def check_space(where: Path, needed: int) -> None:
    """Raise DataError when the filesystem of ``where`` has fewer than ``needed`` bytes free."""
    free = shutil.disk_usage(where).free
    if free < needed:
        raise _no_space(where, needed, free)


def _no_space(where: Path, needed: int, free: int | None = None) -> DataError:
    if free is None:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = 0
    return DataError(
        f"not enough disk space for the image cache in {where}: it needs {_human(needed)} and "
        f"{_human(free)} is free. Pass --cache-dir DIR (or set SOTA_ABLATE_CACHE / data.cache_dir) to a folder on "
        "a disk with room, or free some space there."
    )


def _worker_died(folder: Path, needed: int, error: WorkerDied) -> DataError:
    try:
        free = _human(shutil.disk_usage(folder.parent).free)
    except OSError:
        free = "unknown"
    return DataError(
        f"a decode worker died ({', '.join(error.exits) or 'killed'}) while building the image cache under "
        f"{folder.parent}, which needs {_human(needed)} ({free} free now). A SIGBUS there means the disk filled "
        "up under the memory-mapped file; SIGKILL is usually the out-of-memory killer. Pass --cache-dir DIR (or "
        "set SOTA_ABLATE_CACHE / data.cache_dir) to a folder on a disk with room, or free some disk space or "
        "memory (fewer data.workers), and run again: nothing was left behind."
    )


def _unwritable(folder: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot write the image cache under {folder.parent} ({error}): free some disk space or pass --cache-dir "
        "DIR (or set SOTA_ABLATE_CACHE / data.cache_dir) to a writable folder."
    )


def _human(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_unreadable(bad: Sequence[tuple[str, str]], n: int, max_fraction: float) -> None:
    """Raise DataError naming the files when more than ``max_fraction`` of the ``n`` images (or all) are bad."""
    if bad and (len(bad) > max_fraction * n or len(bad) >= n):
        listed = "; ".join(f"{path} ({error})" for path, error in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"cannot decode {len(bad)} of {n} image(s), more than the {max_fraction:.0%} that are skipped: "
            f"{listed}{more}. Remove or replace these files."
        )
