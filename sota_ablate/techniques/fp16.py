"""fp16: mixed-precision training (Micikevicius et al. 2018, arXiv:1710.03740; fastai ``MixedPrecision``).

On CUDA: ``torch.autocast(float16)`` around forward and loss, in training and evaluation, with a dynamic
``GradScaler`` (init 2**16, x2 every 2000 clean steps, x0.5 and skip on overflow). The loss is computed on
fp32 logits. On CPU fp16 autocast is slow and unscaled fp16 gradients underflow, so bf16 autocast stands in
(no scaler needed): the ``dtype`` param says which ran, and the report flags it. bf16 is only fast on CPUs with
native bf16 (AVX-512 BF16 or AMX); elsewhere (AVX2) oneDNN emulates it, several times slower than fp32 (seen here:
4-5 min against ~40 s per quick-profile epoch, on a loaded AVX2 machine), and a warning says so.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from functools import partial

import torch

from sota_ablate.config import ConfigError
from sota_ablate.techniques.base import TECHNIQUES, Priority, ReportSection, Technique
from sota_ablate.train.state import TrainState

log = logging.getLogger(__name__)


def _native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: say nothing


@functools.cache
def _warn_emulated() -> None:
    log.warning(
        "fp16 on this CPU (%s, no native bfloat16): bf16 autocast is emulated and several times slower than fp32 "
        "here; the fp16 cells' accuracy is valid, their times say nothing about mixed precision",
        torch.backends.cpu.get_cpu_capability(),
    )


@TECHNIQUES.register("fp16")
@dataclass(frozen=True)
class FP16(Technique):
    """Autocast + GradScaler on CUDA (fp16); bf16 autocast on CPU."""

    init_scale: float = 2.0**16
    growth_interval: int = 2000
    cpu_dtype: str = "bfloat16"

    name = "fp16"
    summary = "mixed precision: fp16 autocast + dynamic GradScaler on CUDA, bf16 autocast on CPU"
    source = "Micikevicius et al., Mixed Precision Training (arXiv:1710.03740); fastai MixedPrecision"
    priority = Priority.PRECISION
    order = 10
    colour = "#7f7f7f"
    claims = frozenset({"precision"})
    report = ReportSection(
        title="Mixed precision (an addition: chapter 7 never calls `to_fp16`)",
        intro="Half-precision autocast with loss scaling speeds up training on GPUs with tensor cores; the book uses "
        "it in chapter 5. Here it measures the speed and any accuracy cost.",
        timing=True,
    )

    def validate(self) -> None:
        if self.init_scale <= 0:
            raise ConfigError(f"fp16.init_scale = {self.init_scale!r} must be positive.")
        if self.cpu_dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"fp16.cpu_dtype = {self.cpu_dtype!r}: use 'bfloat16' or 'float16'.")

    def setup(self, s: TrainState) -> None:
        if s.device.type == "cuda":
            s.autocast = partial(torch.autocast, "cuda", dtype=torch.float16)
            s.scaler = torch.amp.GradScaler("cuda", init_scale=self.init_scale, growth_interval=self.growth_interval)
            s.dtype = "float16"
        else:
            dtype = getattr(torch, self.cpu_dtype)
            s.autocast = partial(torch.autocast, s.device.type, dtype=dtype)
            s.dtype = self.cpu_dtype
            if self.cpu_dtype == "bfloat16" and not _native_bf16():
                _warn_emulated()
