"""Where a study's trials are kept, and the locks and heartbeats around them.

The only module that touches Optuna's storage objects, and only through the public
methods of `optuna.storages.BaseStorage` (and `RDBStorage`'s heartbeat methods). A
journal file serves the workers of one machine; an RDB URL (PostgreSQL) many machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from src.config.layout import resolve_path
from src.runtime.errors import ConfigError, TuneError

CONNECT_TIMEOUT_S = 10  # an unreachable database fails fast

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class StudyStorage:
    """The storage object this process created (studies are opened on it), how to name
    it in messages, and the lock that serialises the workers of a study."""

    storage: optuna.storages.BaseStorage
    display: str  # path, or URL without its password: safe for messages and tags
    lock: Callable[[str], contextlib.AbstractContextManager]  # study name -> worker lock

    def trial_id(self, study: optuna.Study, number: int) -> int:
        """The storage's id of the study's trial `number`."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def set_trial_user_attr(self, study: optuna.Study, number: int, key: str, value: Any) -> None:
        """A user attribute on a trial this process holds no `optuna.Trial` for (another
        worker's); raises UpdateFinishedTrialError once that trial has finished."""
        self.storage.set_trial_user_attr(self.trial_id(study, number), key, value)

    @contextlib.contextmanager
    def heartbeat(self, study: optuna.Study, number: int) -> Iterator[None]:
        """Record trial `number`'s heartbeat while it runs (RDB storages with
        `heartbeat_interval`; nothing for a journal file).

        Optuna's own heartbeat does not cover ask/tell: only `Study.optimize` starts the
        thread that records it (RDBStorage docs, `heartbeat_interval`: "supposed to be used
        with Study.optimize. If you use ask() and tell() instead, it will not work"), and
        `optuna.storages.fail_stale_trials` skips a RUNNING trial that has no heartbeat at
        all, so an asked trial whose worker died would stay RUNNING. The workers ask and
        tell (under the study lock, so that together they make exactly --n-trials), so
        this thread records the heartbeat that `fail_stale_trials` then reads."""
        storage = self.storage
        interval = None
        if isinstance(storage, optuna.storages.RDBStorage):
            interval = storage.get_heartbeat_interval()
        if not interval:
            yield
            return
        trial_id = self.trial_id(study, number)
        stop = threading.Event()

        def beat() -> None:
            while True:
                with contextlib.suppress(Exception):  # a hiccup must not end the heartbeat
                    storage.record_heartbeat(trial_id)
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def open_storage(
    spec: str, heartbeat_s: int = 60, on_stale: StaleTrialCallback | None = None
) -> StudyStorage:
    """A journal file (a path) or an RDB (a URL with '://'), and a lock that
    serialises study set-up and trial creation across all workers of a study. RDB
    storages record heartbeats every `heartbeat_s`; `on_stale` is called for each trial
    `optuna.storages.fail_stale_trials` fails for a stopped heartbeat."""
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        path = resolve_path(spec)
        check_journal_file(spec, path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder of the path should be
            reason = f"cannot create {path.parent} ({exc.strerror})"
            raise ConfigError("", f"storage {spec!r}: {reason}") from None
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        lock_path = path.with_name(path.name + ".workers.lock")
        return StudyStorage(storage, str(path), lambda _name: _file_lock(lock_path))

    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(spec)
    except sqlalchemy.exc.ArgumentError as exc:
        raise TuneError(f"--storage {spec!r} is neither a file path nor a database URL") from exc
    backend = url.get_backend_name()
    check_not_mlflow_store(spec, url)
    engine_kwargs = {}
    if backend == "postgresql":
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        if url.drivername == "postgresql":  # SQLAlchemy 2.1 defaults to psycopg 3
            url = url.set(drivername=f"postgresql+{_postgres_driver()}")
    display = url.render_as_string(hide_password=True)
    try:
        # Workers starting together on a fresh database would race to create Optuna's
        # schema (PostgreSQL: duplicate pg_type rows); one at a time, the rest find it.
        # The engine is this module's own (Optuna's is not for users); it also holds the
        # per-study worker locks below.
        schema_lock = contextlib.nullcontext()
        if backend == "postgresql":
            engine = sqlalchemy.create_engine(url, **engine_kwargs)
            schema_lock = _pg_lock(engine, "optuna-schema")
        with schema_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as exc:  # driver missing, host unreachable, bad credentials ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"cannot open the Optuna storage {display}: {reason}") from None
    if backend == "postgresql":
        lock = lambda name: _pg_lock(engine, name)
    elif backend == "sqlite" and url.database:
        lock_path = Path(url.database + ".workers.lock")
        lock = lambda _name: _file_lock(lock_path)
    else:
        print(f"[tune] no cross-worker lock for {backend}: parallel workers may overshoot")
        lock = lambda _name: contextlib.nullcontext()
    return StudyStorage(storage, display, lock)


def check_not_mlflow_store(spec: str, url: Any) -> None:
    """ConfigError (nothing written) when the RDB URL `url` is the MLflow store: the
    store's URL itself, or a SQLite file that holds MLflow's tables. Optuna would add its
    own tables to MLflow's database."""
    from src.tracking import store

    hint = (
        "use a storage of its own: the default journal file (omit --storage), another "
        "SQLite file or another database"
    )
    mlflow_uri = store.tracking_uri()
    same = url.render_as_string(hide_password=False) == mlflow_uri
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database).expanduser().resolve()
        if mlflow_uri.startswith("sqlite:///"):
            same = same or db == Path(mlflow_uri.removeprefix("sqlite:///")).resolve()
        same = same or _holds_mlflow_tables(db)
    if same:
        raise ConfigError("", f"storage {spec!r} is the MLflow store; {hint}")


def _holds_mlflow_tables(db: Path) -> bool:
    """Whether the SQLite file `db` holds MLflow's tracking tables (opened read-only)."""
    import sqlite3

    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return False
    return {"experiments", "runs"} <= tables


def check_journal_file(spec: str, path: Path) -> None:
    """ConfigError (nothing written) unless `path` is new, empty or a journal Optuna wrote:
    a directory ends in a traceback deep in Optuna, and any other file (params.yaml, say)
    would get journal lines appended to it, or fail to parse."""
    if not path.exists():
        return
    what = f"storage {spec!r}"
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError("", f"{what}: {path} is {kind}, not an Optuna journal file")
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    if not first.strip():
        return
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    if not (isinstance(entry, dict) and "op_code" in entry):
        raise ConfigError(
            "",
            f"{what}: {path} is not an Optuna journal file (its first line is no journal "
            "entry); name a new file or an existing journal",
        )


def _postgres_driver() -> str:
    """psycopg (3) when installed, else psycopg2 (what requirements.txt installs)."""
    import importlib.util

    return "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock that the kernel drops when its holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_lock(engine: Any, study_name: str) -> Iterator[None]:
    """A PostgreSQL advisory lock per study (dropped with its connection)."""
    from sqlalchemy import text

    digest = hashlib.sha256(f"cifar-mlops/{study_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()
