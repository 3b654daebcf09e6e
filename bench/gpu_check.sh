#!/usr/bin/env bash
# One prepared device check (bench/README.md): bench/gpu_check.sh [--dry-run] [--out DIR] [--data DIR]
# Results: DIR/gpu_check.json (default $GPU_CHECK_OUT, else ./gpu_check_out). mlflow wheels, when the machine
# lacks mlflow, are installed offline from $GPU_CHECK_WHEELS (default .gpu-data/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c "import mlflow" 2>/dev/null; then
  WHEELS="${GPU_CHECK_WHEELS:-.gpu-data/wheels}"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" mlflow
fi
exec "$PY" bench/gpu_check.py "$@"
