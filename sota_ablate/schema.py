"""The MLflow schema of sota_ablate: every tag, param key or prefix and metric key, named once.

Writers (``cell_run``, ``grid_run``, ``tracking``) and readers (``report/collect``) use these names; no other
module spells a key. The names are those of every store written so far (some tags bare, some prefixed with
``sota_ablate.``): old stores load as they are.

Runs:
- a **grid run** (tag ``sota_ablate.role = grid``): one per ``run-grid`` invocation (or resumed by a rerun);
- a **cell run**: one per cell and seed, nested under its grid run (tag ``mlflow.parentRunId``).

Per-epoch metrics are logged with ``step = epoch`` and derived from ``train.record.EpochRecord``: every field
that declares a metric key, ``valid_time_s``, and the technique-contributed ``extra`` (see ``epoch_metrics``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sota_ablate.train.record import EpochRecord

# --- Tags ----------------------------------------------------------------------------------------------------------
ROLE = "sota_ablate.role"  # "grid" on grid runs
ROLE_GRID = "grid"
COMPLETE = "sota_ablate.complete"  # "true" once a run finished everything; the only trustworthy "done"
FAILURE = "sota_ablate.failure"  # why a run failed or was interrupted (removed when it is resumed)
FAILURE_TYPE = "sota_ablate.failure_type"  # the exception's class name
OWNER = "sota_ablate.owner"  # host:pid of the process that holds a running run (``lease.py``)
HEARTBEAT = "sota_ablate.heartbeat"  # unix time of the owner's last sign of life
RESUMED_FROM = "sota_ablate.resumed_from_epoch"
RESUMES = "sota_ablate.resumes"
KIND = "sota_ablate.kind"  # "lr_find" on the runs of the lr-find command
KIND_LR_FIND = "lr_find"
LR_SOURCE = "sota_ablate.lr_source"  # "find" on a cell run whose lr = "find": train.lr is the finder's valley
LR_SOURCE_FIND = "find"
GRID = "grid"
GRID_HASH = "grid_hash"
CELL = "cell"
SEED = "seed"
TECHNIQUES = "techniques"  # "fp16,normalize" in the registry's order; "none" for the baseline
CONFIG_HASH = "config_hash"
PROFILE = "profile"
GIT_COMMIT = "git_commit"
DEVICE = "device"
PARENT = "mlflow.parentRunId"  # MLflow's own
# sweep grids (``generate = "sweep"`` / ``"budget"``), on every cell run; the grid run carries the key, reference, unit
SWEEP_KEY = "sweep_key"  # the swept recipe key ("epochs" for a budget grid, "label_noise", ...)
SWEEP_VALUE = "sweep_value"  # the cell's value of it, as a string ("20")
SWEEP_ARM = "sweep_arm"  # the cell's arm: "mixup", or the reference ("baseline")
SWEEP_REFERENCE = "sweep_reference"  # the arm every other is compared with
BUDGET_UNIT = "budget_unit"  # budget grids only: "epochs" or "flops"
RUN_NAME = "mlflow.runName"  # MLflow's own
NOTE = "mlflow.note.content"  # MLflow's own: a run's description (markdown), shown on its page
# MLflow's own experiment tag that picks the UI's layout: a training experiment (runs, models), not GenAI's
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's own tag of a run input: what the run used the dataset for
DATASET_TRAINING = "training"
DATASET_VALIDATION = "validation"


def technique_tag(name: str) -> str:
    """``technique.<name>`` = ``"true"`` on every cell run that uses the technique."""
    return f"technique.{name}"


# --- Params --------------------------------------------------------------------------------------------------------
TRAIN_PREFIX = "train."  # the resolved TrainConfig, flattened: train.lr, train.augment.max_rotate, ...
TECH_PREFIX = "tech."  # technique hyperparameters: tech.<technique>.<field>
DATA_PREFIX = "data."  # the data's identity and description: data.n_train, data.split, ...
MODEL_PARAMETERS = "model.parameters"
MODEL_N_OUT = "model.n_out"
STAGES = "stages"  # the recipe's fit_one_cycle stages (list of dicts)
DTYPE = "dtype"
TOTAL_STEPS = "total_steps"
CHANNELS_LAST = "channels_last"
CHECKPOINT_DIR = "checkpoint_dir"
EPOCH_METRIC_KEYS = "epoch_metric_keys"  # the per-epoch metrics this run logs (a technique may add some)
TRAIN_FLOPS = "train_flops"  # forward + backward FLOPs of all training steps (train/flops.py)
TRAIN_IMAGES = "train_images"  # training images seen (with repeats), over all stages
OPTIMIZER_STEPS = "optimizer_steps"
# budget grids: the cell's total epochs (all stages); budget_unit = "flops": the reference arm's training FLOPs at
# the cell's budget (what was equalised) and the cell's own planned FLOPs (= train_flops)
BUDGET_EPOCHS = "budget.epochs"
BUDGET_TARGET_FLOPS = "budget.target_flops"
BUDGET_ACHIEVED_FLOPS = "budget.achieved_flops"
# the training labels of a cell run (data/noise.py; the level itself is train.label_noise)
LABEL_NOISE_SOURCE = "label_noise.source"  # "clean", "csv column noisy_labels_25" or "symmetric, seed 1641"
LABEL_NOISE_FLIPPED = "label_noise.flipped"  # training labels that differ from the clean ones
LABEL_NOISE_FLIP_FRACTION = "label_noise.flip_fraction"  # their fraction: the realised noise rate
PLACEMENT_PREFIX = "placement."  # where the data lived (``data/placement.py``): placement.data_on, .cache_bytes, ...
COMPILE = "compile"  # torch.compile of the model's train and eval steps (--compile): true | false
CELLS_PER_GPU = "cells_per_gpu"  # cells trained at once on one GPU (--cells-per-gpu)
LR_FIND_PREFIX = "lr_find."  # the finder's settings (params) and suggestions (metrics): lr_find.valley, ...
# the grid run's
GRID_FILE = "grid_file"
SEEDS = "seeds"
CELLS = "cells"
CELLS_LEFT_OUT = "cells_left_out"  # grid run: the grid file's cells that --cells left out (absent: none)
CELL_TECHNIQUES = "cell_techniques"
EPOCHS_SCALE = "epochs_scale"
DESCRIPTION = "description"
PROFILE_DESCRIPTION = "profile.description"
# run-grid --precision (``precision.py``): the target half-width in accuracy points, the seed cap, the procedure
PRECISION_HALF_WIDTH = "precision.half_width_points"
PRECISION_MAX_SEEDS = "precision.max_seeds"
PRECISION_PROCEDURE = "precision.procedure"


def tech_param(technique: str, field: str) -> str:
    return f"{TECH_PREFIX}{technique}.{field}"


def train_param(field: str) -> str:
    return f"{TRAIN_PREFIX}{field}"


def data_param(field: str) -> str:
    return f"{DATA_PREFIX}{field}"


def placement_param(field: str) -> str:
    """``placement.<field>``: the data placement's decision and bytes (``Placement.fields``)."""
    return f"{PLACEMENT_PREFIX}{field}"


def placement_params(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The MLflow params of a data placement decision (``Placement.fields``)."""
    return {placement_param(k): v for k, v in fields.items()}


def lr_find_key(name: str) -> str:
    """``lr_find.<name>``: a finder setting (param: start_lr, end_lr, num_it, stop_div, iterations, stop) or a
    suggestion (metric, at step 0: valley, minimum, steep)."""
    return f"{LR_FIND_PREFIX}{name}"


# --- Metrics -------------------------------------------------------------------------------------------------------
# A cell run's summary, logged once at the last epoch's step.
FINAL_ACCURACY = "final_accuracy"
FINAL_VALID_LOSS = "final_valid_loss"
WALL_TIME = "wall_time_s"
TRAIN_TIME_TOTAL = "train_time_total_s"
MEAN_EPOCH_TIME = "mean_epoch_time_s"
MEAN_IMAGES_PER_S = "mean_images_per_s"
# A grid run's, at step 0.
CELLS_FAILED = "cells_failed"
CELLS_FINISHED = "cells_finished"


def precision_planned_n(technique: str) -> str:
    """The grid run's metric with the seeds Stein's plan gives a technique's comparison (capped at --max-seeds)."""
    return safe_key(f"precision.planned_n.{technique}")


VALID_TIME = "valid_time_s"
# MLflow's own system metric (sampled while a run trains): the machine's CPU use in %, for the report's check of
# runs timed while the machine was loaded
SYSTEM_CPU = "system/cpu_utilization_percentage"


def _record_metric_fields() -> list[tuple[str, str]]:
    return [
        (f.name, f.metadata["metric"]) for f in dataclasses.fields(EpochRecord) if f.metadata.get("metric") is not None
    ]


def epoch_key(field: str) -> str:
    """The per-epoch metric key of an ``EpochRecord`` field (``"size"`` -> ``"image_size"``)."""
    keys = dict(_record_metric_fields())
    if field not in keys:
        raise KeyError(f"EpochRecord.{field} is not logged as a metric; metric fields: {', '.join(keys)}")
    return keys[field]


def table_keys() -> list[str]:
    """The per-epoch keys fastai's epoch table shows (train_loss, valid_loss, accuracy), in the record's order."""
    return [str(f.metadata["metric"]) for f in dataclasses.fields(EpochRecord) if f.metadata.get("table")]


def base_epoch_metric_keys() -> tuple[str, ...]:
    """The per-epoch metric keys every cell run logs (before any technique's own)."""
    return (*[key for _, key in _record_metric_fields()], VALID_TIME)


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """The per-epoch metrics of ``record`` by MLflow key (fields, ``valid_time_s``, technique extras)."""
    out = {key: float(getattr(record, name)) for name, key in _record_metric_fields()}
    out[VALID_TIME] = record.valid_time_s
    out.update({k: float(v) for k, v in record.extra.items()})
    return out


def epoch_metric_keys(extra: Iterable[str] = ()) -> list[str]:
    """Every per-epoch key of a run whose techniques add ``extra``."""
    return [*base_epoch_metric_keys(), *[k for k in extra if k not in base_epoch_metric_keys()]]


# --- Artifacts -----------------------------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.json"  # a cell run's plan
EPOCHS_CSV = "epochs.csv"
EPOCHS_TXT = "epochs.txt"
LEARNING_CURVE = "learning_curve.png"
CONFUSION_MATRIX_JSON = "confusion_matrix.json"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
TRACEBACK = "traceback.txt"
LR_FIND_PNG = "lr_find.png"  # the finder's curve with its suggestions (lr-find runs, cells with lr = "find")
LR_FIND_CSV = "lr_find.csv"  # iteration, lr, smoothed loss of every iteration of the sweep
LR_FIND_JSON = "lr_find.json"  # settings, stop reason, suggestions and their plotted points
PREDICTIONS = "predictions.npz"  # per validation image: label, path, plain (and techniques') probabilities
GRID_FOLDER = "grid"  # the grid run's copy of its grid file: grid/<file name>
CELL_TECHNIQUES_JSON = "cell_techniques.json"
REPORT_FOLDER = "report"  # the report, logged to the grid run
PRECISION_JSON = "precision.json"  # the grid run's --precision plan: every comparison's pilot, s0, planned n
MODEL = "model"  # with --log-model: the cell's MLflow model (pytorch flavour, pt2, signature, input example)


# Characters MLflow rejects in metric, param and tag keys (it allows alphanumerics, _ - . space : /).
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def safe_key(key: str) -> str:
    """``key`` with every character MLflow rejects replaced by ``_`` (factorial cells are named ``a+b``)."""
    return _KEY_UNSAFE.sub("_", key)


def cell_accuracy(run_name: str) -> str:
    """The grid run's metric with a finished cell run's accuracy: ``accuracy.<run name>``."""
    return safe_key(f"accuracy.{run_name}")
