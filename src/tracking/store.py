"""Where the MLflow store is: where MLflow 3 itself looks when run from the repository.

MLflow 3 (mlflow/store/tracking/__init__.py, DEFAULT_TRACKING_URI), with no
``MLFLOW_TRACKING_URI``, tracks into ``sqlite:///mlflow.db`` in the working directory, and
its SQLite store puts each experiment's artifacts under ``./mlruns/<experiment id>/``
(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH, recorded as an absolute path per experiment). The
project's store is exactly that, anchored at the repository root (`config.repo_root`: a
``--temp`` experiment's temporary copy logs to the repository it was made from), so bare
``mlflow ui``, ``mlflow models serve -m models:/...`` and ``mlflow.search_runs(...)``
typed in the root find its runs and models with no flag and no variable.

Any other ``sqlite:///<dir>/<file>`` store (the benchmark's temporary one, a user's
``MLFLOW_TRACKING_URI``) gets the same layout beside its database; a tracking server or
another database decides for itself.

Whether tracking is on at all: ``CIFAR_MLOPS_TRACKING=off`` (or no mlflow installed)
makes every tracking call a no-op, so training and benchmarks run on machines that have
only torch. ``MLFLOW_TRACKING_URI`` points the project at a team's server instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.config.layout import repo_root
from src.runtime.errors import EXIT_CONFIG, ProjectError

TRACKING_SWITCH_ENV = "CIFAR_MLOPS_TRACKING"

STORE_FILE = "mlflow.db"  # MLflow 3's default: sqlite:///mlflow.db
ARTIFACT_DIR = "mlruns"  # ... and ./mlruns/<experiment id>/ for artifacts


def default_uri(root: Path) -> str:
    """``sqlite:///<root>/mlflow.db``: what MLflow 3 uses from `root` by itself."""
    return f"sqlite:///{root / STORE_FILE}"


def artifact_root(uri: str) -> Path | None:
    """<dir>/mlruns for a store ``sqlite:///<dir>/<file>`` (MLflow's own layout beside the
    database); None for a tracking server or another database."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR


@functools.cache
def _sql_store(uri: str, root: Path) -> Any:
    """The SQLite store as MLflow builds it by default from the database's folder: a fresh
    database gets its Default experiment at <root>/0, like MLflow's own."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # no INFO lines ("Creating initial MLflow database tables...") in a stage's log
    logger = logging.getLogger("mlflow.store.db.utils")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        return SqlAlchemyStore(uri, root.as_uri())
    finally:
        logger.setLevel(level)


def prepare(uri: str) -> None:
    """Open (creating) a SQLite store with MLflow's default artifact layout, whatever the
    working directory (a --temp experiment runs in its copy): MLflow resolves the default
    ./mlruns against the working directory of the process that first opens the store."""
    root = artifact_root(uri)
    if root is not None:
        _sql_store(uri, root)


def create_experiment(client: Any, uri: str, name: str) -> str:
    """A new experiment; in a SQLite store its artifacts go to <dir>/mlruns/<id>/, where
    MLflow would put them when run from the database's folder."""
    root = artifact_root(uri)
    if root is None:
        return client.create_experiment(name)
    return _sql_store(uri, root).create_experiment(name)


# --------------------------------------------------------------------------- the store in use


def tracking_enabled() -> bool:
    if os.environ.get(TRACKING_SWITCH_ENV, "").lower() in {"off", "0", "false", "no"}:
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


_store_uri: str | None = None  # set by `use_store` while its block runs


def tracking_uri() -> str:
    """The store runs go to: `use_store`'s, else $MLFLOW_TRACKING_URI, else the
    repository's default (`default_uri`; a --temp experiment's too)."""
    if _store_uri:
        return _store_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return default_uri(repo_root())


class StoreError(ProjectError):
    """The MLflow store cannot take this stage's runs; the message says what to do.
    Nothing was tracked."""

    exit_code = EXIT_CONFIG


def check_store(experiment: str | None = None) -> None:
    """Stop now (`StoreError`) when the artifact folder of `experiment` in a SQLite store
    cannot be written, before a stage does work it could not record."""
    if tracking_enabled():
        uri = tracking_uri()
        if experiment is not None:
            check_artifacts_writable(uri, experiment)


def check_artifacts_writable(uri: str, experiment: str) -> None:
    """StoreError unless a file can be created in the local artifact folder runs of
    `experiment` write to (tried with a probe file, removed at once); nothing for a
    tracking server or a remote artifact store."""
    folder = artifact_root(uri)
    if folder is None:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.is_file():
        with contextlib.suppress(sqlite3.Error), contextlib.closing(
            sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        ) as con:
            row = con.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
            ).fetchone()
            if row and row[0]:
                location = str(row[0])
                if location.startswith("file://"):
                    folder = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
                elif "://" in location:
                    return  # a remote artifact store
                else:
                    folder = Path(location)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StoreError(
            f"MLflow artifact store: cannot write in {folder} ({exc.strerror or exc}); the "
            "stage would train and then fail to save its model. Make it a writable folder, "
            "or point MLFLOW_TRACKING_URI at another store. Nothing was done."
        ) from None


def point_mlflow() -> str:
    """Point MLflow at the project's store (`tracking_uri`), opened with MLflow's default
    artifact layout whatever the working directory; the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    prepare(uri)
    return uri


@contextlib.contextmanager
def use_store(uri: str) -> Iterator[None]:
    """Track into the store at `uri` while the block runs (the benchmark's temporary
    SQLite store, say), whatever the environment says; afterwards MLflow points where
    it pointed before (MLflow mirrors its URI in $MLFLOW_TRACKING_URI)."""
    global _store_uri
    before, previous = os.environ.get("MLFLOW_TRACKING_URI"), _store_uri
    _store_uri = uri
    try:
        yield
    finally:
        _store_uri = previous
        if "mlflow" in sys.modules:  # MLflow was pointed at `uri`
            sys.modules["mlflow"].set_tracking_uri(before)
