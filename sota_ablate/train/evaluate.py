"""Validation and test-time augmentation, under ``torch.no_grad`` with the model in eval mode.

Validation matches fastai's: centre crop, the same batch size as training, loss weighted by batch size,
accuracy exact over the whole validation set. One host sync per evaluation, none per batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from sota_ablate.data import tta_batches, valid_batches
from sota_ablate.train.state import TrainState


@dataclass
class EvalResult:
    valid_loss: float
    accuracy: float
    predictions: Tensor  # argmax class per validation image, on CPU
    probabilities: Tensor  # softmax, float32, on the device


def _forward(s: TrainState, x: Tensor) -> Tensor:
    x = s.normalize(x)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with s.autocast():
        return (s.forward or s.model)(x).float()


@torch.no_grad()
def evaluate(s: TrainState, size: int, batch_size: int) -> EvalResult:
    """Plain validation pass: loss (the cell's loss function, as fastai), accuracy, predictions."""
    s.model.eval()
    n_classes = s.n_out
    loss_sum = torch.zeros((), device=s.device)
    probs: list[Tensor] = []
    labels: list[Tensor] = []
    for x, y in valid_batches(s.data.valid, batch_size, size):
        logits = _forward(s, x)
        target = torch.nn.functional.one_hot(y, n_classes).float()
        loss_sum += s.loss_fn(logits, target) * y.numel()
        probs.append(torch.softmax(logits, dim=-1))
        labels.append(y)
    p = torch.cat(probs)
    y_all = torch.cat(labels)
    pred = p.argmax(dim=-1)
    n = y_all.numel()
    stats = torch.stack([loss_sum / n, (pred == y_all).float().mean()]).tolist()  # the one sync
    return EvalResult(valid_loss=stats[0], accuracy=stats[1], predictions=pred.cpu(), probabilities=p)


@torch.no_grad()
def evaluate_tta(s: TrainState, n: int = 4, beta: float = 0.25) -> tuple[dict[str, float], Tensor]:
    """fastai ``Learner.tta``: ``lerp(mean of n augmented softmaxes, plain softmax, beta)``.

    Returns:
        The metrics ``tta_accuracy``, ``tta_plain_accuracy`` (the centre-crop pass alone) and ``tta_time_s`` (the
        whole TTA inference time, all n + 1 passes), and the combined probabilities per validation image (CPU).
    """
    assert s.stage is not None
    size, batch_size = s.stage.size, s.stage.batch_size
    s.model.eval()
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    start = time.perf_counter()
    aug_sum: Tensor | None = None
    for _ in range(n):
        probs = [
            torch.softmax(_forward(s, x), dim=-1) for x, _ in tta_batches(s.data.valid, batch_size, size, s.cfg.augment)
        ]
        p = torch.cat(probs)
        aug_sum = p if aug_sum is None else aug_sum + p
    assert aug_sum is not None
    plain = evaluate(s, size, batch_size)
    combined = torch.lerp(aug_sum / n, plain.probabilities, beta)
    labels = s.data.valid.labels.to(combined.device)
    acc = (combined.argmax(dim=-1) == labels).float().mean().item()
    elapsed = time.perf_counter() - start
    metrics = {"tta_accuracy": acc, "tta_plain_accuracy": plain.accuracy, "tta_time_s": elapsed}
    return metrics, combined.float().cpu()
