"""The training and validation sets of a run as MLflow datasets (``tracking.DatasetSpec``): names, sources, digests.

Metadata only, nothing is copied: the digest comes from the data's own fingerprint (``content_sha256`` in
``ImageData.info``: classes, and per split every image's path, label and file SHA-256), hashed with the split's
name, so two runs share a dataset row in MLflow exactly when they saw the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sota_ablate import schema
from sota_ablate.data import DataConfig
from sota_ablate.data.sources import imagenette_archive
from sota_ablate.tracking import DatasetSpec

DIGEST_LENGTH = 32  # hex characters (MLflow keeps at most 36)


def dataset_name(info: Mapping[str, Any]) -> str:
    """``imagenette-<variant>`` or the folder's name."""
    if info.get("source") == "folder":
        return Path(str(info.get("path", "folder"))).name or "folder"
    return f"imagenette-{info.get('variant', 'full')}"


def dataset_source(cfg: DataConfig, info: Mapping[str, Any]) -> str:
    """Where the images come from: the folder, or the Imagenette archive's URL."""
    if info.get("source") == "folder":
        return str(Path(str(info.get("path", cfg.path))).absolute())
    return imagenette_archive(str(info.get("variant", cfg.variant)), cfg.download_url)[0]


def split_digest(info: Mapping[str, Any], split: str) -> str:
    """The split's digest: the data's fingerprint with the split's name."""
    content = str(info.get("content_sha256", ""))
    return hashlib.sha256(f"{content}:{split}".encode()).hexdigest()[:DIGEST_LENGTH]


def data_specs(cfg: DataConfig, info: Mapping[str, Any]) -> list[DatasetSpec]:
    """The training set (context ``training``) and validation set (``validation``) of data ``info``."""
    name, source = dataset_name(info), dataset_source(cfg, info)
    split = f"{info.get('split', 'official')} split"
    specs = []
    for part, context, count in (
        ("train", schema.DATASET_TRAINING, info.get("n_train")),
        ("valid", schema.DATASET_VALIDATION, info.get("n_valid")),
    ):
        profile = {"images": count, "classes": info.get("n_classes"), "split": split}
        specs.append(DatasetSpec(f"{name}/{part}", split_digest(info, part), source, context, profile))
    return specs
