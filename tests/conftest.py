"""Shared fixtures: a tiny generated image folder (never the real dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WNIDS = ["n01440764", "n02102040", "n03028079"]


def make_image_folder(root: Path, n_train: int = 5, n_valid: int = 3, seed: int = 0) -> Path:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG with class-dependent colours (learnable), one greyscale."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_valid)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (40, 52) if i % 2 else (52, 40)
                base = np.zeros((h, w, 3), dtype=np.float64)
                base[..., c] = 180
                img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                pil = Image.fromarray(img)
                if i == 0 and c == 0:
                    pil = pil.convert("L")  # a greyscale JPEG, as Imagenette has
                pil.save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks(monkeypatch: pytest.MonkeyPatch):
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the environment (MLflow 3): without this, a
    test's store would become the default of every later test and of the processes they start."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import os

    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")
