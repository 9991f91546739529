"""Entry-point plumbing shared by the pipeline stages and the tuning CLI."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from src.config import ConfigError

EXIT_CONFIG = 2  # bad params: nothing was started
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


# Failures a user can cause (exit EXIT_FAILED), by module: looked up only in modules the
# stage already imported, so a config error exits before torch is ever imported.
KNOWN_FAILURES = (
    ("src.data", "DataError"),
    ("src.models", "WeightsError"),
    ("src.train", "NonFiniteLossError"),
)


def _known_failure(exc: BaseException) -> bool:
    for module, name in KNOWN_FAILURES:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


def guarded(main: Callable[..., None]) -> Callable[..., None]:
    """Turn known failures into one clear line and an exit code, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> None:
        try:
            main(*args, **kwargs)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        except Exception as exc:
            if not _known_failure(exc):
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is kept; run again to resume", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
