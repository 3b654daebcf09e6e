"""Record the per-epoch metrics of the `quick` profile's `baseline` cell on a generated image folder.

The file it writes pins the training numbers across refactors: ``tests/test_golden.py`` reruns it and compares
bit for bit. To record with 3417d69 itself (before grids shipped with the package), set ``GRID`` to that commit's
``ablations/chapter.toml`` as an absolute path (the same cells as today's built-in ``chapter``).

    python tests/golden/record_baseline.py tests/golden/quick_baseline.<capability>.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_image_folder

GRID = "chapter"  # a built-in grid (3417d69, before grids shipped with the package, needs its path)
KEYS = ("train_loss", "valid_loss", "accuracy", "lr", "image_size")


def record(workdir: Path) -> dict[str, object]:
    """Run the cell in ``workdir`` and return its metrics by key: a list of (step, value) per key."""
    import torch
    from mlflow.tracking import MlflowClient

    data = make_image_folder(workdir / "images", n_train=30, n_valid=10, seed=7)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "sota_ablate", "run-grid", "--grid", GRID, "--profile", "quick"]
    cmd += ["--cells", "baseline", "--data", str(data), "--tracking-uri", uri, "--device", "cpu", "--no-progress"]
    cmd += ["--cache-dir", str(workdir / "cache"), "--checkpoint-dir", str(workdir / "ckpt")]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run-grid failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sota_ablate")
    runs = client.search_runs([exp.experiment_id], "tags.cell = 'baseline'")
    assert len(runs) == 1, f"{len(runs)} baseline runs"
    run_id = runs[0].info.run_id
    metrics = {
        k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in KEYS
    }
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "metrics": metrics}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = record(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["metrics"]["accuracy"]))
