"""Device-resident datasets and batch iterators (airbench's GPU loader with fastai's DataLoaders semantics).

``load_data`` lists the items, loads (or builds) the uint8 cache and moves it to the device once. The iterators
then only index it: training batches are slices of an on-device ``torch.randperm`` with ``drop_last=True``
(fastai's train DataLoader), validation batches run in order without ``drop_last``, and all augmentation runs on
whole batches on the device (``augment.py``). No host syncs: the loop may run ahead of the GPU.

Validation is deterministic, so its transformed images are computed once per size and kept on the device as
uint8 (a rounding of at most 0.5/255 per pixel): evaluation then costs one uint8 → float conversion per batch.
On a CPU the training set's area pre-shrink (also deterministic) is likewise done once per size (float16).
On CUDA the training batches are prepared one or two ahead in a background thread on a side stream
(``train_loader``).

When the cache does not fit on the device (``placement.py``), it stays in host memory (pinned on CUDA): each
training batch's rows are gathered there into one of two staging buffers and copied to the device on a copy
stream, one batch ahead (``_HostGather``); the shuffle, labels, sizes and augmentation stay on the device, so the
batches are the same whichever placement, for the same seed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sota_ablate.data.augment import AugmentConfig, preshrink, train_transform, valid_transform
from sota_ablate.data.cache import build_cache, check_unreadable
from sota_ablate.data.checksum import file_digests, fingerprint
from sota_ablate.data.config import DataConfig
from sota_ablate.data.errors import DataError
from sota_ablate.data.names import dataset_name
from sota_ablate.data.noise import NoisyColumns, noisy_labels, read_noisy_csv
from sota_ablate.data.placement import (
    MemoryNeeds,
    Placement,
    PlacementRequest,
    cache_bytes,
    choose_placement,
    device_budget,
)
from sota_ablate.data.placement import valid_bytes as valid_set_bytes
from sota_ablate.data.sources import Item, Items, list_items, relative_key

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 256 * 2**20  # host → device copies and valid precomputation go in chunks of about this size


@dataclass
class ImageSet:
    """One split, resident on its device (its images on the host instead when ``staged``).

    Attributes:
        images: ``uint8 [N, 3, L, L]`` canvases, each image at the top left (see ``cache.py``); on the training
            device, or in (pinned) host memory when ``staged``.
        sizes: ``int32 [N, 2]``: height and width of each image in its canvas (on the training device).
        labels: ``int64 [N]`` (on the training device).
        paths: the image paths, relative to the dataset folder.
        presize: the short side of the cached images (sets the area pre-shrink); None: the canvas side.
        staged: the images stay on the host; batches are gathered there and copied (``placement.py``).
    """

    images: Tensor
    sizes: Tensor
    labels: Tensor
    paths: list[str]
    presize: int | None = None
    staged: bool = False
    _valid_cache: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)
    _shrunk: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        """The training device: where the labels, sizes and every batch live (the images too unless staged)."""
        return self.labels.device


@dataclass
class ImageData:
    """The training and validation sets of one run.

    Attributes:
        train: the training set.
        valid: the validation set.
        classes: class names; label ``i`` is ``classes[i]``.
        noisy: the noisy training labels of the dataset's ``noisy_imagenette.csv`` (``noise.py``), None without one.
        info: what to log: the dataset identity (``DataConfig.identity``), ``dataset`` (its name:
            ``names.dataset_name``), ``label_noise_csv`` and ``label_noise_csv_sha256`` (the CSV's file name and
            content digest, when there is one), ``n_train``, ``n_valid``,
            ``n_classes``, ``content_sha256``, ``canvas``, ``cache_hit``, ``cache_rebuilt``, ``cache_seconds``
            and ``cache_folder``. ``content_sha256`` fingerprints the data itself (``checksum.fingerprint``: the
            class names and, per split, each image's relative path, label and file SHA-256), so it changes when
            an image is replaced even under the same name, size and mtime. The ``cache_*`` keys describe how the
            data was loaded this time (volatile), not which data.
        placement: where the cache went and why (None: ``load_data`` was not asked to plan, all on its device).
    """

    train: ImageSet
    valid: ImageSet
    classes: list[str]
    info: dict[str, Any]
    noisy: NoisyColumns | None = None
    placement: Placement | None = None

    def with_label_noise(self, level: int) -> tuple[ImageData, dict[str, Any]]:
        """The data a cell trains on at ``level`` % noise (``noise.noisy_labels``), and what to log about its
        labels. It shares everything with this data (images, caches, validation set) but the training labels.

        Raises:
            DataError: the CSV cannot serve ``level`` (``noise.check_label_noise``).
        """
        labels, info = noisy_labels(self.train.labels, len(self.classes), self.noisy, level)
        if level == 0:
            return self, info
        train = replace(self.train, labels=labels)  # the caches (dict fields) are shared, not copied
        return replace(self, train=train), info


def load_data(cfg: DataConfig, device: torch.device | str, placement: PlacementRequest | None = None) -> ImageData:
    """List the items, build or load the uint8 cache and move it to ``device`` once (or keep it on the host).

    Args:
        cfg: the data configuration (validated here).
        device: the training device: where the images live for the whole run (a CUDA device for speed).
        placement: plan where the cache goes (``placement.choose_placement``); None: on ``device``, unplanned.

    Returns:
        The training and validation sets.

    Raises:
        DataError: a bad configuration, dataset, download or image; a placement that cannot fit.
    """
    device = torch.device(device)
    if placement is not None:
        placement.validate()
    items = list_items(cfg)
    # One cache for the union, sorted by relative path: both splits and every split seed share it.
    union = sorted(items.train + items.valid, key=lambda item: relative_key(item[0], items.root))
    cached = build_cache(union, cfg, items.root)
    train, valid = _skip_unreadable(items, cached.bad, cfg.max_bad_fraction)
    decision = None
    if placement is not None:
        shape = tuple(cached.images.shape[1:])
        needs_valid = valid_set_bytes(len(valid), placement.valid_sizes)
        needs = MemoryNeeds(cache_bytes(shape, len(train) + len(valid)), needs_valid, placement.step_bytes)
        budget = placement.budget_bytes if placement.budget_bytes is not None else device_budget(device)
        decision = choose_placement(placement.data_on, device.type, needs, budget)
        logger.info("data placement: %s (%s)", decision.data_on, decision.reason)
    staged = decision is not None and decision.staged
    row = {key: i for i, key in enumerate(cached.keys)}
    sets = []
    for split in (train, valid):
        rows = [row[relative_key(path, items.root)] for path, _ in split]
        sets.append(
            ImageSet(
                images=(_rows_to_host if staged else _rows_to_device)(cached.images, rows, device),
                sizes=cached.sizes[rows].to(device),
                labels=torch.tensor([label for _, label in split], dtype=torch.int64, device=device),
                paths=[cached.keys[i] for i in rows],
                presize=cfg.presize,
                staged=staged,
            )
        )
    noisy = read_noisy_csv(items.root, sets[0].paths, items.classes, device)
    info: dict[str, Any] = {
        **cfg.identity(),
        "dataset": dataset_name(items.classes, cfg),
        **(_csv_info(noisy) if noisy is not None else {}),
        "n_train": len(train),
        "n_valid": len(valid),
        "n_classes": len(items.classes),
        **({"bad_images": len(cached.bad)} if cached.bad else {}),
        "content_sha256": _content_sha256(items, train, valid, cached.keys, cached.digests),
        "canvas": cached.canvas,
        "cache_hit": cached.hit,
        "cache_rebuilt": cached.rebuilt,
        "cache_seconds": round(cached.seconds, 2),
        "cache_folder": str(cached.folder),
    }
    logger.info(
        "data on %s%s: %d train, %d valid, %dx%d canvas",
        device,
        " (staged from host memory)" if staged else "",
        len(train),
        len(valid),
        cached.canvas,
        cached.canvas,
    )
    return ImageData(
        train=sets[0], valid=sets[1], classes=list(items.classes), info=info, noisy=noisy, placement=decision
    )


def _csv_info(noisy: NoisyColumns) -> dict[str, str]:
    """The noisy-label CSV's name and SHA-256: part of the data identity (its labels decide the noisy cells')."""
    path = Path(noisy.file)
    return {"label_noise_csv": path.name, "label_noise_csv_sha256": file_digests([str(path)])[0]}


def _content_sha256(items: Items, train: list[Item], valid: list[Item], keys: list[str], digests: list[str]) -> str:
    """``checksum.fingerprint`` of the classes and of the items of both splits (with their file digests)."""
    digest = dict(zip(keys, digests, strict=True))
    splits = []
    for name, split in (("train", train), ("valid", valid)):
        listed = [(relative_key(path, items.root), label) for path, label in split]
        splits.append((name, [(key, label, digest[key]) for key, label in listed]))
    return fingerprint(items.classes, splits)


def _skip_unreadable(items: Items, bad: dict[str, str], max_fraction: float) -> tuple[list[Item], list[Item]]:
    """The train and valid items without the images the cache could not decode (``bad``), with a warning.

    Raises:
        DataError: too many are unreadable (the limit may be lower than when the cache was built), or a class
            is left without images in a split.
    """
    if not bad:
        return items.train, items.valid
    n = len(items.train) + len(items.valid)
    check_unreadable(sorted(bad.items()), n, max_fraction)
    logger.warning(
        "skipping %d unreadable image(s) of %d: %s", len(bad), n, ", ".join(f"{k} ({v})" for k, v in bad.items())
    )
    kept = []
    for name, split in (("train", items.train), ("val", items.valid)):
        ok = [item for item in split if relative_key(item[0], items.root) not in bad]
        empty = sorted(set(range(len(items.classes))) - {label for _, label in ok})
        if empty:
            raise DataError(
                f"{name}/ has no readable image left in class {items.classes[empty[0]]!r} after skipping unreadable "
                f"files ({', '.join(sorted(bad))}): replace them."
            )
        kept.append(ok)
    return kept[0], kept[1]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training batches per epoch: ``n // batch_size`` (``drop_last=True``, as fastai's train DataLoader).

    Raises:
        DataError: fewer images than one batch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size = {batch_size}: it must be >= 1.")
    if n < batch_size:
        raise DataError(
            f"{n} training images make no full batch of {batch_size} (the last partial batch is dropped): "
            "lower the batch size or use more images (data.train_per_class)."
        )
    return n // batch_size


def train_batches(
    ds: ImageSet, batch_size: int, size: int, aug: AugmentConfig, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of augmented training batches: on-device shuffle, ``drop_last=True``.

    Args:
        ds: the training set.
        batch_size: images per batch.
        size: output side in pixels.
        aug: the augmentation settings.
        generator: the generator for the shuffle and the augmentation (default: the device's global one).

    Yields:
        ``(x, y)``: ``float32 [B, 3, size, size]`` in [0, 1] (channels_last on CUDA) and ``int64 [B]`` labels.
    """
    steps = steps_per_epoch(len(ds), batch_size)
    source, canvas = ds.images, None
    if ds.device.type == "cpu":  # the area pre-shrink once per size, not per batch (see ``_shrunk_images``)
        source, canvas = _shrunk_images(ds, size), (int(ds.images.shape[-2]), int(ds.images.shape[-1]))
    rows = source.flatten(1)  # a view; on the CPU a uint8 index_select over 2-D rows is ~25x faster than 4-D
    order = torch.randperm(len(ds), device=ds.device, generator=generator)
    gather = _HostGather(rows, order, batch_size, ds.device) if ds.staged else None
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        if gather is not None:
            images = gather.next().view(-1, *source.shape[1:])
        else:
            images = rows.index_select(0, index).view(-1, *source.shape[1:])
        sizes = ds.sizes.index_select(0, index)
        x = train_transform(images, sizes, size, aug, presize=ds.presize, generator=generator, canvas=canvas)
        yield _layout(x), ds.labels.index_select(0, index)


class _HostGather:
    """The training batches' rows of a host-resident set, copied to ``device`` one batch ahead of their use.

    The epoch's order (drawn on the device, as for a device-resident set) comes to the host once. Each batch's
    rows are gathered into one of two staging buffers (pinned on CUDA) and copied on a copy stream; the batch
    ``next`` returns was copied while the previous one was being augmented, and the stream that uses it waits
    on an event (no host sync). A buffer is refilled only once the copy that read it has finished. On the CPU
    the same code runs without streams (the "copy" is the gathered buffer itself).
    """

    def __init__(self, rows: Tensor, order: Tensor, batch_size: int, device: torch.device) -> None:
        self.rows, self.batch_size, self.device = rows, batch_size, device
        self.order = order.cpu()  # one sync per epoch (in the prefetch thread on CUDA)
        self.steps = len(self.order) // batch_size
        self.cuda = device.type == "cuda"
        shape = (batch_size, rows.shape[1])
        self.buffers = [torch.empty(shape, dtype=rows.dtype, pin_memory=self.cuda) for _ in range(2)]
        self.events: list[Any] = [None, None]
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.step = 0
        self.ahead: tuple[Tensor, Any] | None = self._copy(0) if self.steps else None

    def _copy(self, step: int) -> tuple[Tensor, Any]:
        slot = step % 2
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copy that last read this buffer is done
        index = self.order[step * self.batch_size : (step + 1) * self.batch_size]
        buffer = self.buffers[slot]
        torch.index_select(self.rows, 0, index, out=buffer)
        if not self.cuda:
            return buffer, None
        with torch.cuda.stream(self.stream):
            out = buffer.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.events[slot] = done
        return out, done

    def next(self) -> Tensor:
        """The next batch's rows on the device; starts copying the one after."""
        assert self.ahead is not None, "no batch left in this epoch"
        out, done = self.ahead
        self.step += 1
        self.ahead = self._copy(self.step) if self.step < self.steps else None
        if done is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(done)
            out.record_stream(consumer)  # made on the copy stream, used (and freed) on the consumer's
        return out


def train_loader(
    ds: ImageSet, batch_size: int, size: int, aug: AugmentConfig, prefetch: int = 2
) -> Iterator[tuple[Tensor, Tensor]]:
    """``train_batches`` as the training loop uses it: on CUDA, prepared ahead in a background thread.

    On CUDA the loop is bound by the host's kernel launches at small sizes, so the batches of one epoch are
    built in a thread on a side stream, up to ``prefetch`` ahead, while the main thread launches the model
    (torch releases the GIL inside each op, and the backward pass runs in autograd's own threads). The
    thread draws from its own generator, seeded from the global CPU RNG when the epoch starts, so a seed
    still fixes every draw whatever the threads' timing. No host sync: the loop's stream waits on an event.
    Elsewhere (CPU: the compute already uses every core) this is ``train_batches`` itself.

    Args:
        ds: the training set.
        batch_size: images per batch.
        size: output side in pixels.
        aug: the augmentation settings.
        prefetch: batches prepared ahead on CUDA; 0 builds them in the calling thread.

    Yields:
        The batches of ``train_batches``.
    """
    if ds.device.type != "cuda" or prefetch < 1:
        yield from train_batches(ds, batch_size, size, aug)
        return
    generator = torch.Generator(device=ds.device)
    generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))  # CPU RNG: no device sync
    yield from _prefetched(train_batches(ds, batch_size, size, aug, generator), ds.device, prefetch)


def _prefetched(
    batches: Iterator[tuple[Tensor, Tensor]], device: torch.device, depth: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Run ``batches`` in a daemon thread on a side CUDA stream, ``depth`` batches ahead of the consumer."""
    stream = torch.cuda.Stream(device)
    ready: queue.Queue[tuple[Tensor, Tensor, Any] | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Tensor, Tensor, Any] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.cuda.device(device), torch.cuda.stream(stream), torch.no_grad():
                for x, y in batches:
                    done = torch.cuda.Event()
                    done.record(stream)
                    if not put((x, y, done)):
                        return
            put(None)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    thread = threading.Thread(target=work, name="sota_ablate-prefetch", daemon=True)
    thread.start()
    consumer = torch.cuda.current_stream(device)
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            x, y, done = item
            consumer.wait_event(done)  # the GPU waits, the host does not
            x.record_stream(consumer)  # made on the side stream, used (and freed) on the loop's
            y.record_stream(consumer)
            yield x, y
    finally:
        stop.set()
        thread.join()


def valid_batches(ds: ImageSet, batch_size: int, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Validation batches in order (no ``drop_last``): centre crop, resized to ``size``.

    The transformed set is computed on the first call for each size and kept on the device as uint8.

    Yields:
        ``(x, y)``: ``float32 [B, 3, size, size]`` in [0, 1] (channels_last on CUDA) and ``int64 [B]`` labels.
    """
    _check_batch(batch_size)
    cached = ds._valid_cache.get(size)
    if cached is None:
        cached = _precompute_valid(ds, size)
        ds._valid_cache[size] = cached
    for start in range(0, len(ds), batch_size):
        x = cached[start : start + batch_size].float().mul_(1 / 255)
        yield _layout(x), ds.labels[start : start + batch_size]


def tta_batches(ds: ImageSet, batch_size: int, size: int, aug: AugmentConfig) -> Iterator[tuple[Tensor, Tensor]]:
    """Validation images with the TRAINING augmentation, in order, no ``drop_last`` (fastai's ``Learner.tta``).

    Yields:
        ``(x, y)`` as ``valid_batches``, freshly augmented on every call.
    """
    _check_batch(batch_size)
    for start in range(0, len(ds), batch_size):
        end = start + batch_size
        x = train_transform(_to_device(ds, ds.images[start:end]), ds.sizes[start:end], size, aug, presize=ds.presize)
        yield _layout(x), ds.labels[start:end]


def _shrunk_images(ds: ImageSet, size: int) -> Tensor:
    """The training canvases after the area pre-shrink for ``size``, computed once and kept (one size at a time).

    The pre-shrink does not depend on the random draws, and on a CPU pooling every batch's canvases cost about
    as much as the rest of the augmentation; the kept float16 copy is about twice the size of the uint8 set. On
    CUDA pooling is cheap and runs in the loader's thread, so the memory is not spent there.
    """
    shrunk = ds._shrunk.get(size)
    if shrunk is None:
        ds._shrunk.clear()  # progressive resizing moves to the next size for good
        shrunk = preshrink(ds.images, size, ds.presize)
        ds._shrunk[size] = shrunk
    return shrunk


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size = {batch_size}: it must be >= 1.")


def _layout(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def _chunk_rows(images: Tensor) -> int:
    per_image = max(1, images[0].numel() * images.element_size()) if len(images) else 1
    return max(1, _CHUNK_BYTES // per_image)


def _precompute_valid(ds: ImageSet, size: int) -> Tensor:
    """The whole validation set through ``valid_transform``, as uint8 on its device."""
    out = torch.empty((len(ds), 3, size, size), dtype=torch.uint8, device=ds.device)
    if ds.device.type == "cuda":
        out = out.contiguous(memory_format=torch.channels_last)
    chunk = max(1, _chunk_rows(ds.images) // 4)  # float32 working copies are 4x the uint8 bytes
    for start in range(0, len(ds), chunk):
        end = start + chunk
        x = valid_transform(_to_device(ds, ds.images[start:end]), ds.sizes[start:end], size, presize=ds.presize)
        out[start:end] = x.mul_(255).round_()
    return out


def _to_device(ds: ImageSet, images: Tensor) -> Tensor:
    """A slice of ``ds.images`` on the training device (a copy only when the set is staged on the host)."""
    return images.to(ds.device, non_blocking=True) if images.device != ds.device else images


def _rows_to_host(images: Tensor, rows: list[int], device: torch.device) -> Tensor:
    """``images[rows]`` in host memory for a staged set: pinned when ``device`` is CUDA (asynchronous copies).

    On the CPU contiguous rows stay a view of the memory-mapped cache; otherwise one copy is made, chunk by
    chunk (no second full copy).
    """
    pinned = device.type == "cuda"
    n = len(rows)
    if not pinned:
        return _rows_to_device(images, rows, torch.device("cpu"))
    out = torch.empty((n, *images.shape[1:]), dtype=images.dtype, pin_memory=True)
    index, flat, chunk = torch.tensor(rows, dtype=torch.int64), out.flatten(1), _chunk_rows(images)
    for start in range(0, n, chunk):  # 2-D rows: a uint8 index_select is much faster than over 4-D
        torch.index_select(images.flatten(1), 0, index[start : start + chunk], out=flat[start : start + chunk])
    return out


def _rows_to_device(images: Tensor, rows: list[int], device: torch.device) -> Tensor:
    """``images[rows]`` on ``device``: a view when the rows are contiguous on the CPU, chunked pinned copies to CUDA.

    The cache is memory-mapped; gathering it chunk by chunk through a pinned staging buffer never holds a second
    full copy of the dataset in host memory.
    """
    n = len(rows)
    contiguous = n > 0 and rows == list(range(rows[0], rows[0] + n))
    if device.type == "cpu":
        return images[rows[0] : rows[0] + n] if contiguous else images[torch.tensor(rows, dtype=torch.int64)]
    out = torch.empty((n, *images.shape[1:]), dtype=images.dtype, device=device)
    if n == 0:
        return out
    pinned = device.type == "cuda"
    with torch.cuda.device(device) if pinned else contextlib.nullcontext():
        chunk = _chunk_rows(images)
        shape = (min(chunk, n), *images.shape[1:])
        staging = [torch.empty(shape, dtype=images.dtype, pin_memory=pinned) for _ in range(2)]
        events: list[Any] = [None, None]
        index = torch.tensor(rows, dtype=torch.int64)
        for k, start in enumerate(range(0, n, chunk)):
            end = min(start + chunk, n)
            buffer = staging[k % 2][: end - start]
            if events[k % 2] is not None:
                events[k % 2].synchronize()  # the copy that last read this buffer is done
            if contiguous:
                buffer.copy_(images[rows[0] + start : rows[0] + end])
            else:
                torch.index_select(images, 0, index[start:end], out=buffer)
            out[start:end].copy_(buffer, non_blocking=pinned)
            if pinned:
                events[k % 2] = torch.cuda.Event()
                events[k % 2].record()
        if pinned:
            torch.cuda.current_stream(device).synchronize()
    return out
