"""Entry-point plumbing shared by the pipeline stages and the tuning CLI."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from src.config import ConfigError

EXIT_CONFIG = 2  # bad params: nothing was started
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def guarded(main: Callable[..., None]) -> Callable[..., None]:
    """Turn known failures into one clear line and an exit code, not a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> None:
        from src.data import DataError
        from src.models import WeightsError
        from src.train import NonFiniteLossError

        try:
            main(*args, **kwargs)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        except (DataError, WeightsError, NonFiniteLossError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is kept; run again to resume", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper
