"""The download stage's real code on tiny archives written here (no internet)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import json
import os
import pickle
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from src.config.schema import DataConfig
from src.data.prepare import (
    PRODUCER,
    DataError,
    file_digest,
    load_dataset,
    prepare_dataset,
)
from src.data.sources import BatchUnpickler
from src.runtime.errors import ConfigError
from tests.conftest import (
    N_TEST_PER_CLASS,
    N_TRAIN_PER_CLASS,
    archive_folder,
    write_image_folder,
    write_official_archive,
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
    # downloaded or a local copy: the same archive, named the same way
    assert manifest["source"] == {
        "kind": "official-archive",
        "sha256": file_digest(official_archive),
    }
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


@pytest.mark.parametrize("kind", ["dir", "zip"])
@pytest.mark.parametrize("side", [15000, 10000])  # beyond 2x Pillow's limit, and 1x-2x
def test_a_huge_image_is_named_in_one_line_and_nothing_is_written(
    project, tiny_cifar, capsys, kind, side
):
    """A 15000x15000 PNG (a few hundred bytes) in an image-folder source: the data stage
    names the file, exits 1 and leaves no prepared data; nothing is decompressed."""
    from pipelines import download
    from tests.conftest import update_params
    from tests.crafted import huge_png

    folder = write_image_folder(project.parent / "imgs", tiny_cifar)
    (folder / "train" / "cat" / "huge.png").write_bytes(huge_png(side, side))
    source = folder if kind == "dir" else archive_folder(folder, project.parent / "imgs.zip")
    update_params(project, **{"data.source": str(source)})
    with pytest.raises(SystemExit) as info:
        download.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {source}: ") and "train/cat/huge.png: refused" in line
    assert f"{side * side} pixels" in line and "Traceback" not in err
    data = project / "data"
    assert not data.exists() or [p.name for p in data.iterdir()] in ([], ["raw"])


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


# --------------------------------------------------------------------------- safety


def _official_cfg(archive: Path) -> DataConfig:
    return _cfg(source=str(archive), md5=file_digest(archive, "md5"))


def test_only_a_prepared_folder_of_this_project_is_replaced(tmp_path, official_archive):
    out = tmp_path / "out"
    cfg = _official_cfg(official_archive)
    assert prepare_dataset(cfg, out, tmp_path)["producer"] == PRODUCER
    first = load_dataset(out).manifest
    prepare_dataset(dataclasses.replace(cfg, split_seed=5), out, tmp_path)  # ours: replaced
    assert load_dataset(out).manifest["split"]["seed"] == 5 != first["split"]["seed"]

    # a user's folder: refused before the source is even read (it does not exist here)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    missing = _cfg(source=str(tmp_path / "no-such-source"))
    with pytest.raises(DataError, match="not a prepared data folder of this project") as info:
        prepare_dataset(missing, mine, tmp_path)
    assert "thesis.tex" in str(info.value) and "touched nothing" in str(info.value)
    assert (mine / "thesis.tex").read_text() == "years of work"

    # a manifest.json that is not ours, or only prepared-looking files, is not enough
    (mine / "thesis.tex").unlink()
    (mine / "manifest.json").write_text('{"name": "someone else"}')
    with pytest.raises(DataError, match="was not written by this project"):
        prepare_dataset(cfg, mine, tmp_path)
    assert (mine / "manifest.json").exists()
    (mine / "manifest.json").unlink()
    (mine / "train.npz").write_bytes(b"mine")
    with pytest.raises(DataError, match="no readable manifest.json"):
        prepare_dataset(cfg, mine, tmp_path)
    assert (mine / "train.npz").read_bytes() == b"mine"


def test_a_prepared_folder_from_before_the_marker_is_still_replaced(tmp_path, official_archive):
    out = tmp_path / "out"
    cfg = _official_cfg(official_archive)
    prepare_dataset(cfg, out, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["producer"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    prepare_dataset(cfg, out, tmp_path)
    assert load_dataset(out, verify=True).manifest["producer"] == PRODUCER


def test_a_killed_runs_temp_folders_are_removed_by_the_next_run(tmp_path, official_archive):
    out = tmp_path / "data" / "cifar10"
    cfg = _official_cfg(official_archive)
    prepare_dataset(cfg, out, tmp_path)
    parent = out.parent
    # what SIGKILL leaves at each point of a run: mid-write, mid-swap, and the old naming
    stale = [parent / ".cifar10.tmp-k1ll3d_a", parent / ".cifar10.old-k1ll3d_b"]
    stale.append(parent / ".cifar10.abcd1234")
    for folder in stale:
        shutil.copytree(out, folder)
    (stale[0] / "val.npz").unlink()  # killed halfway through writing
    (stale[0] / ".manifest.json.x1y2.tmp").write_text("{")
    # look-alikes that are not its own: other names, or holding other files
    keep = [parent / ".cifar10.backup", parent / ".other.tmp-abcd1234", parent / "cifar10-old"]
    for folder in keep:
        shutil.copytree(out, folder)
    foreign = parent / ".cifar10.tmp-zzzz9999"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    keep.append(foreign)

    prepare_dataset(cfg, out, tmp_path)
    assert not [folder for folder in stale if folder.exists()]
    assert all(folder.exists() for folder in keep)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".cifar10.")) == [
        ".cifar10.backup",
        ".cifar10.tmp-zzzz9999",
    ]


def _crafted_pickle(marker: Path) -> bytes:
    """A pickle that, unpickled with plain `pickle`, creates `marker`."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    return pickle.dumps({b"data": Payload(), b"labels": [0]})


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_a_crafted_official_archive_cannot_run_code(tmp_path, official_archive):
    marker = tmp_path / "pwned"
    payload = _crafted_pickle(marker)
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    with tarfile.open(official_archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    members["cifar-10-batches-py/data_batch_1"] = payload
    crafted = _write_tar(tmp_path / "crafted.tar.gz", members)

    # data.md5 set to the crafted file's md5 (the trust anchor misconfigured): refused
    with pytest.raises(DataError, match="refused to unpickle builtins.exec") as info:
        prepare_dataset(_official_cfg(crafted), tmp_path / "out", tmp_path)
    assert "data_batch_1" in str(info.value) and str(crafted) in str(info.value)
    # the official md5 (any other file): rejected before anything is unpickled
    with pytest.raises(DataError, match="md5 mismatch.*Nothing was unpickled"):
        prepare_dataset(_cfg(source=str(crafted)), tmp_path / "out", tmp_path)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_batch_unpickler_reads_numpy_arrays_of_any_protocol():
    data = np.arange(24, dtype=np.uint8).reshape(2, 12)
    for protocol in (2, 4, 5):
        blob = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=protocol)
        batch = BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
        np.testing.assert_array_equal(batch[b"data"], data)
        assert batch[b"labels"] == [1, 2]


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("member", ["imgs/../../train/cat/x.png", "/abs/train/cat/x.png"])
def test_archive_members_outside_the_tree_are_refused(tmp_path, tiny_cifar, kind, member):
    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    archive = archive_folder(folder, tmp_path / f"imgs.{kind}")
    png = (folder / "train" / "cat").iterdir().__next__().read_bytes()
    if kind == "zip":
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(zipfile.ZipInfo(member), png)
    else:
        info = tarfile.TarInfo(member)
        info.size = len(png)
        with tarfile.open(archive, "a") as tar:
            tar.addfile(info, io.BytesIO(png))
    with pytest.raises(DataError, match="has an absolute path or '..'; refused") as info:
        prepare_dataset(_cfg(source=str(archive)), tmp_path / "out", tmp_path)
    assert repr(member) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_folder_is_named_not_reported_empty(tmp_path, tiny_cifar, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    locked = folder / "train" / "cat"
    real_scandir = os.scandir

    def scandir(path="."):  # what chmod 000 does for a user other than root
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"cannot read folder {locked}: permission denied"):
        prepare_dataset(_cfg(source=str(folder)), tmp_path / "out", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder")
def test_a_chmod_000_folder_is_named(tmp_path, tiny_cifar):
    folder = write_image_folder(tmp_path / "imgs", tiny_cifar)
    locked = folder / "train" / "cat"
    locked.chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            prepare_dataset(_cfg(source=str(folder)), tmp_path / "out", tmp_path)
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_a_split_that_empties_a_class_names_val_fraction(tmp_path, official_archive, fraction):
    cfg = dataclasses.replace(_official_cfg(official_archive), val_fraction=fraction)
    with pytest.raises(ConfigError, match="at least one") as info:
        prepare_dataset(cfg, tmp_path / "out", tmp_path)
    assert info.value.key == "data.val_fraction"
    assert f"of the {N_TRAIN_PER_CLASS} training images of class 'airplane'" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["official", "tar.gz", "dir"])
def test_the_same_source_at_two_paths_gives_a_byte_identical_folder(tmp_path, tiny_cifar, kind):
    """The manifest names the source by kind and sha256 only: the prepared folder, and so
    DVC's hash of it, is the same wherever the source lies and whatever its file name."""
    made = tmp_path / "made"
    made.mkdir()
    if kind == "official":
        original = write_official_archive(made / "cifar-10-python.tar.gz", tiny_cifar)
    else:
        folder = write_image_folder(made / "cifar10-png", tiny_cifar)
        original = folder if kind == "dir" else archive_folder(folder, made / "cifar10.tar.gz")
    prepared = []
    renamed = "copy (1)" + "".join(original.suffixes)
    for where, name in (("alice/downloads", original.name), ("bob/elsewhere", renamed)):
        copy = tmp_path / where / name  # the same bytes under another name and path
        copy.parent.mkdir(parents=True)
        if original.is_dir():
            shutil.copytree(original, copy)
        else:
            shutil.copyfile(original, copy)
        md5 = {"md5": file_digest(copy, "md5")} if kind == "official" else {}
        out = tmp_path / where / "prepared"
        prepare_dataset(_cfg(source=str(copy), **md5), out, tmp_path / where / "raw")
        prepared.append(out)
    files = [{p.name: p.read_bytes() for p in out.iterdir()} for out in prepared]
    assert files[0] == files[1]
    assert sorted(files[0]) == ["manifest.json", "test.npz", "train.npz", "val.npz"]
    manifest = json.loads(files[0]["manifest.json"])
    assert set(manifest["source"]) == {"kind", "sha256"}
    assert "copy (1)" not in files[0]["manifest.json"].decode()
    assert str(tmp_path) not in files[0]["manifest.json"].decode()
