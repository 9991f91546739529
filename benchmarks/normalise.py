"""The uint8 → normalised float step before and after its rewrite, timed side by side.

    python benchmarks/normalise.py [--repeats 7] [--json benchmarks/cpu_normalise.json]

`before` is the expression `src.training.augment.to_float_nchw` used until 2026-11-27 (five
passes and three temporaries); `after` is the function now. Both give identical
bits. Rounds interleave the two; medians of milliseconds per batch are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.config.cifar import COURSE_MEAN, COURSE_STD, IMAGE_SHAPE  # noqa: E402
from src.training.augment import to_float_nchw  # noqa: E402

MEAN = torch.tensor(COURSE_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(COURSE_STD).view(1, 3, 1, 1)


def before(x: torch.Tensor) -> torch.Tensor:
    return ((x.permute(0, 3, 1, 2).float().div_(255.0) - MEAN) / STD).contiguous()


def after(x: torch.Tensor) -> torch.Tensor:
    return to_float_nchw(x, MEAN, STD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {"loadavg_start": os.getloadavg(), "torch": torch.__version__, "cases": []}
    for threads in (torch.get_num_threads(), 1):
        torch.set_num_threads(threads)
        for batch, calls in ((64, 500), (1000, 30)):
            x = torch.randint(0, 256, (batch, *IMAGE_SHAPE), dtype=torch.uint8)
            assert torch.equal(before(x), after(x))
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                for name, fn in (("before", before), ("after", after)):
                    fn(x)
                    tic = time.perf_counter()
                    for _ in range(calls):
                        fn(x)
                    times[name].append((time.perf_counter() - tic) / calls * 1e3)
            case = {
                "threads": threads,
                "batch": batch,
                **{f"{k}_ms": statistics.median(v) for k, v in times.items()},
            }
            case["speedup"] = case["before_ms"] / case["after_ms"]
            results["cases"].append(case)
            print(
                f"threads {threads} batch {batch:>4}: before {case['before_ms']:.3f} ms, "
                f"after {case['after_ms']:.3f} ms, x{case['speedup']:.1f}"
            )
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
