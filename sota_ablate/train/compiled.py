"""``--compile``: the model's forward (and so its backward, through AOTAutograd) under ``torch.compile``.

The compiled graphs are cached by inductor on disk (its FX graph and autotuning caches, on by default), so the
second cell with the same model and shapes, and every later run, loads them instead of compiling again; the
cache folder is ``$TORCHINDUCTOR_CACHE_DIR`` (default: ``inductor/`` in sota_ablate's cache folder). Training
and evaluation each compile once per image size (``model.train()`` and ``model.eval()`` are separate graphs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

DEFAULT_BACKEND = "inductor"


def compile_forward(
    model: nn.Module, cache_dir: str | Path | None = None, backend: str = DEFAULT_BACKEND
) -> Callable[[Tensor], Tensor]:
    """``torch.compile(model)``: a callable sharing ``model``'s parameters (the model itself stays uncompiled).

    Args:
        model: the model.
        cache_dir: inductor's cache folder unless ``$TORCHINDUCTOR_CACHE_DIR`` is set.
        backend: ``inductor`` (the default); the tests use ``aot_eager`` (no C++ compilation).
    """
    import torch

    if cache_dir is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "inductor"))
    return torch.compile(model, backend=backend)
