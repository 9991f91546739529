"""docs/results.md and README.md's results table, rewritten from the committed files they
cite (the rendering: src/report/results.py).

    python -m tools.results           rewrite both
    python -m tools.results --check   exit 1, naming them, when either is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.config.layout import repo_root
from src.report.results import README, RESULTS_PAGE, readme_with_block, results_page


def expected(root: Path) -> dict[Path, str]:
    """What each generated file must hold, by its path relative to `root`."""
    return {
        RESULTS_PAGE: results_page(root),
        README: readme_with_block((root / README).read_text(), root),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.results", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if out of date")
    args = parser.parse_args(argv)
    root = repo_root()
    wanted = expected(root)
    stale = [
        p
        for p, text in wanted.items()
        if not (root / p).is_file() or (root / p).read_text() != text
    ]
    if args.check:
        for path in stale:
            print(f"{path}: out of date; run python -m tools.results", file=sys.stderr)
        return 1 if stale else 0
    for path, text in wanted.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
