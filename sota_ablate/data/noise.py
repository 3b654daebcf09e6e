"""Noisy training labels: the dataset's ``noisy_imagenette.csv`` columns, or seeded symmetric noise.

Imagenette publishes ``noisy_imagenette.csv`` (``path``, ``noisy_labels_0`` … ``noisy_labels_50``, ``is_valid``):
per image, a label with 0, 1, 5, 25 or 50 % of the labels flipped. ``load_data`` reads every such column of the
CSV in the dataset folder (``read_noisy_csv``), matched to the training images by relative path, into the shared
data once; a cell then selects its column (``ImageData.with_label_noise``, from ``TrainConfig.label_noise``). Validation
labels always stay clean.

Without the CSV the noise is symmetric: exactly ``round(level / 100 * n)`` training labels are flipped, each to a
class drawn uniformly among the other classes, by a ``torch.Generator`` seeded with ``SYMMETRIC_SEED + level``:
not the cell's seed, so every cell at one level sees the same wrong labels (as the CSV would give them).

On a per-class subset (the ``quick`` profile) each kept image has its CSV label, so the realised flip fraction
differs from the nominal level: the cell logs it (``label_noise.flip_fraction``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sota_ablate.data.errors import DataError

NOISE_LEVELS = (0, 1, 5, 25, 50)  # percent of wrong training labels, the CSV's columns
NOISY_CSV = "noisy_imagenette.csv"  # in the dataset folder, next to train/ and val/
SYMMETRIC_SEED = 1616  # symmetric noise at level L draws from torch.Generator().manual_seed(SYMMETRIC_SEED + L)
_COLUMN = re.compile(r"noisy_labels_(\d+)")


@dataclass(frozen=True)
class NoisyColumns:
    """The CSV's noisy labels of the training set.

    Attributes:
        file: the CSV's path.
        columns: level -> ``int64 [n_train]`` labels in the training set's order (on its device).
        problems: why the CSV cannot give noisy labels (training images it does not list, labels naming no
            class); empty when it can. Checked before training (``check_label_noise``).
    """

    file: str
    columns: dict[int, Tensor]
    problems: tuple[str, ...] = ()


def column_name(level: int) -> str:
    """The CSV column of a noise level: ``noisy_labels_25``."""
    return f"noisy_labels_{level}"


def read_noisy_csv(
    root: Path, train_keys: Sequence[str], classes: Sequence[str], device: torch.device
) -> NoisyColumns | None:
    """The ``noisy_labels_*`` columns of ``root/noisy_imagenette.csv`` for the training images, or None without one.

    Args:
        root: the dataset folder (holding ``train/`` and ``val/``).
        train_keys: the training images' paths relative to ``root`` (``train/n01440764/x.JPEG``), in order.
        classes: the class names; a CSV label is one of them.
        device: where the label tensors live.

    Raises:
        DataError: the CSV cannot be read or has no ``path`` column or no ``noisy_labels_<level>`` column.
    """
    path = root / NOISY_CSV
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            fields = list(reader.fieldnames or [])
            rows = {row["path"]: row for row in reader} if "path" in fields else {}
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(
            f"cannot read {path} ({error}): fix or remove it (without it, label noise is symmetric)."
        ) from error
    levels = [int(m.group(1)) for f in fields if (m := _COLUMN.fullmatch(f)) and int(m.group(1)) in NOISE_LEVELS]
    if "path" not in fields or not levels:
        raise DataError(
            f"{path} has columns {', '.join(fields) or 'none'}: a noisy-label CSV needs 'path' and "
            f"noisy_labels_<n> columns (n in {', '.join(map(str, NOISE_LEVELS))}); fix or remove it."
        )
    index = {name: i for i, name in enumerate(classes)}
    unmatched = [key for key in train_keys if key not in rows]
    problems = []
    if unmatched:
        problems.append(
            f"{len(unmatched)} of {len(train_keys)} training images are not in {path} (e.g. "
            f"{', '.join(unmatched[:3])}): use the CSV that belongs to this dataset, or remove it to get seeded "
            "symmetric noise"
        )
    columns: dict[int, Tensor] = {}
    for level in sorted(levels):
        name = column_name(level)
        labels = [rows[key][name] if key in rows else classes[0] for key in train_keys]
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            problems.append(
                f"column {name} of {path} has labels that are no class folder ({', '.join(unknown[:3])}): use the "
                "CSV that belongs to this dataset, or remove it"
            )
            continue
        columns[level] = torch.tensor([index[label] for label in labels], dtype=torch.int64, device=device)
    return NoisyColumns(file=str(path), columns=columns, problems=tuple(problems))


def symmetric_noise(labels: Tensor, n_classes: int, level: int) -> Tensor:
    """``labels`` with exactly ``round(level / 100 * n)`` of them flipped, each to another class uniformly.

    Which labels and to what is drawn from ``torch.Generator().manual_seed(SYMMETRIC_SEED + level)``: the same for
    every call with the same labels and level, whatever the cell's seed.

    Raises:
        DataError: fewer than two classes (no other class to flip to).
    """
    if level == 0:
        return labels
    if n_classes < 2:
        raise DataError(f"label_noise = {level} needs at least 2 classes to flip labels between; the data has 1.")
    generator = torch.Generator().manual_seed(SYMMETRIC_SEED + level)
    n = int(labels.shape[0])
    k = round(level / 100 * n)
    chosen = torch.randperm(n, generator=generator)[:k]
    offsets = torch.randint(1, n_classes, (k,), generator=generator)  # 1 .. C-1: never the label itself
    noisy = labels.cpu().clone()
    noisy[chosen] = (noisy[chosen] + offsets) % n_classes
    return noisy.to(labels.device)


def check_label_noise(noisy: NoisyColumns | None, levels: Iterable[int]) -> None:
    """Raise DataError, before any training, when a level the cells ask for cannot be served by the CSV's columns
    ``noisy`` (None: no CSV, every level is symmetric noise)."""
    wanted = sorted({level for level in levels if level != 0})
    if not wanted or noisy is None:
        return
    if noisy.problems:
        raise DataError(f"label_noise = {wanted[0]}: {'; '.join(noisy.problems)}.")
    missing = [level for level in wanted if level not in noisy.columns]
    if missing:
        raise DataError(
            f"label_noise = {missing[0]}: {noisy.file} has no column {column_name(missing[0])} (it has "
            f"{', '.join(column_name(lv) for lv in sorted(noisy.columns))}): use one of those levels."
        )


def noisy_labels(
    clean: Tensor, n_classes: int, noisy: NoisyColumns | None, level: int
) -> tuple[Tensor, dict[str, Any]]:
    """The training labels at ``level`` % noise, and what to log about them.

    Args:
        clean: the clean training labels.
        n_classes: the number of classes (symmetric noise draws among them).
        noisy: the CSV's columns, or None without a CSV (symmetric noise).
        level: the percentage of wrong labels; 0 returns ``clean`` itself.

    Returns:
        ``(labels, {"source": ..., "flipped": ..., "flip_fraction": ...})``: the source is ``clean``,
        ``csv column noisy_labels_<level>`` or ``symmetric, seed <SYMMETRIC_SEED + level>``; ``flipped`` counts
        the labels that differ from the clean ones, ``flip_fraction`` is their fraction (the realised rate).

    Raises:
        DataError: the CSV cannot serve ``level`` (see ``check_label_noise``).
    """
    if level == 0:
        return clean, {"source": "clean", "flipped": 0, "flip_fraction": 0.0}
    check_label_noise(noisy, [level])
    if noisy is not None:
        labels, source = noisy.columns[level], f"csv column {column_name(level)}"
    else:
        labels, source = symmetric_noise(clean, n_classes, level), f"symmetric, seed {SYMMETRIC_SEED + level}"
    flipped = int((labels != clean).sum().item())
    return labels, {"source": source, "flipped": flipped, "flip_fraction": flipped / max(1, len(clean))}
