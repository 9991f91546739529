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
something that looks complete; a run killed mid-write leaves a temporary sibling that the
next run removes. A prepared directory is replaced only when it is recognisably one
(its manifest carries this project's marker and nothing else lives there).

Nothing read here can run code: the official archive's pickled batches are md5-checked
first (`data.md5` is the trust anchor) and then unpickled by an unpickler that builds only
dicts, lists, bytes and numpy arrays; archive members with absolute paths or `..` are
refused. Only numpy and pillow are imported here.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
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

from src.artifacts import atomic_write_json
from src.config import CIFAR10_CLASSES, SOURCE_ENV_VAR, DataConfig, temp_dir_pattern
from src.errors import ConfigError, DataError

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OFFICIAL_DIR = "cifar-10-batches-py"
OFFICIAL_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
MANIFEST = "manifest.json"
# In every manifest prepare_dataset writes: the data stage replaces only a folder holding it.
PRODUCER = "cifar-mlops prepare_dataset"
PREPARED_FILES = frozenset({MANIFEST, *(f"{split}.npz" for split in SPLITS)})
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _numpy_globals() -> dict[tuple[str, str], object]:
    """What a pickled numpy array may name: the array and dtype types and numpy's own
    rebuild helpers, under the module names old (numpy.core) and new numpy use."""
    reconstruct = np.zeros(1).__reduce__()[0]  # multiarray._reconstruct
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (pickle protocol 5)
    allowed = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes bytes as _codecs.encode(str, "latin1") at pickle protocols < 3
    # (the official, Python 2 pickles hold plain strings and need no global at all).
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of lists, bytes and numpy arrays) and nothing else:
    any other class or function the pickle names is refused, so no pickle runs code."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name} (a CIFAR batch holds only dicts, lists, "
                "bytes and numpy arrays)"
            ) from None


def _safe_member_name(archive: Path, name: str) -> str:
    """`name` unless it is absolute or climbs out with `..` (DataError naming it)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"{archive}: member {name!r} has an absolute path or '..'; refused")
    return name


def read_official_archive(path: Path, md5: str | None) -> tuple[Split, Split]:
    """Read cifar-10-python.tar.gz (pickled batches) into train and test splits.

    `md5` (the params' `data.md5`) is checked before anything is unpickled; `None`
    skips the check, and the batches are still unpickled with :class:`BatchUnpickler`.
    """
    if md5 is not None:
        got = file_digest(path, "md5")
        if got != md5:
            raise DataError(
                f"{path}: md5 mismatch (expected {md5}, got {got}); the archive is corrupt, "
                "truncated or not the official cifar-10-python.tar.gz. Nothing was unpickled."
            )
    batches: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = Path(_safe_member_name(path, member.name)).name
                if member.isfile() and (name in OFFICIAL_TRAIN_BATCHES or name == "test_batch"):
                    fh = tar.extractfile(member)
                    try:
                        batches[name] = BatchUnpickler(fh, encoding="bytes").load()
                    except pickle.UnpicklingError as exc:
                        raise DataError(f"{path}: {member.name}: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({exc})") from exc
    missing = [b for b in (*OFFICIAL_TRAIN_BATCHES, "test_batch") if b not in batches]
    if missing:
        raise DataError(f"{path}: not a CIFAR-10 python archive, missing {missing}")

    def to_split(names: list[str]) -> Split:
        images, labels = [], []
        for name in names:
            batch = batches[name]
            if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
                raise DataError(f"{path}:{name}: not a CIFAR batch (no data and labels)")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{path}:{name}: expected (N, 3072) pixels, got {data.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))

    return to_split(list(OFFICIAL_TRAIN_BATCHES)), to_split(["test_batch"])


def _iter_folder(root: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    def unreadable(exc: OSError) -> None:  # os.walk skips what it cannot list otherwise
        reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
        raise DataError(f"{root}: cannot read folder {exc.filename}: {reason}")

    files = []
    for folder, dirs, names in os.walk(root, onerror=unreadable):
        dirs.sort()
        files += [Path(folder) / name for name in names]
    for path in sorted(files):
        if path.is_file():
            yield path.relative_to(root).as_posix(), path.read_bytes


def _iter_tar(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = _safe_member_name(path, member.name)
            if member.isfile():
                payload = tar.extractfile(member).read()
                yield name, lambda payload=payload: payload


def _iter_zip(path: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = _safe_member_name(path, info.filename)
            if not info.is_dir():
                yield name, lambda info=info: zf.read(info)


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
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read {exc.filename}: permission denied") from exc
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


def validation_count(n: int, val_fraction: float) -> int:
    """How many of a class's `n` training images go to validation."""
    return int(round(n * val_fraction))


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified split: the same share of every class goes to validation. Both parts
    come back shuffled (seeded); the result depends on the order of `train`, so pass
    it in `canonical_order`."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == label)
        n_val = validation_count(len(idx), val_fraction)
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


def check_val_split(train: Split, cfg: DataConfig) -> None:
    """ConfigError (data.val_fraction) when some class would get no validation or no
    training image; the same per-class rounding as :func:`split_train_val`."""
    for label, n in enumerate(np.bincount(train.labels, minlength=len(CIFAR10_CLASSES))):
        n_val = validation_count(n, cfg.val_fraction)
        if n and (n_val == 0 or n_val == n):
            raise ConfigError(
                "data.val_fraction",
                f"{cfg.val_fraction} of the {n} training images of class "
                f"{CIFAR10_CLASSES[label]!r} leaves {n_val} for validation and {n - n_val} for "
                "training; each needs at least one",
            )


def _is_prepared_dir(path: Path) -> tuple[bool, str]:
    """Whether `path` is a folder prepare_dataset wrote (and why not)."""
    if path.is_symlink() or not path.is_dir():
        return False, "it is not a folder"
    names = {p.name for p in path.iterdir()}
    if not names:
        return True, ""
    others = sorted(names - PREPARED_FILES)
    if others:
        return False, f"it holds files the data stage does not write ({others[:5]})"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False, f"it has no readable {MANIFEST}"
    if not isinstance(manifest, dict):
        return False, f"its {MANIFEST} is not this project's"
    # Manifests written before the marker existed are recognised by their layout.
    legacy = manifest.get("classes") == list(CIFAR10_CLASSES) and isinstance(
        manifest.get("sha256"), dict
    )
    if manifest.get("producer") != PRODUCER and not legacy:
        return False, f"its {MANIFEST} was not written by this project"
    return True, ""


def check_replaceable(out_dir: Path) -> None:
    """DataError unless `out_dir` is absent or a prepared folder of this project."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    ok, why = _is_prepared_dir(out_dir)
    if not ok:
        raise DataError(
            f"{out_dir} is not a prepared data folder of this project ({why}); the data stage "
            "replaces only its own folder and touched nothing. Point common.paths.data at a "
            "new folder, or move this one away."
        )


def remove_stale_temp(out_dir: Path) -> list[Path]:
    """Remove `.<name>.tmp-*` / `.<name>.old-*` siblings a killed run left behind (up to
    185 MB each). Only folders matching that pattern and holding nothing but prepared
    files (or atomic-write leftovers) are removed; returns them."""
    pattern = temp_dir_pattern(out_dir.name)
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    for entry in sorted(out_dir.parent.iterdir()):
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        if all(_written_here(p.name) for p in entry.iterdir()):
            shutil.rmtree(entry)
            removed.append(entry)
            print(f"removed {entry}, left by an interrupted data stage", file=sys.stderr)
    return removed


def _written_here(name: str) -> bool:
    """A prepared file, or what atomic_write_json leaves when killed."""
    return name in PREPARED_FILES or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp"))


@contextlib.contextmanager
def _writer_lock(out_dir: Path) -> Iterator[None]:
    """One writer of `out_dir` at a time, so no run removes another's temporary folder.
    The lock is on the parent folder itself: no lock file is left behind."""
    import fcntl

    fd = os.open(out_dir.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another data stage is writing {out_dir}; try again later") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_dataset(cfg: DataConfig, out_dir: Path, raw_dir: Path) -> dict:
    """Read the configured source and write the prepared directory atomically.

    Returns the manifest. An existing `out_dir` that is not a prepared folder of this
    project stops it before anything is read (DataError, nothing touched); otherwise
    the old folder is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir).resolve()
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(out_dir):
        remove_stale_temp(out_dir)
        train_full, test, provenance = read_source(cfg, raw_dir)
        for split_name, split in (("train", train_full), ("test", test)):
            if split.images.shape[1:] != IMAGE_SHAPE:
                raise DataError(
                    f"{split_name}: images must be {IMAGE_SHAPE}, got {split.images.shape}"
                )
        check_val_split(train_full, cfg)
        splits = make_splits(train_full, test, cfg.val_fraction, cfg.split_seed)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        try:
            files = {}
            for name, split in splits.items():
                target = tmp / f"{name}.npz"
                np.savez(target, images=split.images, labels=split.labels)
                files[target.name] = file_digest(target)
            manifest = {
                "producer": PRODUCER,
                "source": provenance,
                "split": {"val_fraction": cfg.val_fraction, "seed": cfg.split_seed},
                "classes": list(CIFAR10_CLASSES),
                "counts": {name: len(split) for name, split in splits.items()},
                "class_counts": {name: class_counts(split) for name, split in splits.items()},
                "sha256": files,
            }
            atomic_write_json(tmp / MANIFEST, manifest)
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
            _swap_in(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _swap_in(new: Path, out_dir: Path) -> None:
    """Rename `new` to `out_dir`; an existing (checked) `out_dir` goes only afterwards."""
    if not out_dir.exists():
        os.replace(new, out_dir)
        return
    check_replaceable(out_dir)  # it may have changed while the source was read
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.replace(out_dir, old)  # onto the empty folder mkdtemp made
    os.replace(new, out_dir)
    shutil.rmtree(old)


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
            with np.load(path, allow_pickle=False) as npz:
                splits[name] = Split(npz["images"], npz["labels"].astype(np.int64))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: unreadable prepared split ({exc})") from exc
    return Dataset(**splits, manifest=manifest)
