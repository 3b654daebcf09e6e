"""pyplot (the Agg backend, imported on first use: matplotlib is heavy) and PNG saving for every report figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 150


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG (no timestamp metadata, so reruns give the same bytes) and close it (the MLflow docs'
    advice: build in a function, close after use, so a long report never accumulates open figures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)
    return path
