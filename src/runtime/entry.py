"""Entry-point plumbing shared by the pipeline stages, the tuning CLI and the benchmark."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from src.runtime.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, ProjectError

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "guarded"]

R = TypeVar("R")


def guarded(main: Callable[..., R]) -> Callable[..., R]:
    """Turn a project error into one clear line and its exit code, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except ProjectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if exc.hint:
                print(f"({exc.hint})", file=sys.stderr)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is kept; run again to resume", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
