"""The device memory a grid's cells need besides the data, for the data placement (``data/placement.py``).

``placement_request`` collects the image sizes every cell evaluates at (their precomputed validation sets stay
on the device for the whole grid) and, on CUDA, measures the training step of the largest cell once: its model,
gradients, Adam state and activations at its largest ``batch_size x size**2``, in fp32 (an upper bound for fp16
and bf16, whose activations are half the size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sota_ablate.config import TrainConfig
from sota_ablate.data.placement import PlacementRequest, measure_step_bytes
from sota_ablate.models import create_model
from sota_ablate.techniques import Technique
from sota_ablate.train.loop import recipe_stages
from sota_ablate.train.optim import create_optimizer


def placement_request(
    cells: Sequence[tuple[TrainConfig, Sequence[Technique]]],
    device: torch.device,
    data_on: str,
    budget_bytes: int | None = None,
) -> PlacementRequest:
    """What ``load_data`` needs to place the data for ``cells`` (each cell's resolved config and techniques).

    The step is measured only when the choice depends on it (``auto`` on CUDA).
    """
    shapes = [(st.batch_size, st.size, cfg) for cfg, techs in cells for st in recipe_stages(cfg, techs)]
    sizes = tuple(sorted({size for _, size, _ in shapes}))
    step = 0
    if device.type == "cuda" and data_on == "auto" and shapes:
        batch_size, size, cfg = max(shapes, key=lambda t: t[0] * t[1] ** 2)
        step = measure_step_bytes(lambda: _one_step(cfg, batch_size, size, device), device)
    return PlacementRequest(data_on=data_on, valid_sizes=sizes, step_bytes=step, budget_bytes=budget_bytes)


def _one_step(cfg: TrainConfig, batch_size: int, size: int, device: torch.device) -> None:
    """One fp32 training step of ``cfg``'s model on a random batch (everything dropped on return)."""
    n_out = cfg.n_out or 10
    model = create_model(cfg.model, n_out=n_out).to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(model, cfg.lr, wd=cfg.wd, eps=cfg.eps, mom=cfg.moms[0], sqr_mom=cfg.sqr_mom)
    x = torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_out, (batch_size,), device=device)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
