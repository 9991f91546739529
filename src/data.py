"""CIFAR-10 sources, conversion into one prepared format, and loading it back.

Every source (the official archive, downloaded or local; an image folder as a
directory, .tar, .tar.gz, .tgz or .zip) becomes the same prepared directory:

    train.npz, val.npz, test.npz   images uint8 (N, 32, 32, 3), labels int64 (N,)
    manifest.json                  source, split, counts per class, sha256 of each file

Every split is stored in one seeded shuffled order (`data.split_seed`), whatever the
order of the source: the images are first put in a canonical order (by label, then
by a digest of their pixels), so the official archive and an image folder of the
same images give the same arrays, and any "first N images" cut sees every class.

Writes are atomic (a temporary sibling, then rename), so a failure never leaves
something that looks complete. Only numpy and pillow are imported here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.config import CIFAR10_CLASSES, SOURCE_ENV_VAR, DataConfig

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OFFICIAL_DIR = "cifar-10-batches-py"
OFFICIAL_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


class DataError(RuntimeError):
    """The source is unreachable, corrupt or not CIFAR-10 shaped; the message says where."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    manifest: dict


# --------------------------------------------------------------------------- helpers


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _progress(total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the benchmark machine may have no tqdm
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


# --------------------------------------------------------------------------- download


def offline_hint() -> str:
    return (
        f"Offline? Point the pipeline at a local copy instead: set {SOURCE_ENV_VAR}=<path> "
        "(the official cifar-10-python.tar.gz, or an image folder train|test/<class>/*.png|jpg "
        "as a directory, .tar, .tar.gz or .zip), or set data.source in params.yaml."
    )


def download(url: str, dest: Path, md5: str, timeout_s: float, retries: int) -> Path:
    """Fetch `url` to `dest` with a progress bar, a timeout and retries; md5-checked.

    An existing `dest` with the right md5 is reused. The download lands in a
    temporary file that is renamed only after the checksum matches.
    """
    if dest.is_file() and file_digest(dest, "md5") == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2**attempt, 30))
        tmp = dest.with_name(dest.name + ".part")
        try:
            _fetch(url, tmp, timeout_s)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            tmp.unlink(missing_ok=True)
            last_error = exc
            continue
        got = file_digest(tmp, "md5")
        if got != md5:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"md5 mismatch for {url}: expected {md5}, got {got}. The download is corrupt "
                "or the URL serves another file; nothing was kept."
            )
        os.replace(tmp, dest)
        return dest
    reason = getattr(last_error, "reason", last_error)
    raise DataError(
        f"Could not download {url} after {retries + 1} attempt(s): {reason}. {offline_hint()}"
    )


def _fetch(url: str, dest: Path, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "cifar-mlops"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(dest, "wb") as out:
        total = response.headers.get("Content-Length")
        bar = _progress(int(total) if total else None, f"download {Path(url).name}")
        try:
            while block := response.read(1 << 16):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total and out.tell() != int(total):
            raise OSError(f"connection closed after {out.tell()} of {total} bytes")


# --------------------------------------------------------------------------- readers


def read_official_archive(path: Path, md5: str | None) -> tuple[Split, Split]:
    """Read cifar-10-python.tar.gz (pickled batches) into train and test splits."""
    if md5 is not None:
        got = file_digest(path, "md5")
        if got != md5:
            raise DataError(
                f"{path}: md5 mismatch (expected {md5}, got {got}); the archive is corrupt, "
                "truncated or not the official cifar-10-python.tar.gz"
            )
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and (name in OFFICIAL_TRAIN_BATCHES or name == "test_batch"):
                    fh = tar.extractfile(member)
                    batches[name] = pickle.load(fh, encoding="bytes")  # noqa: S301 (md5-checked)
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({exc})") from exc
    missing = [b for b in (*OFFICIAL_TRAIN_BATCHES, "test_batch") if b not in batches]
    if missing:
        raise DataError(f"{path}: not a CIFAR-10 python archive, missing {missing}")

    def to_split(names: list[str]) -> Split:
        images, labels = [], []
        for name in names:
            batch = batches[name]
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{path}:{name}: expected (N, 3072) pixels, got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))

    return to_split(list(OFFICIAL_TRAIN_BATCHES)), to_split(["test_batch"])


def _iter_folder(root: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix(), path.read_bytes


def _iter_tar(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile():
                payload = tar.extractfile(member).read()
                yield member.name, lambda payload=payload: payload


def _iter_zip(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.is_dir():
                yield info.filename, lambda info=info: zf.read(info)


def _decode(name: str, payload: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(payload)) as img:
            img.load()
            if img.mode != "RGB" or img.size != (32, 32):
                raise DataError(f"{name}: expected a 32x32 RGB image, got {img.size} {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from exc


def read_image_folder(path: Path) -> tuple[Split, Split]:
    """Read train|test/<class>/*.{png,jpg} from a directory or an archive of one.

    The tree may sit under one top-level folder (as GitHub archives do).
    """
    if path.is_dir():
        entries = _iter_folder(path)
    elif zipfile.is_zipfile(path):
        entries = _iter_zip(path)
    else:
        entries = _iter_tar(path)
    found: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {"train": {}, "test": {}}
    try:
        for name, read in entries:
            parts = name.strip("/").split("/")
            if len(parts) < 3 or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            split, cls = parts[-3], parts[-2]
            if split not in found:
                continue
            if cls not in CIFAR10_CLASSES:
                raise DataError(
                    f"{path}: {name}: unknown class {cls!r}; expected {list(CIFAR10_CLASSES)}"
                )
            found[split].setdefault(cls, []).append((name, _decode(f"{path}: {name}", read())))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc

    def to_split(split: str) -> Split:
        missing = [c for c in CIFAR10_CLASSES if not found[split].get(c)]
        if missing:
            raise DataError(f"{path}: {split}/ has no images for class(es) {missing}")
        images, labels = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            items = sorted(found[split][cls], key=lambda item: item[0])
            images.extend(img for _, img in items)
            labels.extend([label] * len(items))
        return Split(np.stack(images), np.asarray(labels, dtype=np.int64))

    return to_split("train"), to_split("test")


def _is_official_archive(path: Path) -> bool:
    if not path.is_file() or zipfile.is_zipfile(path):
        return False
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            return first is not None and first.name.split("/")[0] == OFFICIAL_DIR
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({exc})") from exc


def read_source(cfg: DataConfig, raw_dir: Path) -> tuple[Split, Split, dict]:
    """Resolve `cfg.source` and read it into (train, test, provenance)."""
    if cfg.source == "official":
        archive = download(
            cfg.url, raw_dir / Path(cfg.url).name, cfg.md5, cfg.timeout_s, cfg.retries
        )
        train, test = read_official_archive(archive, cfg.md5)
        return train, test, {"kind": "official-download", "url": cfg.url, "md5": cfg.md5}
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {cfg.source!r} does not exist. Use 'official' to download, or a path "
            f"to a local copy (via data.source or {SOURCE_ENV_VAR})."
        )
    if _is_official_archive(path):
        train, test = read_official_archive(path, cfg.md5)
        return train, test, {"kind": "official-archive", "path": str(path), "md5": cfg.md5}
    train, test = read_image_folder(path)
    digest = file_digest(path) if path.is_file() else None
    return train, test, {"kind": "image-folder", "path": str(path), "sha256": digest}


# --------------------------------------------------------------------------- preparing


def canonical_order(split: Split) -> Split:
    """The same images in an order that does not depend on the source's: by label,
    then by a digest of the pixels (identical images are interchangeable)."""
    digests = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8).digest(), "big")
            for img in split.images
        ),
        dtype=np.uint64,
        count=len(split),
    )
    order = np.lexsort((digests, split.labels))
    return Split(split.images[order], split.labels[order])


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified split: the same share of every class goes to validation. Both parts
    come back shuffled (seeded); the result depends on the order of `train`, so pass
    it in `canonical_order`."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == label)
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(rng.choice(idx, size=n_val, replace=False))
    val_mask = np.zeros(len(train), dtype=bool)
    val_mask[np.concatenate(val_idx)] = True
    keep = np.flatnonzero(~val_mask)
    val = np.flatnonzero(val_mask)
    return _take(train, rng.permutation(keep)), _take(train, rng.permutation(val))


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def make_splits(train_full: Split, test: Split, val_fraction: float, seed: int) -> dict[str, Split]:
    """train, val and test as stored: the same for every source of the same images,
    each in a seeded shuffled order (no class-sorted runs)."""
    train, val = split_train_val(canonical_order(train_full), val_fraction, seed)
    test = canonical_order(test)
    # its own stream (seed, 1): adding a test image does not reshuffle train and val
    test = _take(test, np.random.default_rng([seed, 1]).permutation(len(test)))
    return {"train": train, "val": val, "test": test}


def class_counts(split: Split) -> dict[str, int]:
    counts = np.bincount(split.labels, minlength=len(CIFAR10_CLASSES))
    return {cls: int(n) for cls, n in zip(CIFAR10_CLASSES, counts)}


def prepare_dataset(cfg: DataConfig, out_dir: Path, raw_dir: Path) -> dict:
    """Read the configured source and write the prepared directory atomically.

    Returns the manifest. Any failure leaves `out_dir` absent (never half written).
    """
    train_full, test, provenance = read_source(cfg, raw_dir)
    for split_name, split in (("train", train_full), ("test", test)):
        if split.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{split_name}: images must be {IMAGE_SHAPE}, got {split.images.shape}")
    splits = make_splits(train_full, test, cfg.val_fraction, cfg.split_seed)

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        files = {}
        for name, split in splits.items():
            target = tmp / f"{name}.npz"
            np.savez(target, images=split.images, labels=split.labels)
            files[target.name] = file_digest(target)
        manifest = {
            "source": provenance,
            "split": {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed},
            "classes": list(CIFAR10_CLASSES),
            "counts": {name: len(split) for name, split in splits.items()},
            "class_counts": {name: class_counts(split) for name, split in splits.items()},
            "sha256": files,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def load_dataset(data_dir: str | Path, verify: bool = False) -> Dataset:
    """Load the prepared directory; `verify` re-checks every file's sha256."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"{data_dir} holds no prepared data set ({MANIFEST} missing): run `dvc repro download`"
        )
    manifest = json.loads(manifest_path.read_text())
    splits = {}
    for name in SPLITS:
        path = data_dir / f"{name}.npz"
        if verify and file_digest(path) != manifest["sha256"].get(path.name):
            raise DataError(f"{path}: sha256 differs from {MANIFEST}; re-run `dvc repro download`")
        try:
            with np.load(path) as npz:
                splits[name] = Split(npz["images"], npz["labels"].astype(np.int64))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: unreadable prepared split ({exc})") from exc
    return Dataset(**splits, manifest=manifest)
