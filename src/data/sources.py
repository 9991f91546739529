"""CIFAR-10 sources, read into train and test `Split`s: the official archive
(downloaded from its canonical URL or a local copy) and image folders (a directory,
.tar, .tar.gz, .tgz or .zip laid out `train|test/<class>/*.{png,jpg}`).

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
import os
import pickle
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.config.cifar import CIFAR10_CLASSES, IMAGE_SIZE
from src.config.schema import SOURCE_ENV_VAR, DataConfig
from src.runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OFFICIAL_DIR = "cifar-10-batches-py"
OFFICIAL_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
# What a source may make the data stage read, enforced while reading (in chunks of
# READ_CHUNK_BYTES), never from an archive's own size fields alone. A 32x32 image file is
# a few KB and CIFAR-10's 60,000 of them about 150 MB; an official batch is 31 MB.
MAX_IMAGE_BYTES = 1 << 20  # one image member or file
MAX_SOURCE_BYTES = 2 << 30  # all image members of one source together
MAX_BATCH_BYTES = 64 << 20  # one pickled batch of the official archive
READ_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


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


class ReadBudget:
    """Reads members in bounded chunks: at most MAX_IMAGE_BYTES each and MAX_SOURCE_BYTES
    in all, a DataError naming the limit and the member as soon as one is passed."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.total = 0

    def read(self, name: str, fh: BinaryIO) -> bytes:
        chunks, size = [], 0
        while chunk := fh.read(READ_CHUNK_BYTES):
            size += len(chunk)
            self.total += len(chunk)
            if size > MAX_IMAGE_BYTES:
                raise DataError(
                    f"{self.source}: {name}: larger than MAX_IMAGE_BYTES ({MAX_IMAGE_BYTES} "
                    "bytes), not a 32x32 image; refused"
                )
            if self.total > MAX_SOURCE_BYTES:
                raise DataError(
                    f"{self.source}: its images add up to more than MAX_SOURCE_BYTES "
                    f"({MAX_SOURCE_BYTES} bytes), far more than CIFAR-10; refused"
                )
            chunks.append(chunk)
        return b"".join(chunks)


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
                    if member.size > MAX_BATCH_BYTES:
                        raise DataError(
                            f"{path}: {member.name}: {member.size} bytes, more than "
                            f"MAX_BATCH_BYTES ({MAX_BATCH_BYTES}) for a CIFAR batch; refused"
                        )
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
            pixels = IMAGE_SIZE * IMAGE_SIZE * 3  # 3072: one image, channel-major (C, H, W)
            if data.ndim != 2 or data.shape[1] != pixels:
                raise DataError(f"{path}:{name}: expected (N, {pixels}) pixels, got {data.shape}")
            images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))

    return to_split(list(OFFICIAL_TRAIN_BATCHES)), to_split(["test_batch"])


# Each reader yields (member name, read): `read()` returns the member's bytes (bounded by
# the source's ReadBudget) and is called, if at all, before the next member is yielded.
Entries = Iterator[tuple[str, Callable[[], bytes]]]


def _iter_folder(root: Path) -> Entries:
    def unreadable(exc: OSError) -> None:  # os.walk skips what it cannot list otherwise
        reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
        raise DataError(f"{root}: cannot read folder {exc.filename}: {reason}")

    files = []
    for folder, dirs, names in os.walk(root, onerror=unreadable):
        dirs.sort()
        files += [Path(folder) / name for name in names]
    budget = ReadBudget(root)

    def reader(path: Path, name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with path.open("rb") as fh:
                return budget.read(name, fh)

        return read

    for path in sorted(files):
        if path.is_file():
            name = path.relative_to(root).as_posix()
            yield name, reader(path, name)


def _iter_tar(path: Path) -> Entries:
    budget = ReadBudget(path)
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = _safe_member_name(path, member.name)
            if member.isfile():
                yield name, lambda member=member, name=name: budget.read(
                    name, tar.extractfile(member)
                )


def _iter_zip(path: Path) -> Entries:
    budget = ReadBudget(path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = _safe_member_name(path, info.filename)
            if not info.is_dir():

                def read(info: zipfile.ZipInfo = info, name: str = name) -> bytes:
                    with zf.open(info) as fh:
                        return budget.read(name, fh)

                yield name, read


def _decode(name: str, payload: bytes) -> np.ndarray:
    """uint8 (32, 32, 3) from an image file's bytes; the size and mode are checked from
    the header, so a huge image is refused before anything is decompressed."""
    try:
        with too_large_is_an_error(), Image.open(io.BytesIO(payload)) as img:
            if img.mode != "RGB" or img.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"{name}: expected a 32x32 RGB image, got {img.size} {img.mode}")
            img.load()
            return np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: refused: {exc} (expected a 32x32 RGB image)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from exc


@contextlib.contextmanager
def too_large_is_an_error() -> Iterator[None]:
    """Pillow only warns about an image between its pixel limit and twice that (and
    decodes it); an error instead, like the one it raises beyond twice the limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


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


def folder_digest(root: Path) -> str:
    """sha256 of a folder's content: each file's path relative to `root` and its sha256,
    in sorted order (no location, no file times)."""
    h = hashlib.sha256()
    for name, _ in _iter_folder(root):
        h.update(f"{name}\0{file_digest(root / name)}\n".encode())
    return h.hexdigest()


def describe_source(kind: str, path: Path) -> dict:
    """The source as the manifest names it: its kind and sha256 (of a folder:
    `folder_digest`). No name, path, host or time: the same bytes give the same prepared
    folder, and the same DVC hash, under any file name, wherever the source lies and
    whoever prepares it (the name is MLflow provenance: `source_location`)."""
    digest = folder_digest(path) if path.is_dir() else file_digest(path)
    return {"kind": kind, "sha256": digest}


def source_location(cfg: DataConfig) -> str:
    """Where `cfg.source` is, for MLflow: the download URL, or the local copy's absolute
    path (a location that outlives a DVC experiment's temporary copy)."""
    if cfg.source == "official":
        return cfg.url
    return str(Path(cfg.source).expanduser().resolve())


def read_source(cfg: DataConfig, raw_dir: Path) -> tuple[Split, Split, dict]:
    """Resolve `cfg.source` and read it into (train, test, its `describe_source`). The
    official archive is one kind, downloaded or a local copy: the same file."""
    if cfg.source == "official":
        archive = download(
            cfg.url, raw_dir / Path(cfg.url).name, cfg.md5, cfg.timeout_s, cfg.retries
        )
        train, test = read_official_archive(archive, cfg.md5)
        return train, test, describe_source("official-archive", archive)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {cfg.source!r} does not exist. Use 'official' to download, or a path "
            f"to a local copy (via data.source or {SOURCE_ENV_VAR})."
        )
    if _is_official_archive(path):
        train, test = read_official_archive(path, cfg.md5)
        return train, test, describe_source("official-archive", path)
    train, test = read_image_folder(path)
    return train, test, describe_source("image-folder", path)
