"""Per-image predictions (each cell run's ``predictions.npz``, ``artifacts.predictions_npz``) and what the report
computes from them: per-image bootstrap intervals, per-class accuracy changes and calibration (expected
calibration error, reliability diagrams).

Runs older than the artifact have none: every function here returns None (or an empty result) for them, and the
report says "no per-image predictions in these runs". This module knows no technique: the array a metric is read
from (``plain``, or a technique's own, e.g. ``tta``) comes in as an argument.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from sota_ablate import schema
from sota_ablate.report import stats

log = logging.getLogger(__name__)

PLAIN = "plain"  # the array of the centre-crop validation probabilities
ECE_BINS = 15
NO_PREDICTIONS = "no per-image predictions in these runs (they predate the `predictions.npz` artifact)"


@dataclass(frozen=True)
class Predictions:
    """One run's validation predictions.

    Attributes:
        labels: true class per image [N].
        paths: image paths relative to the dataset [N].
        classes: class folder names [C].
        probabilities: array name (``plain``, ``tta``, ...) -> probabilities [N, C] (float32).
    """

    labels: np.ndarray
    paths: np.ndarray
    classes: tuple[str, ...]
    probabilities: Mapping[str, np.ndarray] = field(default_factory=dict)

    def correct(self, which: str = PLAIN) -> np.ndarray | None:
        """Per image, whether the ``which`` prediction is right (None when the run has no such array)."""
        probs = self.probabilities.get(which)
        return None if probs is None else probs.argmax(axis=1) == self.labels


def parse_predictions(blob: bytes) -> Predictions:
    """A ``predictions.npz`` (bytes) as ``Predictions``."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = arrays.pop("labels").astype(np.int64)
    paths = arrays.pop("paths")
    classes = tuple(str(c) for c in arrays.pop("classes"))
    return Predictions(labels, paths, classes, {k: v.astype(np.float32) for k, v in arrays.items()})


def read_predictions(tracker: Any, run_id: str) -> Predictions | None:
    """The run's ``predictions.npz``, or None when it has none (older runs) or it cannot be read."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = getattr(tracker, "client", None)
    if client is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, schema.PREDICTIONS, tmp)
            return parse_predictions(Path(local).read_bytes())
        except Exception as err:  # no artifact (older run) or unreadable: the report degrades, it does not fail
            log.debug("no predictions for run %s: %s", run_id, err)
            return None


def _shared(a: Mapping[int, Predictions], b: Mapping[int, Predictions], wa: str, wb: str) -> list[int]:
    """The seeds both cells have predictions for, on the same validation images, with the arrays asked for."""
    seeds = []
    for s in sorted(set(a) & set(b)):
        pa, pb = a[s], b[s]
        if wa in pa.probabilities and wb in pb.probabilities and np.array_equal(pa.paths, pb.paths):
            seeds.append(s)
    return seeds


@dataclass(frozen=True)
class ImageComparison:
    """A comparison of two cells over their per-image predictions.

    Attributes:
        seeds: the seeds both cells have predictions for.
        n_images: validation images.
        difference: accuracy with minus without over every seed and image, with the bootstrap interval
            (images resampled jointly across seeds, paired between the cells).
        class_changes: (class, accuracy change) per class, mean over seeds, largest gain first.
    """

    seeds: tuple[int, ...]
    n_images: int
    difference: stats.Estimate
    class_changes: tuple[tuple[str, float], ...]


def compare_images(
    with_cell: Mapping[int, Predictions], without: Mapping[int, Predictions], which_with: str, which_without: str
) -> ImageComparison | None:
    """The per-image comparison of two cells (``which_*``: the array each side is read from), None without
    predictions on both sides for a common seed."""
    seeds = _shared(with_cell, without, which_with, which_without)
    if not seeds:
        return None
    per_seed = []
    for s in seeds:
        a, b = with_cell[s].correct(which_with), without[s].correct(which_without)
        assert a is not None and b is not None
        per_seed.append(a.astype(float) - b.astype(float))
    difference = stats.bootstrap_mean(per_seed)
    labels = with_cell[seeds[0]].labels
    classes = with_cell[seeds[0]].classes
    mean_diff = np.mean(per_seed, axis=0)
    changes = []
    for c, name in enumerate(classes):
        mask = labels == c
        if mask.any():
            changes.append((name, float(mean_diff[mask].mean())))
    changes.sort(key=lambda item: -item[1])
    return ImageComparison(tuple(seeds), len(labels), difference, tuple(changes))


# ---------------------------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's bins: ``ECE_BINS`` equal-width confidence bins over [0, 1]."""

    edges: np.ndarray
    accuracy: np.ndarray  # per bin (NaN: empty bin)
    confidence: np.ndarray  # mean confidence per bin
    counts: np.ndarray


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Per equal-width confidence bin: accuracy, mean confidence, count (``scipy.stats.binned_statistic``)."""
    confidence = probabilities.max(axis=1).astype(float)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)
    acc = scipy.stats.binned_statistic(confidence, correct, "mean", bins=bins, range=(0.0, 1.0))
    conf = scipy.stats.binned_statistic(confidence, confidence, "mean", bins=bins, range=(0.0, 1.0))
    count = scipy.stats.binned_statistic(confidence, correct, "count", bins=bins, range=(0.0, 1.0))
    return Reliability(acc.bin_edges, acc.statistic, conf.statistic, count.statistic)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of (share of images in the bin) x |accuracy - mean confidence|
    (Guo et al. 2017, 15 bins)."""
    r = reliability(probabilities, labels, bins)
    n = r.counts.sum()
    if n == 0:
        return math.nan
    filled = r.counts > 0
    return float(np.sum(r.counts[filled] / n * np.abs(r.accuracy[filled] - r.confidence[filled])))


def _ece_over_seeds(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    return stats.mean([expected_calibration_error(p, y) for p, y in pairs])


@dataclass(frozen=True)
class Calibration:
    """ECE of two cells (mean over seeds) and their difference, each with the images-jointly-across-seeds
    bootstrap interval."""

    seeds: tuple[int, ...]
    ece_with: stats.Estimate
    ece_without: stats.Estimate
    difference: stats.Estimate


def compare_calibration(
    with_cell: Mapping[int, Predictions], without: Mapping[int, Predictions], which: str = PLAIN
) -> Calibration | None:
    """ECE with vs without a technique, from the ``which`` probabilities; None without shared predictions."""
    seeds = _shared(with_cell, without, which, which)
    if not seeds:
        return None
    n = len(with_cell[seeds[0]].labels)
    # one row per image: [probabilities with, probabilities without, label] for every seed, resampled together
    rows = [
        np.column_stack([with_cell[s].probabilities[which], without[s].probabilities[which], with_cell[s].labels])
        for s in seeds
    ]
    c = len(with_cell[seeds[0]].classes)

    def side(arrays: Sequence[np.ndarray], offset: int) -> float:
        return _ece_over_seeds([(r[:, offset : offset + c], r[:, 2 * c].astype(int)) for r in arrays])

    ece_with = stats.bootstrap_statistic(rows, lambda xs: side(xs, 0))
    ece_without = stats.bootstrap_statistic(rows, lambda xs: side(xs, c))
    difference = stats.bootstrap_statistic(rows, lambda xs: side(xs, 0) - side(xs, c))
    assert n == len(rows[0])
    return Calibration(tuple(seeds), ece_with, ece_without, difference)


def pooled_reliability(cell: Mapping[int, Predictions], which: str = PLAIN) -> Reliability | None:
    """The reliability diagram over every seed's images together (None without predictions)."""
    usable = [p for p in cell.values() if which in p.probabilities]
    if not usable:
        return None
    probs = np.concatenate([p.probabilities[which] for p in usable])
    labels = np.concatenate([p.labels for p in usable])
    return reliability(probs, labels)
