"""The prepared data set: every source (`src.data.sources`) converted into one format,
and loading it back.

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
Only numpy is imported here (pillow by `src.data.sources`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.artifacts import atomic_write_json
from src.config.cifar import CIFAR10_CLASSES, IMAGE_SHAPE
from src.config.layout import temp_dir_pattern
from src.config.schema import DataConfig
from src.data.sources import Split, file_digest, read_source
from src.runtime.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
# In every manifest prepare_dataset writes: the data stage replaces only a folder holding it.
PRODUCER = "cifar-mlops prepare_dataset"
PREPARED_FILES = frozenset({MANIFEST, *(f"{split}.npz" for split in SPLITS)})
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    manifest: dict


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
            "replaces only its own folder and touched nothing. Move this one away (the "
            "project layout is fixed)."
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
