"""The download stage's real code on tiny archives written here (no internet)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from src.config import DataConfig
from src.data import DataError, file_digest, load_dataset, prepare_dataset
from tests.conftest import (
    N_TEST_PER_CLASS,
    N_TRAIN_PER_CLASS,
    archive_folder,
    write_image_folder,
)


@pytest.fixture
def http_server(tmp_path: Path):
    """Serves tmp_path/www on 127.0.0.1; yields (base_url, stop)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def stop():
        server.shutdown()
        server.server_close()

    yield url, www, stop
    stop()


def _cfg(**kw) -> DataConfig:
    base = dict(val_fraction=0.2, retries=0, timeout_s=5)
    base.update(kw)
    return DataConfig(**base)


def _check_prepared(out: Path, tiny_cifar) -> dict:
    ds = load_dataset(out, verify=True)
    n_train = len(tiny_cifar["train"][1])
    assert len(ds.train) + len(ds.val) == n_train
    assert len(ds.val) == round(n_train * 0.2)
    assert len(ds.test) == len(tiny_cifar["test"][1])
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape[1:] == (32, 32, 3)
    assert ds.train.labels.dtype == np.int64
    counts = ds.manifest["class_counts"]
    assert set(counts["val"].values()) == {round(N_TRAIN_PER_CLASS * 0.2)}  # stratified
    assert set(counts["test"].values()) == {N_TEST_PER_CLASS}
    return ds.manifest


def test_download_official_archive_over_http(tmp_path, http_server, official_archive, tiny_cifar):
    url, www, _ = http_server
    (www / official_archive.name).write_bytes(official_archive.read_bytes())
    cfg = _cfg(url=f"{url}/{official_archive.name}", md5=file_digest(official_archive, "md5"))
    manifest = prepare_dataset(cfg, tmp_path / "out", tmp_path / "raw")
    _check_prepared(tmp_path / "out", tiny_cifar)
    assert manifest["source"]["kind"] == "official-download"
    # pixels survive the pickled CHW layout exactly
    ds = load_dataset(tmp_path / "out")
    all_images = np.concatenate([ds.train.images, ds.val.images])
    assert {img.tobytes() for img in all_images} == {
        img.tobytes() for img in tiny_cifar["train"][0]
    }


def test_wrong_md5_fails_and_leaves_nothing(tmp_path, http_server, official_archive):
    url, www, _ = http_server
    (www / official_archive.name).write_bytes(official_archive.read_bytes())
    cfg = _cfg(url=f"{url}/{official_archive.name}", md5="0" * 32)
    with pytest.raises(DataError, match="md5 mismatch"):
        prepare_dataset(cfg, tmp_path / "out", tmp_path / "raw")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "raw").glob("*"))  # no partial download either


def test_server_gone_gives_the_offline_error(tmp_path, http_server):
    url, _, stop = http_server
    stop()
    cfg = _cfg(url=f"{url}/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg, tmp_path / "out", tmp_path / "raw")
    message = str(info.value)
    assert "CIFAR10_SOURCE" in message and "image folder" in message
    assert not (tmp_path / "out").exists()


def test_local_official_archive(tmp_path, official_archive, tiny_cifar):
    cfg = _cfg(source=str(official_archive), md5=file_digest(official_archive, "md5"))
    manifest = prepare_dataset(cfg, tmp_path / "out", tmp_path / "raw")
    assert manifest["source"]["kind"] == "official-archive"
    _check_prepared(tmp_path / "out", tiny_cifar)


def _pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted((img.tobytes(), int(label)) for img, label in zip(images, labels))


@pytest.mark.parametrize("kind", ["dir", "tar", "tar.gz", "zip"])
def test_image_folder_sources_give_the_same_arrays(tmp_path, tiny_cifar, official_archive, kind):
    folder = write_image_folder(tmp_path / "imgs", tiny_cifar, ext="png")
    source = folder if kind == "dir" else archive_folder(folder, tmp_path / f"imgs.{kind}")
    prepare_dataset(_cfg(source=str(source)), tmp_path / "out", tmp_path / "raw")
    manifest = _check_prepared(tmp_path / "out", tiny_cifar)
    assert manifest["source"]["kind"] == "image-folder"
    # PNG is lossless: every source holds exactly the original test images, each
    # with its own label
    ds = load_dataset(tmp_path / "out")
    assert _pairs(ds.test.images, ds.test.labels) == _pairs(*tiny_cifar["test"])
    # ... in the very order the official archive of the same images gives (its
    # batches are mixed, the folder is class-sorted): the same prepared arrays
    md5 = file_digest(official_archive, "md5")
    prepare_dataset(_cfg(source=str(official_archive), md5=md5), tmp_path / "ref", tmp_path)
    ref = load_dataset(tmp_path / "ref")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(ds, split).images, getattr(ref, split).images)
        np.testing.assert_array_equal(getattr(ds, split).labels, getattr(ref, split).labels)
    assert ds.manifest["sha256"] == ref.manifest["sha256"]


def test_every_split_is_stored_shuffled(tmp_path, image_folder, tiny_cifar):
    """An image folder is read class by class; the stored splits are not: the first
    50 images of each see many classes, and no class runs in one block."""
    prepare_dataset(_cfg(source=str(image_folder)), tmp_path / "out", tmp_path / "raw")
    ds = load_dataset(tmp_path / "out")
    for split in ("train", "val", "test"):
        labels = getattr(ds, split).labels
        assert len(np.unique(labels[:50])) >= 6, (split, labels[:50])
        changes = int((np.diff(labels) != 0).sum())
        assert changes > len(labels) // 2, (split, changes)  # sorted: 9 changes
    # the order is the seed's: another split_seed, another order of the same test set
    prepare_dataset(_cfg(source=str(image_folder), split_seed=1), tmp_path / "b", tmp_path)
    other = load_dataset(tmp_path / "b")
    assert not np.array_equal(other.test.labels, ds.test.labels)
    assert _pairs(other.test.images, other.test.labels) == _pairs(ds.test.images, ds.test.labels)


def test_split_is_deterministic_and_seeded(tmp_path, official_archive):
    cfg = _cfg(source=str(official_archive), md5=file_digest(official_archive, "md5"))
    prepare_dataset(cfg, tmp_path / "a", tmp_path / "raw")
    prepare_dataset(cfg, tmp_path / "b", tmp_path / "raw")
    prepare_dataset(dataclasses.replace(cfg, split_seed=1), tmp_path / "c", tmp_path / "raw")
    a, b, c = (load_dataset(tmp_path / x) for x in "abc")
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert a.manifest["sha256"] == b.manifest["sha256"]
    assert not np.array_equal(a.val.images, c.val.images)


def test_truncated_archive_is_refused(tmp_path, official_archive):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(official_archive.read_bytes()[: official_archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        prepare_dataset(
            _cfg(source=str(cut), md5=file_digest(cut, "md5")), tmp_path / "o", tmp_path
        )
    assert not (tmp_path / "o").exists()


def test_corrupt_official_archive_fails_md5(tmp_path, official_archive):
    bad = tmp_path / "bad.tar.gz"
    payload = bytearray(official_archive.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    bad.write_bytes(bytes(payload))
    cfg = _cfg(source=str(bad), md5=file_digest(official_archive, "md5"))
    with pytest.raises(DataError, match="md5 mismatch"):
        prepare_dataset(cfg, tmp_path / "o", tmp_path)


def test_missing_class_is_named(tmp_path, tiny_cifar):
    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    for path in (folder / "train" / "frog").iterdir():
        path.unlink()
    (folder / "train" / "frog").rmdir()
    with pytest.raises(DataError, match=r"train/ has no images for class\(es\) \['frog'\]"):
        prepare_dataset(_cfg(source=str(folder)), tmp_path / "o", tmp_path)


def test_wrong_size_image_is_named(tmp_path, tiny_cifar):
    from PIL import Image

    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    bad = folder / "test" / "cat" / "0123.png"
    Image.new("RGB", (28, 28)).save(bad)
    with pytest.raises(DataError, match=r"test/cat/0123.png.*32x32 RGB"):
        prepare_dataset(_cfg(source=str(folder)), tmp_path / "o", tmp_path)


def test_grayscale_and_garbage_images_are_named(tmp_path, tiny_cifar):
    from PIL import Image

    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    Image.new("L", (32, 32)).save(folder / "train" / "dog" / "gray.png")
    with pytest.raises(DataError, match="gray.png"):
        prepare_dataset(_cfg(source=str(folder)), tmp_path / "o", tmp_path)
    (folder / "train" / "dog" / "gray.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="gray.png.*not a readable image"):
        prepare_dataset(_cfg(source=str(folder)), tmp_path / "o", tmp_path)


def test_rerun_after_failure_starts_clean(tmp_path, tiny_cifar, official_archive):
    out = tmp_path / "out"
    with pytest.raises(DataError):
        prepare_dataset(_cfg(source=str(tmp_path / "missing")), out, tmp_path)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    prepare_dataset(
        _cfg(source=str(official_archive), md5=file_digest(official_archive, "md5")), out, tmp_path
    )
    assert load_dataset(out, verify=True).manifest["counts"]["test"] == len(tiny_cifar["test"][1])


def test_tampered_prepared_file_is_detected(tmp_path, official_archive):
    out = tmp_path / "out"
    prepare_dataset(
        _cfg(source=str(official_archive), md5=file_digest(official_archive, "md5")), out, tmp_path
    )
    np.savez(out / "val.npz", images=np.zeros((1, 32, 32, 3), np.uint8), labels=np.zeros(1))
    with pytest.raises(DataError, match="sha256"):
        load_dataset(out, verify=True)
