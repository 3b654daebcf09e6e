"""Everything that must be measured on a GPU, in one command (about 8 minutes on an H100/H200); see bench/README.md.

Steps, each a subprocess with its wall time and log kept: (1) the CUDA tests and the placement tests; (2) the
throughput table (bench/throughput.py) at 128 and 224 px in fp32/fp16/bf16, with the torch.compile A/B; (3) one
chapter-profile cell under a 16 GiB memory cap (``--gpu-memory-gib 16``), and the same cell with the data forced
on the device and forced on the host (the staged path's speed); (4) four cells with ``--cells-per-gpu 2`` against
one at a time. Results go to ``<out>/gpu_check.json`` (every step's command, return code, seconds and the runs'
logged placement and images/s), logs to ``<out>/logs/``.

``--dry-run`` runs the same steps on the CPU at smoke scale on a generated image folder (``--cells-per-gpu`` is
then checked to be refused): it proves the script works before device time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def step(name: str, cmd: list[str], out: Path, results: list[dict[str, Any]], timeout: int) -> int:
    """Run ``cmd`` from the repository root, log it to ``out/logs/<name>.log``, record it in ``results``."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = round(time.perf_counter() - start, 1)
    tail = log.read_text().strip().splitlines()[-3:]
    print(f"   rc {rc} in {seconds} s: {' | '.join(tail)}", flush=True)
    results.append({"step": name, "cmd": cmd, "rc": rc, "seconds": seconds, "log": str(log.relative_to(out))})
    return rc


def runs_of(store: str, experiment: str) -> list[dict[str, Any]]:
    """The cell runs of ``experiment``: name, status, placement params, images/s, wall time (needs mlflow)."""
    import mlflow

    mlflow.set_tracking_uri(store)
    df = mlflow.search_runs(experiment_names=[experiment])
    keep = [c for c in df.columns if c.startswith("params.placement.") or c in (
        "tags.mlflow.runName", "status", "metrics.mean_images_per_s", "metrics.wall_time_s", "params.compile")]  # fmt: skip
    cells = df[df["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in df else df
    return json.loads(cells[keep].to_json(orient="records"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", "gpu_check_out"), help="results folder")
    p.add_argument("--data", default=None, help="a train/val folder (default: .gpu-data/imagenette2-144-webp)")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at smoke scale")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    store = f"sqlite:///{out}/mlflow.db"
    common = ["--tracking-uri", store, "--cache-dir", str(out / "cache"), "--no-progress"]
    if args.dry_run:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import make_image_folder

        data = make_image_folder(out / "images", n_train=8, n_valid=4)
        device, profile, scale = "cpu", "smoke", "1"
        tests = ["tests/test_placement.py", "-k", "identical or gather or refused"]
        bench = ["--device", "cpu", "--model", "xresnet18", "--configs", "32:8", "--images", "64", "--valid", "16",
                 "--precisions", "fp32", "--limit-steps", "2", "--no-smoke"]  # fmt: skip
    else:
        data = Path(args.data) if args.data else ROOT / ".gpu-data" / "imagenette2-144-webp"
        archive = ROOT / ".gpu-data" / "imagenette2-144-webp.tar.gz"
        if not data.is_dir() and archive.is_file():
            with tarfile.open(archive) as tar:
                tar.extractall(archive.parent, filter="data")
        device, profile, scale = "cuda", "chapter", "0.2"  # 1 epoch per cell
        tests = ["tests/test_cuda.py", "tests/test_placement.py"]
        bench = ["--device", "cuda", "--configs", "128:128,224:64", "--precisions", "fp32,fp16,bf16", "--compile",
                 "--images", "4096", "--valid", "1024", "--no-smoke"]  # fmt: skip
    step("tests", [PY, "-m", "pytest", "-q", "-x", *tests], out, results, 240)
    step("throughput", [PY, "bench/throughput.py", *bench, "--out", str(out / "throughput.json")], out, results, 240)
    run = [PY, "-m", "sota_ablate", "run", "--cell", "baseline", "--profile", profile, "--device", device,
           "--data", str(data), "--epochs-scale", scale, "--force", *common]  # fmt: skip
    cap = ["--gpu-memory-gib", "16"] if device == "cuda" else []
    for name, extra in (("placement_16gb", cap), ("placement_device", ["--data-on", "device"]),
                        ("placement_host", ["--data-on", "host"])):  # fmt: skip
        step(name, [*run, "--experiment", name, *extra], out, results, 240)
    grid = [PY, "-m", "sota_ablate", "run-grid", "--grid", "chapter", "--cells", "baseline,fp16,normalize,mixup",
            "--profile", profile, "--device", device, "--data", str(data), "--epochs-scale", scale, "--force",
            *common]  # fmt: skip
    step("cells_per_gpu_1", [*grid, "--experiment", "cells_per_gpu_1"], out, results, 300)
    rc = step("cells_per_gpu_2", [*grid, "--experiment", "cells_per_gpu_2", "--cells-per-gpu", "2"], out, results, 300)
    if args.dry_run:  # on a CPU it must be refused, with the CLI's error
        text = (out / "logs" / "cells_per_gpu_2.log").read_text()
        results[-1]["refused_as_expected"] = rc == 2 and "error: --cells-per-gpu 2" in text
    summary: dict[str, Any] = {"dry_run": args.dry_run, "steps": results, "runs": {}}
    try:
        for name in ("placement_16gb", "placement_device", "placement_host", "cells_per_gpu_1", "cells_per_gpu_2"):
            summary["runs"][name] = runs_of(store, name)
    except Exception as err:  # mlflow missing or a step failed: the logs say why
        summary["runs_error"] = f"{type(err).__name__}: {err}"
    throughput = out / "throughput.json"
    if throughput.is_file():
        summary["throughput"] = json.loads(throughput.read_text())
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    failed = [r["step"] for r in results if r["rc"] != 0 and not r.get("refused_as_expected")]
    print(f"gpu_check: {len(results) - len(failed)}/{len(results)} steps ok; results in {out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
