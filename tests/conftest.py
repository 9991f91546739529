"""Shared fixtures: tiny CIFAR-shaped data in the real source formats, and a
temporary project (params.yaml shrunk from the real one, outputs under tmp_path).

Tests never reach the internet: archives are written here and, where a download
is tested, served from 127.0.0.1.
"""

from __future__ import annotations

import io
import pickle
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from src.config.cifar import CIFAR10_CLASSES, IMAGE_SHAPE
from src.config.layout import PROJECT_ROOT

N_TRAIN_PER_CLASS = 20
N_TEST_PER_CLASS = 6


def make_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake CIFAR: each class has its own mean colour plus noise."""
    palette = np.random.default_rng(0).integers(30, 225, size=(len(CIFAR10_CLASSES), 1, 1, 3))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CIFAR10_CLASSES)), n_per_class)
    noise = rng.integers(-30, 31, size=(len(labels), *IMAGE_SHAPE))
    images = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_cifar() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "train": make_images(N_TRAIN_PER_CLASS, seed=1),
        "test": make_images(N_TEST_PER_CLASS, seed=2),
    }


def write_official_archive(path: Path, data: dict) -> Path:
    """cifar-10-python.tar.gz layout: five pickled training batches and a test batch."""
    images, labels = data["train"]
    order = np.random.default_rng(0).permutation(len(labels))  # official batches are mixed
    chunks = np.array_split(order, 5)

    def batch(imgs: np.ndarray, labs: np.ndarray) -> bytes:
        flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
        return pickle.dumps({b"data": flat, b"labels": [int(x) for x in labs]})

    members = {f"data_batch_{i + 1}": batch(images[c], labels[c]) for i, c in enumerate(chunks)}
    members["test_batch"] = batch(*data["test"])
    members["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_image_folder(root: Path, data: dict, ext: str = "png") -> Path:
    for split, (images, labels) in data.items():
        for i, (img, label) in enumerate(zip(images, labels)):
            target = root / split / CIFAR10_CLASSES[label] / f"{i:04d}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(target)
    return root


def archive_folder(folder: Path, target: Path) -> Path:
    """Pack `folder` as .zip, .tar or .tar.gz (by `target`'s name)."""
    if target.name.endswith(".zip"):
        with zipfile.ZipFile(target, "w") as zf:
            for path in sorted(folder.rglob("*")):
                zf.write(path, path.relative_to(folder.parent))
    else:
        mode = "w:gz" if target.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(target, mode) as tar:
            tar.add(folder, arcname=folder.name)
    return target


@pytest.fixture
def official_archive(tmp_path: Path, tiny_cifar) -> Path:
    return write_official_archive(tmp_path / "cifar-10-python.tar.gz", tiny_cifar)


@pytest.fixture
def image_folder(tmp_path: Path, tiny_cifar) -> Path:
    return write_image_folder(tmp_path / "cifar-images", tiny_cifar)


def tiny_params(root: Path, source: str) -> dict:
    """The real params.yaml, shrunk: narrow models, one epoch, CPU, tiny subsets."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["source"] = source
    raw["data"]["val_fraction"] = 0.2
    raw["data"]["retries"] = 0
    raw["data"]["timeout_s"] = 5
    for stage in ("baseline", "improved", "resnet", "lite"):
        train = raw[stage]["train"]
        train.update(epochs=1, batch_size=16, eval_batch_size=64, device="cpu")
    raw["baseline"]["model"]["filters"] = [4, 8, 8]
    raw["baseline"]["model"]["fc"] = [16]
    raw["improved"]["model"]["filters"] = [4, 8, 8, 16]
    raw["improved"]["model"]["fc"] = [16, 8]
    raw["resnet"].update(weights="none", image_size=32)
    raw["lite"].update(weights="none", image_size=32)
    return raw


def write_project(root: Path, archive: Path) -> Path:
    """A project root holding the shrunk params.yaml that reads `archive`."""
    from src.data.prepare import file_digest

    root.mkdir(parents=True)
    raw = tiny_params(root, str(archive))
    raw["data"]["md5"] = file_digest(archive, "md5")
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Point the code at `root`; no tracking server, data override or switch leaks in."""
    mp.setenv("DVC_ROOT", str(root))
    for var in ("MLFLOW_TRACKING_URI", "CIFAR10_SOURCE", "CIFAR_MLOPS_TRACKING"):
        mp.delenv(var, raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch, official_archive) -> Path:
    """A temporary project root: params.yaml here, outputs and mlruns/ under it."""
    root = write_project(tmp_path / "project", official_archive)
    _isolate(monkeypatch, root)
    return root


def update_params(root: Path, **dotted) -> None:
    """Set dotted keys in the temporary project's params.yaml."""
    path = root / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def prepared(project: Path) -> Path:
    """The temporary project after its download stage ran (tracking on)."""
    from pipelines import download

    download.main()
    return project


@pytest.fixture(autouse=True)
def _no_network_fetch(monkeypatch):
    """Belt and braces: torchvision hub downloads fail loudly in tests."""
    import torch.hub

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch):
    """`common.precision: auto` resolves as on a CPU without native bf16, so in-process
    tests compute the same on every machine; tests of the bf16 path force it."""
    from src.training import device

    monkeypatch.setattr(device, "cpu_bf16_flags", lambda: ())


@pytest.fixture(scope="module")
def tune_project(tmp_path_factory, tiny_cifar):
    """One prepared tiny project for a whole module (preparing one, MLflow's database
    included, takes most of the time); every test uses its own study."""
    tmp = tmp_path_factory.mktemp("tune")
    archive = write_official_archive(tmp / "cifar-10-python.tar.gz", tiny_cifar)
    root = write_project(tmp / "project", archive)
    update_params(
        root,
        **{
            "improved.train.num_threads": 1,  # two workers share two cores
            "tune.budget": {"epochs": 2, "subset": None},
            "tune.sampler.n_startup_trials": 2,
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        from pipelines import download

        download.main()
        yield root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` (SQLite backend, served artifacts) on 127.0.0.1: (url, store)."""
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            (store / "artifacts").as_uri(),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up in 120 s")
    yield url, store
    proc.terminate()
    proc.wait(timeout=30)
