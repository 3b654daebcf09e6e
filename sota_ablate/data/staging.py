"""Temporary folders of the cache build: locked while their build lives, removed once it is dead.

A cache is written into ``<cache_dir>/.<key>.tmp-XXXX/`` and renamed to ``<cache_dir>/<key>/`` when complete,
so a killed build never leaves a folder that looks complete, but it does leave its temporary folder (up to the
whole cache's size). Each build holds an exclusive ``flock`` on ``<temporary folder>/.lock`` for as long as its
process lives (the kernel drops it when the process dies, however it dies); ``remove_stale`` deletes only the
temporary folders whose lock it can take, so never one that a live build (this or another process, this or
another machine's view of a local disk) is writing. A temporary folder without a lock file (a build killed
between ``mkdtemp`` and the lock, or one from an older version) is removed once it is an hour old. Bad caches
are moved to ``.<key>.bad-XXXX/`` before removal, so that no reader ever sees a half-deleted cache.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK = ".lock"
_UNLOCKED_STALE_SECONDS = 3600.0


class Staging:
    """A locked temporary folder next to ``folder``; ``publish`` renames it to ``folder``, ``close`` removes it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        self._fd: int | None = None
        try:  # locked under another name, then renamed: a lock file that can be seen is always already held
            self._fd = os.open(self.path / f"{LOCK}-new", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._fd, f"{os.getpid()}\n".encode())
            os.rename(self.path / f"{LOCK}-new", self.path / LOCK)
        except OSError:
            self.close()
            raise

    def publish(self) -> bool:
        """Rename the finished folder to ``folder`` (atomic); False if another process published it first."""
        os.unlink(self.path / LOCK)  # keep the lock held (the fd) but leave no lock file in the cache
        try:
            os.replace(self.path, self.folder)
        except OSError:
            if not self.folder.is_dir():
                raise
            return False
        return True

    def close(self) -> None:
        """Remove the temporary folder (if not published) and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale(parent: Path) -> list[Path]:
    """Delete the temporary and discarded folders under ``parent`` whose build is dead; returns those removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not (".tmp-" in entry.name or ".bad-" in entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and _is_dead(path):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    if removed:
        logger.warning(
            "removed %d temporary folder(s) of killed cache builds under %s: %s",
            len(removed),
            parent,
            ", ".join(p.name for p in removed),
        )
    return removed


def discard(folder: Path) -> None:
    """Move a bad cache folder out of the way (one atomic rename), then delete it; a file or a symbolic link in
    the folder's place (whatever it points to) is unlinked."""
    if folder.is_symlink() or not folder.is_dir():
        try:
            folder.unlink()
        except FileNotFoundError:  # another process removed it first
            pass
        except OSError:  # a read-only cache folder: the rebuild that follows says so
            pass
        return
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.bad-", dir=folder.parent))
    except OSError:  # a read-only cache folder: the rebuild that follows says so
        return
    try:
        os.replace(folder, aside)  # onto the empty folder just made
    except OSError:  # another process moved it first
        aside.rmdir()
        return
    shutil.rmtree(aside, ignore_errors=True)


def _is_dead(path: Path) -> bool:
    """True when no live build holds ``path``'s lock (or, without a lock file, when the folder is an hour old)."""
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - path.stat().st_mtime > _UNLOCKED_STALE_SECONDS
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a live build
        return False
    finally:
        os.close(fd)  # closing drops our lock too
    return True
