"""Names of datasets and of their classes: Imagenette and Imagewoof by their WordNet ids, anything else as it is.

``dataset_name`` names the data a run saw (``ImageData.info["dataset"]``): ``Imagenette`` or ``Imagewoof`` when
every class folder is one of that dataset's WordNet ids (the official archives, or a subset of their classes),
else the dataset folder's name. The report uses it for its titles and keeps the book's published numbers and
Imagenette-specific text for Imagenette. ``readable`` gives class names from those maps (the folder name
otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMAGENETTE = "Imagenette"
IMAGEWOOF = "Imagewoof"

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

# Imagewoof's 10 dog breeds (github.com/fastai/imagenette#imagewoof; torchvision's WordNet names).
IMAGEWOOF_NAMES = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}

KNOWN_DATASETS = {IMAGENETTE: IMAGENETTE_NAMES, IMAGEWOOF: IMAGEWOOF_NAMES}
KNOWN_CLASS_NAMES = {**IMAGENETTE_NAMES, **IMAGEWOOF_NAMES}  # the WordNet ids of both are disjoint


def known_dataset(classes: Iterable[str]) -> str | None:
    """``Imagenette`` or ``Imagewoof`` when every class is one of its WordNet ids, else None."""
    found = set(classes)
    for name, names in KNOWN_DATASETS.items():
        if found and found <= set(names):
            return name
    return None


def dataset_name(classes: Iterable[str], cfg: Any) -> str:
    """The dataset's name: a known dataset by its classes, else the folder's name (``cfg``: a ``DataConfig``)."""
    known = known_dataset(classes)
    if known is not None:
        return known
    if cfg.source == "imagenette":
        return IMAGENETTE
    return Path(str(cfg.path)).expanduser().resolve().name or str(cfg.path)


def class_names(classes: Iterable[str]) -> dict[str, str]:
    """Readable name of each class: from the known map of its dataset, else the folder name itself."""
    classes = list(classes)
    known = known_dataset(classes)
    names = KNOWN_DATASETS[known] if known is not None else {}
    return {c: names.get(c, c) for c in classes}


def readable(classes: Iterable[str]) -> list[str]:
    """Each class folder name as a person would say it (``n03028079`` -> ``church``)."""
    return list(class_names(classes).values())
