"""The cache build on a full disk, with dying or interrupted workers, and a cache or dataset changed under it."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from sota_ablate.data import DataConfig, DataError, ImageData, _decode, load_data
from sota_ablate.data import cache as cache_module
from sota_ablate.data import staging as staging_module
from tests.conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]
_ORIGINAL_WRITE = _decode.write_one
_DIE_ON = {"name": "", "signal": signal.SIGKILL}  # set before the pool forks: the workers see it


def _dying_write(task: tuple[str, int, str, int, int]) -> tuple[int, str | None]:
    """``write_one`` that kills its own process on the image named ``_DIE_ON["name"]``."""
    if Path(task[2]).name == _DIE_ON["name"]:
        os.kill(os.getpid(), _DIE_ON["signal"])
        time.sleep(10)
    return _ORIGINAL_WRITE(task)


def _slow_write(task: tuple[str, int, str, int, int]) -> tuple[int, str | None]:
    time.sleep(60)
    return _ORIGINAL_WRITE(task)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail the test (instead of hanging the suite) if the block runs longer than ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: the cache build hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def config(root: Path, cache: Path, **kwargs: object) -> DataConfig:
    return DataConfig(source="folder", path=str(root), cache_dir=str(cache), presize=24, **kwargs)  # type: ignore[arg-type]


def images_by_path(data: ImageData) -> dict[str, torch.Tensor]:
    return dict(zip(data.train.paths + data.valid.paths, [*data.train.images, *data.valid.images], strict=True))


def assert_same_data(a: ImageData, b: ImageData) -> None:
    for split in ("train", "valid"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.paths == y.paths
        assert torch.equal(x.images, y.images) and torch.equal(x.sizes, y.sizes) and torch.equal(x.labels, y.labels)


def leftovers(cache: Path) -> list[str]:
    """Everything under the cache folder that is not a complete cache."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".") or not (p / "meta.json").is_file())


def live_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", n_train=14, n_valid=6)  # 60 images: more than _INLINE_MAX


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_INLINE_MAX", 0)


# --------------------------------------------------------------------------------------------------------------
# Full disks and dying workers


def test_full_disk_is_refused_before_writing(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=5 * 2**10))
    start = time.perf_counter()
    with pytest.raises(DataError, match="not enough disk space for the image cache") as error:
        load_data(config(folder, cache), "cpu")
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert str(cache) in message and "5.0 KiB is free" in message and "MiB and" in message  # needed and free
    assert "--cache-dir DIR" in message and "free some space" in message
    assert leftovers(cache) == [] and not any(cache.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGBUS, signal.SIGKILL])
def test_a_dying_worker_is_a_clear_error_not_a_hang(
    folder: Path, tmp_path: Path, pooled: None, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(_decode, "write_one", _dying_write)
    monkeypatch.setitem(_DIE_ON, "name", "n02102040_3.JPEG")
    monkeypatch.setitem(_DIE_ON, "signal", sig)
    start = time.perf_counter()
    with deadline(60), pytest.raises(DataError, match="a decode worker died") as error:
        load_data(config(folder, cache, workers=2), "cpu")
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert sig.name in message and str(cache) in message and "--cache-dir DIR" in message
    assert leftovers(cache) == []
    assert live_children() == []
    monkeypatch.setattr(_decode, "write_one", _ORIGINAL_WRITE)
    data = load_data(config(folder, cache, workers=2), "cpu")  # the next run builds the cache normally
    assert data.info["cache_hit"] is False and len(data.train) == 42


def test_keyboard_interrupt_kills_the_workers_and_leaves_nothing(
    folder: Path, tmp_path: Path, pooled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(_decode, "write_one", _slow_write)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            load_data(config(folder, cache, workers=2), "cpu")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < 15
    assert live_children() == []
    assert leftovers(cache) == []
    for _ in range(100):  # the executor's manager thread ends too (the interpreter would wait for it at exit)
        managers = [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread"]
        if not managers:
            break
        time.sleep(0.05)
    assert managers == []


_SIGTERM_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from tests import test_data_reliability as t
from sota_ablate.data import _decode, cache, load_data
cache._INLINE_MAX = 0
_decode.write_one = t._slow_write
load_data(t.config({folder!r}, {cache!r}, workers=2), "cpu")
"""


def test_sigterm_of_the_parent_ends_its_workers_and_the_next_run_cleans_up(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = textwrap.dedent(_SIGTERM_CHILD.format(repo=str(REPO), folder=str(folder), cache=str(cache)))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(child.pid)
        for _ in range(300):  # wait for the workers and the staging folder
            if len(parent.children()) >= 2 and leftovers(cache):
                break
            time.sleep(0.05)
        workers = parent.children()
        assert len(workers) >= 2 and leftovers(cache), "the build never started"
        child.send_signal(signal.SIGTERM)  # the default action: the parent dies at once, without cleanup
        child.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [], "decode workers outlived their parent"
    finally:
        child.kill()
    assert leftovers(cache) != []  # a killed build's temporary folder: the next build removes it
    data = load_data(config(folder, cache), "cpu")
    assert data.info["cache_hit"] is False and leftovers(cache) == []


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: the real full-disk test mounts a tmpfs and needs root")
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs for the real full-disk test ({result.stderr.decode()})")


@pytest.mark.parametrize("layer", ["free space check", "fallocate", "SIGBUS in the workers"])
def test_a_real_full_disk(
    folder: Path, tmp_path: Path, pooled: None, monkeypatch: pytest.MonkeyPatch, layer: str
) -> None:
    """A 2 MiB tmpfs and a 60-image cache of about 6 MiB, with the earlier defences turned off one by one."""
    disk = tmp_path / "small-disk"
    _mount_tmpfs(disk, "2m")
    try:
        cfg = DataConfig(source="folder", path=str(folder), cache_dir=str(disk / "cache"), presize=120, workers=2)
        if layer != "free space check":
            monkeypatch.setattr(cache_module, "check_space", lambda where, needed: None)
        if layer == "SIGBUS in the workers":
            monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: None)
        expected = "a decode worker died .*SIGBUS" if layer == "SIGBUS in the workers" else "not enough disk space"
        with deadline(60), pytest.raises(DataError, match=expected) as error:
            load_data(cfg, "cpu")
        assert str(disk / "cache") in str(error.value) and "--cache-dir DIR" in str(error.value)
        assert leftovers(disk / "cache") == [] and live_children() == []
        assert shutil.disk_usage(disk).used < 2**20  # nothing half-written left on the small disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# --------------------------------------------------------------------------------------------------------------
# A damaged cache, a changed dataset, stale temporary folders


def _zero(images: Path) -> None:
    offset = np.load(images, mmap_mode="r").offset
    with open(images, "r+b") as file:
        file.seek(offset)
        file.write(bytes(images.stat().st_size - offset))


def _truncate(images: Path) -> None:
    os.truncate(images, images.stat().st_size // 2)


def _foreign(images: Path) -> None:
    array = np.load(images)
    np.save(images, np.random.default_rng(0).integers(0, 255, array.shape, dtype=np.uint8))


DAMAGE = {
    "zeroed": _zero,
    "truncated": _truncate,
    "missing": lambda images: images.unlink(),
    "foreign": _foreign,
    "sizes zeroed": lambda images: np.save(images.parent / "sizes.npy", np.zeros((60, 2), dtype=np.int32)),
    "meta garbage": lambda images: (images.parent / "meta.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_is_rebuilt_with_a_warning(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cfg = config(folder, tmp_path / "cache")
    fresh = load_data(cfg, "cpu")
    cache = Path(fresh.info["cache_folder"])
    fresh_copy = {k: v.clone() for k, v in images_by_path(fresh).items()}
    del fresh  # release the memory map before damaging the file under it
    DAMAGE[damage](cache / "images.npy")
    with caplog.at_level(logging.WARNING, logger="sota_ablate.data.cache"):
        rebuilt = load_data(cfg, "cpu")
    assert rebuilt.info["cache_rebuilt"] is True and rebuilt.info["cache_hit"] is False
    assert rebuilt.info["cache_folder"] == str(cache)
    assert any("damaged" in r.message and "rebuilding" in r.message for r in caplog.records), caplog.text
    assert {k: torch.equal(v, fresh_copy[k]) for k, v in images_by_path(rebuilt).items()} == dict.fromkeys(
        fresh_copy, True
    )
    again = load_data(cfg, "cpu")
    assert again.info["cache_hit"] is True and again.info["cache_rebuilt"] is False
    assert_same_data(again, rebuilt)
    assert leftovers(tmp_path / "cache") == []


def _bmp(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")  # a BMP's size depends only on its dimensions


def test_a_replaced_image_with_the_same_name_size_and_mtime_is_new_data(folder: Path, tmp_path: Path) -> None:
    path = folder / "train" / "n02102040" / "same.bmp"
    _bmp(path, 1)
    cfg = config(folder, tmp_path / "cache")
    before = load_data(cfg, "cpu")
    old_pixels = images_by_path(before)["train/n02102040/same.bmp"].clone()
    stat = path.stat()
    _bmp(path, 2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns

    after = load_data(cfg, "cpu")
    assert after.info["cache_hit"] is False and after.info["cache_folder"] != before.info["cache_folder"]
    assert after.info["content_sha256"] != before.info["content_sha256"]
    new_pixels = images_by_path(after)["train/n02102040/same.bmp"]
    assert not torch.equal(new_pixels, old_pixels)
    reference = load_data(config(folder, tmp_path / "fresh-cache"), "cpu")  # a build from scratch
    assert_same_data(after, reference)
    assert reference.info["content_sha256"] == after.info["content_sha256"]


def test_content_fingerprint_is_stable_and_not_volatile(folder: Path, tmp_path: Path, pooled: None) -> None:
    one = load_data(config(folder, tmp_path / "a", workers=1), "cpu")
    two = load_data(config(folder, tmp_path / "b", workers=2), "cpu")
    hit = load_data(config(folder, tmp_path / "a", workers=1), "cpu")
    fingerprints = {d.info["content_sha256"] for d in (one, two, hit)}
    assert len(fingerprints) == 1 and len(fingerprints.pop()) == 64
    assert not "content_sha256".startswith("cache_")  # the runner's volatile keys are the cache_* family
    subset = load_data(config(folder, tmp_path / "a", train_per_class=5), "cpu")
    chapter = load_data(config(folder, tmp_path / "a", split="chapter"), "cpu")
    assert len({one.info["content_sha256"], subset.info["content_sha256"], chapter.info["content_sha256"]}) == 3


def test_stale_temporary_folders_are_removed_but_not_live_ones(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = cache / ".0123abcd.tmp-dead"
    dead.mkdir()
    (dead / "images.npy").write_bytes(bytes(1000))
    (dead / staging_module.LOCK).write_text("12345\n")  # nobody holds its lock: its build is dead
    live = cache / ".0123abcd.tmp-live"
    live.mkdir()
    (live / staging_module.LOCK).write_text(f"{os.getpid()}\n")
    old_unlocked, young_unlocked = cache / ".4567.tmp-old", cache / ".4567.tmp-young"
    old_unlocked.mkdir()
    young_unlocked.mkdir()
    hour_ago = time.time() - 2 * 3600
    os.utime(old_unlocked, (hour_ago, hour_ago))
    discarded = cache / ".89ab.bad-x"
    (discarded / "sub").mkdir(parents=True)
    (discarded / staging_module.LOCK).write_text("1\n")
    unrelated = cache / "not-a-temporary-folder"
    unrelated.mkdir()

    fd = os.open(live / staging_module.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a build in progress (another open file: the lock conflicts even here)
    try:
        data = load_data(config(folder, cache), "cpu")
    finally:
        os.close(fd)
    assert data.info["cache_hit"] is False
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted([live.name, young_unlocked.name, unrelated.name, Path(data.info["cache_folder"]).name])
