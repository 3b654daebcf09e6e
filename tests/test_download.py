"""Imagenette download, extraction and listing against a local HTTP server (never the internet)."""

from __future__ import annotations

import functools
import http.server
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sota_ablate.data import DataConfig, DataError, load_data
from sota_ablate.data.sources import URL_ENV

WNIDS = ["n01440764", "n02102040"]  # tench, English springer


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:  # http.server names its handlers do_<METHOD>
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve a small ``imagenette2-160.tgz`` on 127.0.0.1; yields (base URL, list of requested paths)."""
    source = tmp_path / "build" / "imagenette2-160"
    for split, count in (("train", 3), ("val", 2)):
        for k, wnid in enumerate(WNIDS):
            folder = source / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                colour = (40 * i, 100 * k, 200)
                Image.new("RGB", (24 + 4 * i, 20), colour).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    (source / "noisy_imagenette.csv").write_text("path,noisy_labels_0,is_valid\n")
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "imagenette2-160.tgz", "w:gz") as tar:
        tar.add(source, arcname="imagenette2-160")

    requests: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"requests": requests}), directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_extract_and_list(
    archive_server: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    base_url, requests = archive_server
    root = tmp_path / "datasets"
    cfg = DataConfig(
        variant="160px", path=str(root), download_url=base_url, cache_dir=str(tmp_path / "cache"), presize=16
    )
    data = load_data(cfg, "cpu")
    assert requests and all(r == "/imagenette2-160.tgz" for r in requests)
    assert (root / "imagenette2-160" / "train" / WNIDS[0]).is_dir() and (root / "imagenette2-160.tgz").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".") or p.suffix == ".part"]  # nothing left over
    assert data.classes == WNIDS
    assert len(data.train) == 6 and len(data.valid) == 4
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.valid.labels.tolist() == [0, 0, 1, 1]
    assert data.train.paths[0] == f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG"
    assert data.info["variant"] == "160px" and data.train.images.shape[-1] == 24  # 32x20 capped at 1.5

    seen = len(requests)
    again = load_data(cfg, "cpu")
    assert len(requests) == seen  # extracted already: no second download
    assert again.info["cache_hit"] is True


def test_unreachable_url_says_to_pass_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}")
    cfg = DataConfig(variant="160px", path=str(tmp_path / "datasets"), cache_dir=str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(DataError, match="could not download") as error:
        load_data(cfg, "cpu")
    assert time.perf_counter() - start < 10
    assert "--data PATH" in str(error.value) and URL_ENV in str(error.value)
    assert not (tmp_path / "datasets" / "imagenette2-160").exists()
