"""Decode workers for the uint8 cache: PIL only (no torch), so worker processes start fast.

Each worker opens the cache file being written as a shared ``np.memmap`` and writes its images into their rows;
only the row index and an error message travel back to the parent, never the pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_OPEN: dict[str, np.ndarray] = {}


def probe(path: str) -> tuple[int, int] | str:
    """``(width, height)`` from the image header, or an error message."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # PIL raises many types for a bad file
        return f"{type(error).__name__}: {error}"


def target_size(width: int, height: int, presize: int, canvas: int) -> tuple[int, int]:
    """``(w, h)`` with the short side ``presize`` and the long side capped at ``canvas`` (squashed beyond)."""
    if width <= height:
        return presize, min(round(height * presize / width), canvas)
    return min(round(width * presize / height), canvas), presize


def decode(path: str, width: int, height: int) -> np.ndarray:
    """Decode ``path`` to an RGB ``uint8 [height, width, 3]`` array, bilinear with PIL's antialiasing.

    ``Image.draft`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 in the DCT domain while staying at least
    as large as the target (a large speed-up for big photos); ``convert("RGB")`` turns greyscale, CMYK, palette
    and RGBA images into RGB (alpha dropped, as fastai's and torchvision's loaders do). PIL's own conversion of a
    16-bit greyscale image (modes ``I;16*``, and ``I`` as PIL opens some 16-bit PNGs and TIFFs) clips every value
    above 255 to white, so those are scaled to 8 bits first (the high byte, as ``torchvision.io``'s
    ``decode_image`` + ``to_dtype(uint8, scale=True)`` does); 32-bit float images (mode ``F``) have no agreed
    range and are refused (``ValueError``: the file is reported as unreadable, with this message).
    """
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (width, height))
        rgb = _to_8bit(image).convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def _to_8bit(image: Image.Image) -> Image.Image:
    """``image`` itself, or for a 16-bit greyscale mode its high byte as an 8-bit greyscale image."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), mode="L")
    if image.mode == "F":
        raise ValueError(
            "a 32-bit floating-point image (PIL mode F) has no agreed pixel range: save it as 8- or 16-bit"
        )
    return image


def _target(file: str) -> np.ndarray:
    array = _OPEN.get(file)
    if array is None:
        _OPEN.clear()
        array = np.load(file, mmap_mode="r+")
        _OPEN[file] = array
    return array


def release() -> None:
    """Drop this process' map of the cache file (the parent calls it after decoding inline)."""
    _OPEN.clear()


def write_one(task: tuple[str, int, str, int, int]) -> tuple[int, str | None]:
    """Decode one image into row ``index`` of the cache file; edge-replicate it over the rest of the canvas.

    Args:
        task: ``(cache file, row index, image path, width, height)``.

    Returns:
        ``(index, None)``, or ``(index, error message)`` when the image cannot be decoded.
    """
    file, index, path, width, height = task
    try:
        pixels = decode(path, width, height)
    except Exception as error:  # PIL raises many types for a bad file
        return index, f"{type(error).__name__}: {error}"
    out = _target(file)[index]
    out[:, :height, :width] = pixels.transpose(2, 0, 1)
    # Replicate the right and bottom edges over the unused canvas: resampling near the image's border (bilinear,
    # area pre-shrink) then never mixes in pixels that are not part of the image.
    out[:, :height, width:] = out[:, :height, width - 1 : width]
    out[:, height:, :] = out[:, height - 1 : height, :]
    return index, None
