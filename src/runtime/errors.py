"""Every failure a user can cause, and the exit code its entry point ends with.

Each class derives from `ProjectError`, which carries its exit code; `src.runtime.entry.guarded`
turns any of them into one line on stderr and that code. Nothing here imports torch
(or any other heavy library), so a config error exits before torch is ever loaded.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the work was started and failed, or its inputs are bad
EXIT_CONFIG = 2  # bad params: nothing was started
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the last checkpoint is kept


class ProjectError(Exception):
    """A failure with a cause the user can mend; the message names it."""

    exit_code = EXIT_FAILED
    hint = ""  # a second line for the user, e.g. another way to run the command


class ConfigError(ProjectError, ValueError):
    """A params value is missing, unknown, of the wrong type or out of range."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"params: '{key}': {message}" if key else f"params: {message}")


class DataError(ProjectError, RuntimeError):
    """The source is unreachable, corrupt or not CIFAR-10 shaped; the message says where."""


class WeightsError(ProjectError, RuntimeError):
    """Pretrained or saved weights are missing, corrupt or for another architecture."""


class CheckpointError(WeightsError):
    """A checkpoint holds objects that only unpickling could rebuild: refused, since a
    crafted pickle runs code."""


class NonFiniteLossError(ProjectError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and last checkpoint."""


class StageBusyError(ProjectError, RuntimeError):
    """Another process runs the same stage now; the message names it (pid, since when)."""


class ReportInputError(ProjectError, RuntimeError):
    """A stage output the report reads is missing or unreadable; the message says
    which file and which stage makes it."""

    hint = "or render what exists with --allow-missing"


class TuneError(ProjectError, RuntimeError):
    """The search cannot run: storage unreachable, study unknown or created differently."""
