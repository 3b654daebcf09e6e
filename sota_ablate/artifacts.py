"""What a cell run records in MLflow besides its params: per-epoch metrics as it trains, then its results.

- ``EpochLogger``: a loop observer that logs every epoch in one ``log_batch`` call (keys from ``schema``, a
  technique's own per-epoch metrics included) and the recipe's stages when training starts.
- ``log_results``: after the last epoch, the summary metrics and the artifacts: ``config.json`` (the plan),
  ``epochs.csv`` and ``epochs.txt`` (the epoch table), ``learning_curve.png``, ``confusion_matrix.json``/``.png``,
  ``predictions.npz`` (per validation image: label, path, plain and TTA probabilities, for the report's
  per-image statistics) and, with ``--log-model``, the model: an MLflow model (``schema.MODEL``, images in [0, 1]
  in, logits out, the cell's normalisation included) with its signature and an input example of two validation
  images, registered under ``--register-model NAME`` when given, and the weights as a plain state dict.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sota_ablate import run_figures, schema
from sota_ablate.data import ImageData, valid_batches
from sota_ablate.data.names import readable
from sota_ablate.plan import CellPlan
from sota_ablate.progress import epoch_table
from sota_ablate.tracking import Run
from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.flops import training_compute
from sota_ablate.train.record import EpochRecord, LoopObserver
from sota_ablate.train.state import Stage, TrainState


class EpochLogger(LoopObserver):
    """Logs each epoch to the cell run and keeps the records and the last evaluation for the artifacts."""

    def __init__(self, run: Run, plan: CellPlan, records: Sequence[EpochRecord] = ()) -> None:
        self.run = run
        self.plan = plan
        self.records: list[EpochRecord] = list(records)  # a resumed run starts with the checkpoint's records
        self.last: EvalResult | None = None

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        extra = [k for t in self.plan.techniques for k in t.epoch_metric_keys]
        compute = training_compute(s.model, stages, len(s.data.train), s.channels_last)
        self.run.log_params(
            {
                schema.TRAIN_FLOPS: compute["flops"],
                schema.TRAIN_IMAGES: compute["images"],
                schema.OPTIMIZER_STEPS: compute["steps"],
                schema.DTYPE: s.dtype,
                schema.TOTAL_STEPS: total_steps,
                schema.CHANNELS_LAST: s.channels_last,
                schema.STAGES: [dataclasses.asdict(st) for st in stages],
                schema.EPOCH_METRIC_KEYS: schema.epoch_metric_keys(extra),
            }
        )

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        self.records.append(record)
        self.last = result
        self.run.log_metrics(schema.epoch_metrics(record), step=record.epoch)

    def backfill(self, records: Sequence[EpochRecord]) -> None:
        """Log the records the run lacks (a process killed between writing the checkpoint and logging)."""
        logged = self.run.logged_steps(schema.epoch_key("accuracy"))
        for record in records:
            if record.epoch not in logged:
                self.run.log_metrics(schema.epoch_metrics(record), step=record.epoch)


def summary_metrics(records: Sequence[EpochRecord], wall_time_s: float, final: dict[str, float]) -> dict[str, float]:
    """The cell run's summary: final accuracy and loss, times, mean throughput, and the techniques' final metrics."""
    last = records[-1]
    return {
        schema.FINAL_ACCURACY: last.accuracy,
        schema.FINAL_VALID_LOSS: last.valid_loss,
        schema.WALL_TIME: wall_time_s,
        schema.TRAIN_TIME_TOTAL: sum(r.train_time_s for r in records),
        schema.MEAN_EPOCH_TIME: sum(r.epoch_time_s for r in records) / len(records),
        schema.MEAN_IMAGES_PER_S: sum(r.images_per_s for r in records) / len(records),
        **final,
    }


def records_csv(records: Sequence[EpochRecord]) -> str:
    """The epoch records as CSV: one column per field, then one per technique metric."""
    fields = [f.name for f in dataclasses.fields(EpochRecord) if f.name != "extra"]
    extra = sorted({k for r in records for k in r.extra})
    buf = io.StringIO()
    buf.write(",".join(fields + extra) + "\n")
    for r in records:
        values = [str(getattr(r, f)) for f in fields] + [str(r.extra.get(k, "")) for k in extra]
        buf.write(",".join(values) + "\n")
    return buf.getvalue()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[list[int]]:
    """Counts ``[actual][predicted]``."""
    idx = labels.cpu().long() * n_classes + predictions.cpu().long()
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes).tolist()


def log_results(
    run: Run,
    plan: CellPlan,
    records: Sequence[EpochRecord],
    wall_time_s: float,
    s: TrainState,
    data: ImageData,
    predictions: torch.Tensor | None,
    log_model: bool = False,
    probabilities: torch.Tensor | None = None,
    register_model: str | None = None,
) -> None:
    """The summary metrics and every artifact of a finished cell run (``probabilities``: the last epoch's, per
    validation image; None when the run was resumed after its last epoch, whose checkpoint keeps only classes)."""
    run.log_metrics(summary_metrics(records, wall_time_s, s.final_metrics), step=records[-1].epoch)
    run.log_dict(plan.record(), schema.CONFIG_ARTIFACT)
    run.log_text(records_csv(records), schema.EPOCHS_CSV)
    run.log_text(epoch_table(records, with_stage=len({r.stage for r in records}) > 1) + "\n", schema.EPOCHS_TXT)
    fig = run_figures.learning_curve(records, f"{plan.run_name}: {plan.label}")
    run.log_figure(fig, schema.LEARNING_CURVE)
    run_figures.close(fig)
    if predictions is not None:
        cm = confusion_matrix(predictions, data.valid.labels, len(data.classes))
        run.log_dict({"classes": list(data.classes), "matrix": cm}, schema.CONFUSION_MATRIX_JSON)
        fig = run_figures.confusion_matrix_figure(cm, readable(data.classes), f"{plan.run_name}: confusion matrix")
        run.log_figure(fig, schema.CONFUSION_MATRIX_PNG)
        run_figures.close(fig)
    if probabilities is not None:
        log_predictions(run, data, probabilities, s.outputs)
    if log_model:
        run.log_state_dict(s.model.state_dict())
        run.log_pytorch_model(Classifier(s), input_example(data, records[-1].size), register_model)


class Classifier(torch.nn.Module):
    """The trained model as it is validated: float32 images in [0, 1] (``[B, 3, H, W]``) -> logits, with the
    cell's input normalisation, on the CPU (a copy: the training state is left as it is)."""

    def __init__(self, s: TrainState) -> None:
        super().__init__()
        self.model = copy.deepcopy(s.model).float().cpu().eval()
        self.normalize = s.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def input_example(data: ImageData, size: int, n: int = 2) -> np.ndarray:
    """The first ``n`` validation images at ``size`` px as the model gets them (float32 in [0, 1], NCHW); two, so
    the exported model keeps its batch size free."""
    x, _ = next(iter(valid_batches(data.valid, n, size)))
    return x.float().cpu().contiguous().numpy()


def predictions_npz(data: ImageData, plain: torch.Tensor, outputs: dict[str, torch.Tensor]) -> bytes:
    """The per-image evidence of a finished run, as a compressed ``.npz``: ``labels`` (int16), ``paths`` (relative
    to the dataset), ``classes``, and float16 probabilities ``plain`` (the last epoch's centre-crop validation) and
    one array per technique output (``tta``). 500 images x 10 classes: about 15 kB."""
    arrays: dict[str, Any] = {
        "labels": data.valid.labels.cpu().numpy().astype(np.int16),
        "paths": np.array(data.valid.paths),
        "classes": np.array(list(data.classes)),
        "plain": plain.float().cpu().numpy().astype(np.float16),
    }
    arrays.update({name: p.float().cpu().numpy().astype(np.float16) for name, p in outputs.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def log_predictions(run: Run, data: ImageData, plain: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / schema.PREDICTIONS
        path.write_bytes(predictions_npz(data, plain, outputs))
        run.log_file(path)


def judged_metrics(plan: CellPlan, final: dict[str, Any]) -> dict[str, float]:
    """The final metrics by which the cell's techniques are judged (``Technique.judged_by``, e.g. TTA accuracy)."""
    keys = [t.judged_by for t in plan.techniques if t.judged_by]
    return {k: float(final[k]) for k in keys if k in final}
