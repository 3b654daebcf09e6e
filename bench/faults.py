"""Fault drill: inject the faults a hostile but realistic user causes into real ``run-grid`` processes (smoke
profile, a generated image folder, a temporary sqlite store or tracking server) and check that nothing is lost,
duplicated, mixed or hung. Prints one row per fault: what was done, what must happen, what happened, ok.

    python bench/faults.py                 # every fault (about 7 minutes on an idle 2-core CPU)
    python bench/faults.py --only sigkill,concurrent

Faults that need root (a small tmpfs for a full disk) are reported as skipped elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

CLASSES = ["n01440764", "n02102040", "n03028079"]
GRID = """
name = "drill"
[defaults]
epochs = 300                   # x 0.01 (smoke profile) = 3 epochs per cell
[[cells]]
name = "a"
techniques = []
[[cells]]
name = "b"
techniques = ["label_smoothing"]
[[cells]]
name = "c"
techniques = ["mixup"]
"""


@dataclass
class Outcome:
    fault: str
    expected: str
    observed: str
    ok: bool | None  # None: skipped


QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # the server's request log


def make_images(root: Path, seed: int = 0, n_train: int = 5, n_valid: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_valid)):
        for c, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((44, 52, 3))
                base[..., c] = 180
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


class Drill:
    """One fault's scratch folder: images, grid file, store, cache and checkpoint folders."""

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = root
        self.images = make_images(root / "images")
        self.grid = root / "drill.toml"
        self.grid.write_text(GRID)
        self.uri = uri or f"sqlite:///{root}/mlflow.db"
        self.cache = root / "cache"
        self.checkpoints = root / "ckpt"

    def args(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "sota_ablate", "run-grid", "--profile", "smoke", "--grid", str(self.grid),
                "--data", str(self.images), "--tracking-uri", self.uri, "--cache-dir", str(self.cache),
                "--checkpoint-dir", str(self.checkpoints), "--device", "cpu", "--no-progress", *extra]  # fmt: skip

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.args(*extra), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})  # fmt: skip

    def start(self, log: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        f = (self.root / log).open("w")
        return subprocess.Popen(self.args(*extra), stdout=f, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})  # fmt: skip

    def wait_for(self, log: str, *texts: str, after: str = "", timeout: float = 300) -> None:
        """Until any of ``texts`` is in ``log`` (in the part from ``after`` on, when given)."""
        deadline = time.monotonic() + timeout

        def seen() -> bool:
            text = (self.root / log).read_text()
            start = text.find(after)
            return start >= 0 and any(t in text[start:] for t in texts)

        while not seen():
            if time.monotonic() > deadline:
                raise TimeoutError(f"none of {texts!r} in {log} after {timeout} s")
            time.sleep(0.2)

    def interrupted(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Start the grid, stop it with ``sig`` once cell ``b`` finished its first epoch; its exit status."""
        p = self.start("first.log")
        self.wait_for("first.log", "\n0 ", after="[2/3] b")
        p.send_signal(sig)
        return p.wait(timeout=60)

    def runs(self, backend: str | None = None):  # type: ignore[no-untyped-def]
        mlflow.set_tracking_uri(backend or self.uri)
        return mlflow.search_runs(experiment_names=["sota_ablate"])

    def exactly_once(self, backend: str | None = None) -> tuple[bool, str]:
        """Every cell FINISHED exactly once, nothing RUNNING, one complete grid run."""
        df = self.runs(backend)
        cells = df[df["tags.sota_ablate.role"] != "grid"]
        grids = df[df["tags.sota_ablate.role"] == "grid"]
        finished = sorted(cells[cells["status"] == "FINISHED"]["tags.cell"])
        running = int((df["status"] == "RUNNING").sum())
        complete = grids[grids["status"] == "FINISHED"]
        ok = finished == ["a", "b", "c"] and running == 0 and len(complete) >= 1
        ended = ", ".join(sorted(grids["status"])) or "-"
        return ok, f"finished {','.join(finished) or '-'}; {running} running; {len(grids)} grid run(s) ({ended})"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A small tmpfs at ``path`` (True), or False when this process may not mount one (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield False
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)])


def fault_sigterm(root: Path) -> Outcome:
    d = Drill(root)
    p = d.start("first.log")
    d.wait_for("first.log", "[2/3] b")
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    again = d.run()
    ok, seen = d.exactly_once()
    resumed = "resuming run" in again.stdout
    return Outcome("SIGTERM mid-cell, then the same command", "exit 130; the rerun finishes (from the checkpoint if an epoch ended); each cell once",
                   f"exit {rc}, rerun {again.returncode}{', resumed' if resumed else ''}; {seen}",
                   rc == 130 and again.returncode == 0 and ok)  # fmt: skip


def fault_sigkill(root: Path) -> Outcome:
    d = Drill(root)
    d.interrupted(signal.SIGKILL)
    start = time.monotonic()
    again = d.run()
    ok, seen = d.exactly_once()
    return Outcome("SIGKILL mid-cell, then the same command at once",
                   "the dead run is recognised at once (its owner is gone); each cell once",
                   f"rerun {again.returncode} in {time.monotonic() - start:.0f} s; {seen}", again.returncode == 0 and ok)  # fmt: skip


def fault_concurrent(root: Path) -> Outcome:
    d = Drill(root)
    warm = d.run("--cells", "a", "--experiment", "warm")  # the store and the cache exist before both start
    first, second = d.start("first.log"), d.start("second.log")
    # The second is paused once it works on the cells: training one, or finding the first's claim on ``a``.
    d.wait_for("second.log", "[1/3]", "another process is training it")
    second.send_signal(signal.SIGSTOP)
    time.sleep(5)
    second.send_signal(signal.SIGCONT)
    rcs = (first.wait(timeout=600), second.wait(timeout=600))
    ok, seen = d.exactly_once()
    warmed = "" if warm.returncode == 0 else f"warm-up run exit {warm.returncode}: {_last_line(warm)}; "
    return Outcome("two run-grid of the same grid at once, one paused 5 s", "every cell FINISHED exactly once",
                   f"{warmed}exits {rcs}; {seen}", warm.returncode == 0 and rcs == (0, 0) and ok)  # fmt: skip


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1][:200] if lines else "(no output)"


def fault_replaced_data(root: Path) -> Outcome:
    d = Drill(root)
    d.interrupted()
    for f in sorted((d.images / "train").rglob("*.JPEG")):  # same names, same count, other pixels
        stat = f.stat()
        with Image.open(f) as im:
            Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(f, quality=90)
        os.utime(f, (stat.st_atime, stat.st_mtime))
    again = d.run()
    df = d.runs()
    grids = df[df["tags.sota_ablate.role"] == "grid"]
    new_grid = len(grids) == 2 and "resuming run" not in again.stdout
    return Outcome("training images replaced (same names, count, mtime) after an interrupt",
                   "a new grid run: nothing continued on different data",
                   f"rerun {again.returncode}; {len(grids)} grid runs; {'no' if new_grid else 'a'} resumed cell",
                   again.returncode == 0 and new_grid)  # fmt: skip


def fault_zeroed_cache(root: Path) -> Outcome:
    d = Drill(root)
    first = d.run("--cells", "a")
    for f in d.cache.rglob("images.npy"):  # zeros, header kept: a valid file with all-black images
        images = np.load(f, mmap_mode="r+")
        images[:] = 0
        images.flush()
        del images
    again = d.run("--cells", "a", "--force")
    rebuilt = "rebuil" in (again.stdout + again.stderr).lower()
    return Outcome("decode cache overwritten with zeros", "detected and rebuilt with a warning",
                   f"exits {first.returncode}, {again.returncode}; {'rebuilt' if rebuilt else 'NOT rebuilt'}",
                   first.returncode == 0 and again.returncode == 0 and rebuilt)  # fmt: skip


def fault_full_cache_disk(root: Path) -> Outcome:
    with tmpfs(root / "small", "64k") as mounted:
        if not mounted:
            return Outcome(
                "decode cache on a full disk", "error: naming the folder and space", "skipped (needs root)", None
            )
        d = Drill(root)
        start = time.monotonic()
        out = subprocess.run([*d.args(), "--cache-dir", str(root / "small")], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        took = time.monotonic() - start
        ok = out.returncode == 2 and "disk space" in out.stderr and took < 60
        return Outcome("decode cache on a full disk (64 kB tmpfs)", "error: within seconds, no hang",
                       f"exit {out.returncode} in {took:.0f} s: {out.stderr.strip()[:90]}", ok)  # fmt: skip


def fault_full_checkpoint_disk(root: Path) -> Outcome:
    with tmpfs(root / "ckpt", "16k") as mounted:
        if not mounted:
            return Outcome("checkpoint folder full", "a warning; training goes on", "skipped (needs root)", None)
        d = Drill(root)
        out = d.run()
        ok, seen = d.exactly_once()
        warned = "no more checkpoints" in out.stdout
        return Outcome("checkpoint folder full (16 kB tmpfs)", "a warning; every cell still finishes",
                       f"exit {out.returncode}; {'warned' if warned else 'no warning'}; {seen}",
                       out.returncode == 0 and warned and ok)  # fmt: skip


def fault_outage(root: Path) -> Outcome:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sota_ablate.server import free_port, start_server, stop_server

    port = free_port()
    backend = f"sqlite:///{root}/mlflow.db"
    server = start_server(backend, port, artifacts_destination=str(root / "artifacts"), **QUIET)
    d = Drill(root, uri=f"http://127.0.0.1:{port}")
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    p = d.start("first.log", env=env)
    try:
        d.wait_for("first.log", "[2/3] b")
        stop_server(server)
        down = time.monotonic()
        rc = p.wait(timeout=300)
        waited = time.monotonic() - down
    finally:
        p.kill()
        stop_server(server)
    text = (root / "first.log").read_text()
    server = start_server(backend, port, artifacts_destination=str(root / "artifacts"), **QUIET)
    try:
        again = d.run(env=env)
    finally:
        stop_server(server)
    ok, seen = d.exactly_once(backend)
    hint = "to continue, run:" in text
    return Outcome("tracking server down for good mid-grid, restarted later",
                   "error: + resume command within the retry budget; the rerun finishes",
                   f"exit {rc} after {waited:.0f} s{', resume hint' if hint else ''}; rerun {again.returncode}; {seen}",
                   rc == 2 and hint and again.returncode == 0 and ok)  # fmt: skip


def fault_damaged_checkpoint(root: Path) -> Outcome:
    d = Drill(root)
    d.interrupted()
    for f in d.checkpoints.glob("*.pt"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    again = d.run()
    ok, seen = d.exactly_once()
    return Outcome("checkpoint truncated after an interrupt", "ignored with a warning; the cell trains anew",
                   f"rerun {again.returncode}; {seen}", again.returncode == 0 and ok)  # fmt: skip


def fault_empty_cells(root: Path) -> Outcome:
    d = Drill(root)
    out = d.run("--cells", ",")
    created = (root / "mlflow.db").exists() and not d.runs().empty
    return Outcome("--cells ,", "error: before any run is created", f"exit {out.returncode}: {out.stderr.strip()[:80]}",
                   out.returncode == 2 and not created)  # fmt: skip


def fault_full_store_disk(root: Path) -> Outcome:
    with tmpfs(root / "store", "24m") as mounted:
        if not mounted:
            return Outcome("store disk fills mid-grid", "error: naming the folder", "skipped (needs root)", None)
        d = Drill(root, uri=f"sqlite:///{root}/store/mlflow.db")
        env = {"SOTA_ABLATE_MIN_FREE_MB": "4"}
        p = d.start("first.log", env=env)
        d.wait_for("first.log", "[2/3] b")
        fill = root / "store" / "fill"
        with fill.open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        full_at = time.monotonic()
        rc = p.wait(timeout=300)
        took = time.monotonic() - full_at
        text = (root / "first.log").read_text()
        named = f"error: the disk of {root}/store is full" in text and "Traceback" not in text
        fill.unlink()
        again = d.run(env=env)
        ok, seen = d.exactly_once()
        return Outcome("sqlite store's disk fills up mid-grid (24 MiB tmpfs), then freed",
                       "error: naming the folder and the space needed, within seconds; the rerun finishes",
                       f"exit {rc} {took:.0f} s after the disk filled{', folder named' if named else ''}; "
                       f"rerun {again.returncode}; {seen}", rc == 2 and named and took < 60 and again.returncode == 0
                       and ok)  # fmt: skip


def fault_bad_options(root: Path) -> Outcome:
    d = Drill(root)
    bad = [("--seeds", "0,0"), ("--epochs-scale", "nan"), ("--cells", "a,a"), ("--set", "lr"), ("--device", "gpu"),
           ("--tracking-uri", "sqlite://x.db")]  # fmt: skip
    outs = [d.run(option, value) for option, value in bad]
    good = [o.returncode == 2 and o.stderr.startswith(f"error: {opt}") for o, (opt, _) in zip(outs, bad, strict=True)]
    created = (root / "mlflow.db").exists()
    return Outcome("bad option values (repeated seeds and cells, nan, KEY without =, unknown device, sqlite://)",
                   "error: naming the option and the fix, nothing created",
                   f"{sum(good)}/{len(bad)} refused with error: --option; store {'created' if created else 'untouched'}",
                   all(good) and not created)  # fmt: skip


def fault_hostile_folders(root: Path) -> Outcome:
    d = Drill(root)
    pristine = root / "pristine"
    shutil.copytree(d.images, pristine, symlinks=True)
    w0, w1 = CLASSES[0], CLASSES[1]
    cases = {  # name in the error: how to make it
        "p.JPEG": lambda r: os.mkfifo(r / "train" / w0 / "p.JPEG"),  # a reader would block on it for ever
        "dup.JPEG": lambda r: os.symlink(r / "train" / w0 / f"{w0}_1.JPEG", r / "train" / w1 / "dup.JPEG"),
        "gone.JPEG": lambda r: os.symlink(r / "nowhere.JPEG", r / "train" / w0 / "gone.JPEG"),
        "is a file": lambda r: None,
    }
    good = []
    for named, make in cases.items():
        shutil.rmtree(d.images)
        shutil.copytree(pristine, d.images, symlinks=True)
        make(d.images)
        data = d.images / "train" / w0 / f"{w0}_0.JPEG" if named == "is a file" else d.images
        try:
            out = d.run("--data", str(data), timeout=120)
        except subprocess.TimeoutExpired:
            good.append(False)
            continue
        err = out.stderr
        good.append(out.returncode == 2 and err.startswith("error: ") and named in err and "Traceback" not in err)
    runs = d.runs()
    return Outcome("hostile data folders: a FIFO named .JPEG, one file in two classes (link), a broken link, "
                   "--data naming a file", "error: naming the file and the fix, before any run, no hang",
                   f"{sum(good)}/{len(cases)} refused by name; {len(runs)} run(s) in the store",
                   all(good) and runs.empty)  # fmt: skip


def fault_store_not_a_store(root: Path) -> Outcome:
    d = Drill(root)
    (root / "mlflow.db").write_bytes(os.urandom(4096))
    report = [sys.executable, "-m", "sota_ablate", "report", "--tracking-uri", d.uri, "--out", str(root / "rep")]
    outs = [d.run(), subprocess.run(report, capture_output=True, text=True, timeout=120)]
    (root / "mlflow.db").unlink()
    first = d.run("--cells", "a")
    client = mlflow.MlflowClient(d.uri)
    client.delete_experiment(client.get_experiment_by_name("sota_ablate").experiment_id)
    outs += [d.run(), subprocess.run(report, capture_output=True, text=True, timeout=120)]
    says = ["is not an SQLite database"] * 2 + ["is deleted"] * 2
    good = [o.returncode == 2 and o.stderr.startswith("error: ") and w in o.stderr and "Traceback" not in o.stderr
            for o, w in zip(outs, says, strict=True)]  # fmt: skip
    return Outcome("store file of garbage bytes; experiment deleted in MLflow (run-grid and report each)",
                   "error: naming the file / the restore command; never a traceback",
                   f"first grid {first.returncode}; {sum(good)}/4 refused with error:", first.returncode == 0
                   and all(good))  # fmt: skip


def fault_cache_never_repairs(root: Path) -> Outcome:
    d = Drill(root)
    first = d.run("--cells", "a")
    key = next(p for p in d.cache.iterdir() if not p.name.startswith("."))
    shutil.rmtree(key)
    key.write_text("not a cache")  # a file where the cache folder was: used to fail on every run, never repaired
    again = d.run("--cells", "a", "--force")
    third = d.run("--cells", "a", "--force")
    rebuilt = ["rebuil" in (o.stdout + o.stderr).lower() for o in (again, third)]
    return Outcome("decode cache folder replaced by a file", "rebuilt once with a warning, then a plain cache hit",
                   f"exits {first.returncode}, {again.returncode}, {third.returncode}; rebuilt {rebuilt[0]}, "
                   f"then {rebuilt[1]}", (first.returncode, again.returncode, third.returncode) == (0, 0, 0)
                   and rebuilt == [True, False])  # fmt: skip


FAULTS: dict[str, Callable[[Path], Outcome]] = {
    "sigterm": fault_sigterm,
    "sigkill": fault_sigkill,
    "concurrent": fault_concurrent,
    "replaced_data": fault_replaced_data,
    "zeroed_cache": fault_zeroed_cache,
    "full_cache_disk": fault_full_cache_disk,
    "full_checkpoint_disk": fault_full_checkpoint_disk,
    "outage": fault_outage,
    "damaged_checkpoint": fault_damaged_checkpoint,
    "empty_cells": fault_empty_cells,
    "full_store_disk": fault_full_store_disk,
    "bad_options": fault_bad_options,
    "hostile_folders": fault_hostile_folders,
    "store_not_a_store": fault_store_not_a_store,
    "cache_never_repairs": fault_cache_never_repairs,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated faults (default all: {', '.join(FAULTS)})")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(FAULTS)
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"fault-{name}-") as tmp:
            start = time.monotonic()
            try:
                outcome = FAULTS[name](Path(tmp))
            except Exception as err:  # a fault that breaks the drill itself is a failure of the drill
                outcome = Outcome(name, "-", f"drill error: {type(err).__name__}: {err}"[:160], False)
            results.append(outcome)
            mark = {True: "ok", False: "FAILED", None: "skipped"}[outcome.ok]
            print(f"{name}: {mark} ({time.monotonic() - start:.0f} s) - {outcome.observed}", flush=True)
    print("\n| fault | expected | observed | ok |\n|---|---|---|---|")
    for r in results:
        print(
            f"| {r.fault} | {r.expected} | {r.observed} | {dict([(True, 'yes'), (False, '**no**'), (None, 'skipped')])[r.ok]} |"
        )
    return 0 if all(r.ok is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
