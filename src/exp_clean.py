"""`python -m src.exp_clean`: remove the temporary copies killed DVC experiments left.

    python -m src.exp_clean            # remove them, one line each
    python -m src.exp_clean --print    # only list them

`dvc exp run --temp` (so `python -m src.quick`) and queued experiments (`python -m
src.seeds`) run in a copy of the repository under .dvc/tmp/exps/, which DVC removes when
the run ends. A `kill -9` of `dvc` leaves it (as large as the workspace with its data)
and `dvc exp show` lists its experiment as Running; `dvc exp clean` does not remove it.
A copy is removed only when no process on this machine works in it any more (a stage a
killed `dvc` left running keeps its copy) and DVC's record of it is two minutes old.
`python -m src.quick` and `python -m src.seeds` do this before they start.
"""

from __future__ import annotations

import argparse

from src.config.layout import repo_root
from src.runtime.entry import guarded
from src.runtime.temp_copies import clean, describe, stale_copies


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m src.exp_clean", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--print", action="store_true", help="only list them, remove nothing")
    args = parser.parse_args(argv)
    repo = repo_root()
    if args.print:
        for copy in stale_copies(repo):
            print(describe(copy, repo, verb="stale:"))
        return
    lines = clean(repo)
    print("\n".join(lines) or "no temporary copy of a killed `dvc exp run` to remove")


if __name__ == "__main__":
    main()
