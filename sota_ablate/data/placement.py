"""Where the decoded cache lives during training: on the training device, or in (pinned) host memory.

``choose_placement`` is a pure function: the bytes the run needs on the device (``MemoryNeeds``: the uint8
cache of both splits, the precomputed validation sets, the training step's peak) and the device's budget in,
a ``Placement`` (``device`` or ``host``, and why) out. ``load_data`` applies it (``loader.py``):

- ``device``: the whole cache on the training device (the fastest; the default whenever it fits);
- ``host``: the cache stays in host memory (pinned on CUDA); each training batch is gathered there and copied
  to the device on a side stream, double-buffered, ahead of its use (``loader._HostGather``). The validation
  set is still precomputed on the device (it is small), so evaluation is as fast as before.

``auto`` chooses ``device`` when cache + validation + step fit in ``(1 - HEADROOM)`` of the budget, else
``host``. On the CPU host memory is the device's, so ``auto`` is ``device`` and no budget is needed; ``host``
there runs the same staged code path without streams (it is what the tests compare).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sota_ablate.data.errors import DataError

DATA_ON = ("auto", "device", "host")
# Budget fraction kept free: the caching allocator's fragmentation, cuDNN workspaces, the augmentation's
# float32 working copies of a batch and the staging copies (a few batches) are not in the estimate.
HEADROOM = 0.15


@dataclass(frozen=True)
class MemoryNeeds:
    """Device bytes a run needs.

    Attributes:
        cache_bytes: the uint8 canvases of both splits.
        valid_bytes: the precomputed validation sets (uint8, one per image size the run evaluates at).
        step_bytes: the training step's peak (model, gradients, optimizer state, activations); 0 when unknown.
    """

    cache_bytes: int
    valid_bytes: int
    step_bytes: int = 0

    @property
    def resident(self) -> int:
        """With the cache on the device."""
        return self.cache_bytes + self.valid_bytes + self.step_bytes

    @property
    def staged(self) -> int:
        """With the cache in host memory."""
        return self.valid_bytes + self.step_bytes


@dataclass(frozen=True)
class PlacementRequest:
    """What ``load_data`` is asked for: ``data_on`` (``auto|device|host``), the validation sizes the run will
    precompute, the step's measured or estimated peak bytes, and the device budget (None: what the device has
    free now, within this process's memory fraction; ``device_budget``)."""

    data_on: str = "auto"
    valid_sizes: tuple[int, ...] = ()
    step_bytes: int = 0
    budget_bytes: int | None = None

    def validate(self) -> None:
        if self.data_on not in DATA_ON:
            raise DataError(f"--data-on {self.data_on!r}: use one of {', '.join(DATA_ON)}.")


@dataclass(frozen=True)
class Placement:
    """The decision: ``data_on`` is ``device`` or ``host``; ``reason`` says why, with the bytes."""

    data_on: str
    requested: str
    reason: str
    needs: MemoryNeeds
    budget_bytes: int | None

    @property
    def staged(self) -> bool:
        return self.data_on == "host"

    def fields(self) -> dict[str, Any]:
        """The decision and its bytes, by name (logged as ``schema.placement_param(name)`` params)."""
        values: dict[str, Any] = {
            "data_on": self.data_on,
            "requested": self.requested,
            "reason": self.reason,
            "cache_bytes": self.needs.cache_bytes,
            "valid_bytes": self.needs.valid_bytes,
            "step_bytes": self.needs.step_bytes,
            "budget_bytes": self.budget_bytes if self.budget_bytes is not None else "none",
        }
        return values


def gib(n: int) -> str:
    """``n`` bytes in GiB (MiB below one GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def choose_placement(
    requested: str, device_type: str, needs: MemoryNeeds, budget_bytes: int | None, headroom: float = HEADROOM
) -> Placement:
    """Where the cache goes (module docstring).

    Args:
        requested: ``auto``, ``device`` or ``host`` (``--data-on``).
        device_type: the training device's type (``cuda``, ``cpu``, ...).
        needs: the bytes the run needs on the device.
        budget_bytes: what the device can give this process (None: unknown, as on the CPU).
        headroom: the budget fraction kept free.

    Raises:
        DataError: an unknown ``requested``; under ``auto``, not even the staged placement fits the budget.
    """
    PlacementRequest(data_on=requested).validate()
    usable = None if budget_bytes is None else int(budget_bytes * (1 - headroom))
    if device_type == "cpu" or usable is None:
        where = "host" if requested == "host" else "device"
        why = "forced by --data-on host" if requested == "host" else "host memory is the training device's memory"
        if device_type != "cpu" and requested == "auto":
            why = "no memory budget known for the device: assumed to fit"
        return Placement(where, requested, f"{why} (cache {gib(needs.cache_bytes)})", needs, budget_bytes)
    sums = (
        f"cache {gib(needs.cache_bytes)} + validation {gib(needs.valid_bytes)} + step {gib(needs.step_bytes)} "
        f"= {gib(needs.resident)}; usable {gib(usable)} of a {gib(budget_bytes or 0)} budget"
    )
    if requested == "device":
        fits = "fits" if needs.resident <= usable else "does NOT fit (may run out of memory)"
        return Placement("device", requested, f"forced by --data-on device; {sums}: {fits}", needs, budget_bytes)
    if requested == "host":
        return Placement("host", requested, f"forced by --data-on host; {sums}", needs, budget_bytes)
    if needs.resident <= usable:
        return Placement("device", requested, f"fits on the device: {sums}", needs, budget_bytes)
    if needs.staged <= usable:
        return Placement(
            "host",
            requested,
            f"too big for the device ({sums}): the cache stays in pinned host memory, validation "
            f"{gib(needs.valid_bytes)} + step {gib(needs.step_bytes)} on the device",
            needs,
            budget_bytes,
        )
    raise DataError(
        f"not even the validation set and the training step fit on the device ({sums}; the cache would stay on "
        "the host): lower the batch size (--set batch_size=...), the image size or data.presize, give the cell "
        "more memory (fewer --cells-per-gpu), or force an attempt with --data-on host."
    )


def cache_bytes(shape: Iterable[int], n: int) -> int:
    """Bytes of ``n`` uint8 canvases of ``shape`` (``[3, L, L]``)."""
    per = 1
    for d in shape:
        per *= int(d)
    return per * n


def valid_bytes(n_valid: int, sizes: Iterable[int]) -> int:
    """Bytes of the precomputed uint8 validation sets: one ``[n, 3, s, s]`` per distinct size."""
    return sum(n_valid * 3 * s * s for s in set(sizes))


def device_budget(device: torch.device) -> int | None:
    """Bytes this process may still allocate on ``device``: the free memory, within its memory fraction
    (``torch.cuda.set_per_process_memory_fraction``) less what it has already allocated. None on a CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    allowed = int(total * torch.cuda.get_per_process_memory_fraction(device)) - allocated
    cached = torch.cuda.memory_reserved(device) - allocated  # reserved by this process, reusable
    return max(0, min(free + cached, allowed))


def limit_gpu_memory(device: torch.device, nbytes: int) -> None:
    """Let this process allocate at most ``nbytes`` on CUDA ``device`` (``set_per_process_memory_fraction``).

    Raises:
        ValueError: more than the device has.
    """
    total = torch.cuda.get_device_properties(device).total_memory
    if nbytes > total:
        raise ValueError(f"more than the {gib(total)} the GPU has")
    torch.cuda.set_per_process_memory_fraction(nbytes / total, device)


def measure_step_bytes(step: Callable[[], None], device: torch.device) -> int:
    """The peak bytes ``step`` allocates on a CUDA ``device`` beyond what was allocated before (0 elsewhere).

    ``step`` builds what it needs (model, optimizer, a random batch), runs one training step and drops it all;
    the allocator's cache is emptied afterwards, so the measured memory is free again for the data.
    """
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    return int(peak)
