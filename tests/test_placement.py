"""Data placement (planner decisions on given memory sizes), the host-staged batch path, --compile, --cells-per-gpu."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from sota_ablate import schema
from sota_ablate.data import AugmentConfig, DataConfig, DataError, load_data, train_batches, tta_batches, valid_batches
from sota_ablate.data.placement import MemoryNeeds, PlacementRequest, cache_bytes, choose_placement, valid_bytes

GIB = 2**30
# The numbers: full Imagenette under `chapter` (presize 460, max_aspect 1.5: 690x690 canvases).
CHAPTER = MemoryNeeds(
    cache_bytes=cache_bytes((3, 690, 690), 13_394), valid_bytes=valid_bytes(3925, (128, 224)), step_bytes=6 * GIB
)


def test_chapter_cache_is_19_gb_and_goes_to_the_host_on_a_16_gb_card() -> None:
    assert 19.0e9 < CHAPTER.cache_bytes < 19.2e9  # 1.43 MB per canvas
    p = choose_placement("auto", "cuda", CHAPTER, 16 * GIB)
    assert p.data_on == "host" and p.staged
    assert "too big for the device" in p.reason and "cache 17.82 GiB" in p.reason


def test_it_fits_on_a_big_gpu_with_headroom() -> None:
    p = choose_placement("auto", "cuda", CHAPTER, 139 * GIB)
    assert p.data_on == "device" and "fits on the device" in p.reason
    # the headroom is kept: a budget just above the needs is not enough
    assert choose_placement("auto", "cuda", CHAPTER, CHAPTER.resident + GIB).data_on == "host"
    assert choose_placement("auto", "cuda", CHAPTER, int(CHAPTER.resident / 0.85) + 1).data_on == "device"


def test_overrides_and_the_cpu() -> None:
    forced = choose_placement("device", "cuda", CHAPTER, 16 * GIB)
    assert forced.data_on == "device" and "does NOT fit" in forced.reason
    assert choose_placement("host", "cuda", CHAPTER, 139 * GIB).data_on == "host"
    cpu = choose_placement("auto", "cpu", CHAPTER, None)
    assert cpu.data_on == "device" and "host memory is the training device" in cpu.reason
    assert choose_placement("host", "cpu", CHAPTER, None).data_on == "host"


def test_nothing_fits_and_bad_choice_are_clear_errors() -> None:
    with pytest.raises(DataError, match="lower the batch size"):
        choose_placement("auto", "cuda", CHAPTER, 6 * GIB)
    with pytest.raises(DataError, match="--data-on 'gpu': use one of auto, device, host"):
        choose_placement("gpu", "cuda", CHAPTER, 16 * GIB)


def test_params_name_the_choice_and_the_bytes() -> None:
    params = schema.placement_params(choose_placement("auto", "cuda", CHAPTER, 16 * GIB).fields())
    assert params[schema.placement_param("data_on")] == "host"
    assert params[schema.placement_param("cache_bytes")] == CHAPTER.cache_bytes
    assert params[schema.placement_param("budget_bytes")] == 16 * GIB
    assert set(params) == {schema.placement_param(k) for k in
                           ("data_on", "requested", "reason", "cache_bytes", "valid_bytes", "step_bytes",
                            "budget_bytes")}  # fmt: skip


def _load(folder: Path, tmp_path: Path, data_on: str):
    cfg = DataConfig(source="folder", path=str(folder), cache_dir=str(tmp_path / "cache"), presize=24)
    return load_data(cfg, "cpu", placement=PlacementRequest(data_on=data_on, valid_sizes=(16,)))


def test_batches_are_identical_whichever_placement(image_folder: Path, tmp_path: Path) -> None:
    device, host = _load(image_folder, tmp_path, "device"), _load(image_folder, tmp_path, "host")
    assert not device.train.staged and host.train.staged and host.placement is not None
    assert host.placement.data_on == "host" and host.placement.needs.valid_bytes == 9 * 3 * 16 * 16
    aug = AugmentConfig()
    for size in (16, 20):  # two sizes: the pre-shrink cache of each
        batches = []
        for data in (device, host):
            g = torch.Generator().manual_seed(3)
            batches.append(list(train_batches(data.train, 4, size, aug, generator=g)))
        assert len(batches[0]) == len(batches[1]) == 3
        for (x0, y0), (x1, y1) in zip(*batches, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
    for a, b in zip(valid_batches(device.valid, 4, 16), valid_batches(host.valid, 4, 16), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(5)
    tta_device = [x for x, _ in tta_batches(device.valid, 4, 16, aug)]
    torch.manual_seed(5)
    tta_host = [x for x, _ in tta_batches(host.valid, 4, 16, aug)]
    assert len(tta_device) == 3 and all(torch.equal(a, b) for a, b in zip(tta_device, tta_host, strict=True))


def test_host_gather_double_buffers_in_order() -> None:
    from sota_ablate.data.loader import _HostGather

    rows = torch.arange(10 * 6, dtype=torch.uint8).view(10, 6)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    gather = _HostGather(rows, order, 3, torch.device("cpu"))
    got = [gather.next().clone() for _ in range(3)]  # 10 // 3 batches (drop_last)
    for k, batch in enumerate(got):
        assert torch.equal(batch, rows[order[3 * k : 3 * k + 3]])
    assert gather.ahead is None and len({b.data_ptr() for b in gather.buffers}) == 2


def test_compile_matches_eager() -> None:
    """``--compile`` runs and matches eager. The aot_eager backend traces the same graphs (dynamo + AOTAutograd)
    without inductor's C++ compilation, which takes minutes on this shared 2-core CPU; inductor runs on the GPU
    check (bench/gpu_check.sh)."""
    from sota_ablate.train.compiled import compile_forward

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = compile_forward(model, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, atol=1e-5)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(model.parameters(), grads, strict=True))
    assert not hasattr(model, "_orig_mod")  # the model itself (weights, checkpoints) stays the plain module


def test_cells_per_gpu_on_a_cpu_is_refused(image_folder: Path, tmp_path: Path, capsys) -> None:
    from sota_ablate.cli import main

    code = main(["run-grid", "--profile", "smoke", "--device", "cpu", "--cells-per-gpu", "2", "--data",
                 str(image_folder), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])  # fmt: skip
    assert code == 2
    assert "error: --cells-per-gpu 2: the cells train on cpu, not a GPU" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_worker_process_trains_a_cell_with_its_placement(image_folder: Path, tmp_path: Path) -> None:
    """What a --cells-per-gpu worker runs (``run_in_process``), here in-process on the CPU with its spec and task
    through pickle (as the spawned process gets them): it places the data itself and logs the placement."""
    from mlflow.tracking import MlflowClient

    from sota_ablate.executors import local
    from sota_ablate.grid import load_grid
    from sota_ablate.grid_run import run_grid
    from sota_ablate.plan import RunOptions
    from sota_ablate.profiles import get_profile
    from sota_ablate.tracking import Tracker

    class InProcess(local.LocalExecutor):
        def run(self, tasks, job):
            spec = local.worker_spec(job, "cpu", threads=1, gpu_share=0.5)
            for task in tasks:
                yield local.run_in_process(*pickle.loads(pickle.dumps((spec, local.unbound(task)))))

    data = DataConfig(source="folder", path=str(image_folder), cache_dir=str(tmp_path / "cache"),
                      **get_profile("smoke").data)  # fmt: skip
    opts = RunOptions(profile=get_profile("smoke"), data=data, device=torch.device("cpu"), data_on="host",
                      progress_bar=False)  # fmt: skip
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "placement")
    outcome = run_grid(load_grid("chapter").select(["baseline"]), opts, tracker, seeds=[0], executor=InProcess())
    assert [o.status for o in outcome.outcomes] == ["FINISHED"]
    params = MlflowClient(tracker.uri).get_run(outcome.outcomes[0].run_id).data.params
    assert params[schema.placement_param("data_on")] == "host"
    assert params[schema.COMPILE] == "false" and params[schema.CELLS_PER_GPU] == "1"


def test_a_workers_gpu_share_is_its_memory_budget() -> None:
    """--cells-per-gpu N gives each worker 1/N of the GPU (or of --gpu-memory-gib), Ray's --gpus-per-cell 0.5 half
    of it: the memory limit its data placement plans within; none on a CPU or without a share."""
    import torch

    from sota_ablate.executors.worker import WorkerSpec

    def spec(device: str, share: float | None) -> WorkerSpec:
        return WorkerSpec({"gpu_memory_bytes": 16 * GIB}, device, "sqlite:///x.db", "e", "p", {}, 1, gpu_share=share)

    assert spec("cuda", 0.25).gpu_budget(torch.device("cuda")) == 4 * GIB
    assert spec("cuda", None).gpu_budget(torch.device("cuda")) is None
    assert spec("cpu", 0.5).gpu_budget(torch.device("cpu")) is None
