"""One base error with its exit code; every entry point turns it into one line."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from src.config.layout import PROJECT_ROOT
from src.runtime import errors
from src.runtime.entry import guarded

PROJECT_ERRORS = {
    errors.ConfigError: 2,
    errors.DataError: 1,
    errors.WeightsError: 1,
    errors.CheckpointError: 1,
    errors.NonFiniteLossError: 1,
    errors.ReportInputError: 1,
    errors.TuneError: 1,
}
ENTRY_POINTS = (
    "pipelines.download",
    "pipelines.train",
    "pipelines.report",
    "src.tune.__main__",
    "benchmarks.bench",
    "src.predict",
    "src.quick",
    "src.seeds.experiments",
)


def _raise(exc: BaseException):
    @guarded
    def main() -> None:
        raise exc

    return main


@pytest.mark.parametrize(
    "cls, code", PROJECT_ERRORS.items(), ids=lambda v: getattr(v, "__name__", v)
)
def test_guarded_ends_each_project_error_in_one_line_and_its_code(cls, code, capsys):
    exc = cls("some.key", "is wrong") if cls is errors.ConfigError else cls("the cause")
    with pytest.raises(SystemExit) as exit_info:
        _raise(exc)()
    assert exit_info.value.code == code == exc.exit_code
    err = capsys.readouterr().err
    assert err.startswith(f"error: {exc}\n")
    assert "Traceback" not in err


def test_the_modules_errors_are_the_one_set():
    """Each module's error is the class from src.runtime.errors (so `guarded` knows it)."""
    from src.config import schema as config
    from src.data import prepare as data
    from src.report import inputs as report
    from src.training import loop as train
    from src.training import models
    from src.tune import storage

    assert config.ConfigError is errors.ConfigError
    assert data.DataError is errors.DataError
    assert models.WeightsError is errors.WeightsError
    assert train.NonFiniteLossError is errors.NonFiniteLossError
    assert report.ReportInputError is errors.ReportInputError
    assert storage.TuneError is errors.TuneError


def test_a_hint_is_a_second_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _raise(errors.ReportInputError("reports/x is missing"))()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: reports/x is missing\n(or render what exists with --allow-missing)\n"
    )


def test_interrupt_exits_130_and_other_errors_propagate(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _raise(KeyboardInterrupt())()
    assert exit_info.value.code == 130
    assert "interrupted" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        _raise(ZeroDivisionError("bug"))()


def test_guarded_returns_what_main_returns():
    assert guarded(lambda: 42)() == 42


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_is_guarded(module):
    main = importlib.import_module(module).main
    assert getattr(main, "__wrapped__", None) is not None, f"{module}.main is not @guarded"


def test_errors_and_cli_import_no_torch():
    """A config error must exit before torch is imported: the error classes are light."""
    code = (
        "import sys, src.runtime.entry, src.runtime.errors, src.config.load, src.config.overrides; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
