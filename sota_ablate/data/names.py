"""Readable names of dataset classes (Imagenette's WordNet ids); any other class name is shown as it is."""

from __future__ import annotations

from collections.abc import Iterable

IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


def readable(classes: Iterable[str]) -> list[str]:
    """Each class folder name as a person would say it (``n03028079`` -> ``church``)."""
    return [IMAGENETTE_NAMES.get(c, c) for c in classes]
