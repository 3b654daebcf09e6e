"""SHA-256 of the source images (the data's content identity) and of the cache files (the cache's self-check).

Three hashes, all SHA-256 (about 1.4 GiB/s per core with the SHA extensions; ``hashlib`` releases the GIL):

- ``file_digests``: each source image file's bytes. Part of the cache key, so a file replaced by another one with
  the same name, size and mtime gets a new cache instead of the stale pixels.
- ``fingerprint``: one digest over the classes and, per split, each item's relative path, label and file digest:
  the data a run saw (``content_sha256`` in ``ImageData.info``).
- ``file_checksum`` / ``verify_checksum``: a cache file's size and the digests of its 32 MiB chunks, recorded at
  build and checked (in threads) whenever the cache is loaded, so a truncated, zeroed, missing or foreign file
  is noticed.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sota_ablate.data.errors import DataError

CHUNK_BYTES = 32 * 2**20
_HASH_THREADS = 8  # chunks hashed at once (bounded by the cores and by memory bandwidth)


def file_digests(paths: Sequence[str]) -> list[str]:
    """The SHA-256 (hex) of each file's bytes, in order.

    A plain loop: for many small files (Imagenette) opening and reading them costs more than hashing, and threads
    only contend for the GIL between the two.

    Raises:
        DataError: a file cannot be read (the message names it).
    """
    out = []
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as file:
                out.append(hashlib.file_digest(file, "sha256").hexdigest())
        except OSError as error:
            raise DataError(f"cannot read {path} ({error}): check that the dataset folder is complete.") from error
    return out


def fingerprint(classes: Sequence[str], splits: Iterable[tuple[str, Iterable[tuple[str, int, str]]]]) -> str:
    """One SHA-256 (hex) over the class names and each split's ``(relative path, label, file digest)`` items."""
    digest = hashlib.sha256("classes|{}\n".format("|".join(classes)).encode())
    for name, items in splits:
        digest.update(f"split|{name}\n".encode())
        for key, label, file_digest in items:
            digest.update(f"{key}|{label}|{file_digest}\n".encode())
    return digest.hexdigest()


def file_checksum(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "chunk_bytes": CHUNK_BYTES, "sha256": [hex digest of each chunk]}`` of ``path``."""
    size = path.stat().st_size
    return {"bytes": size, "chunk_bytes": CHUNK_BYTES, "sha256": _chunk_digests(path, size, CHUNK_BYTES)}


def verify_checksum(path: Path, expected: Any) -> str | None:
    """None when ``path`` matches ``expected`` (a ``file_checksum``), else what is wrong with it, in words."""
    try:
        size, chunk, digests = int(expected["bytes"]), int(expected["chunk_bytes"]), list(expected["sha256"])
    except (KeyError, TypeError, ValueError):
        return f"the recorded checksum of {path.name} is malformed"
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"{path.name} has {actual} bytes, {size} were written (truncated or replaced)"
        if _chunk_digests(path, size, chunk) != digests:
            return f"{path.name} does not match the checksum recorded when it was written (overwritten or corrupt)"
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as error:
        return f"{path.name} cannot be read ({error})"
    return None


def _chunk_digests(path: Path, size: int, chunk: int) -> list[str]:
    """SHA-256 of each ``chunk`` bytes of the first ``size`` bytes, hashed from a read-only map (no copies)."""
    if size == 0:
        return []
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        if len(mapped) < size:
            return []
        with memoryview(mapped) as view:

            def one(start: int) -> str:
                return hashlib.sha256(view[start : min(start + chunk, size)]).hexdigest()

            starts = range(0, size, chunk)
            if len(starts) == 1:
                return [one(0)]
            with ThreadPoolExecutor(min(_HASH_THREADS, os.cpu_count() or 1, len(starts))) as pool:
                return list(pool.map(one, starts))
