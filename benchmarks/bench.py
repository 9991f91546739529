"""Training throughput, side by side: the project's path, a course-style loop, the floor.

    python -m benchmarks.bench --models baseline improved resnet --repeats 5 --resnet-size 64 \\
        --json benchmarks/cpu.json
    python -m benchmarks.bench --eval-epoch baseline --json benchmarks/cpu_eval_epoch_baseline.json

For each model (its stage's section of params.yaml: model, optimizer, batch size,
augmentation), on one device and in one process:

  project    `src.training.loop.fit` itself, on what the stage's recipe
             (`src.training.recipe`) prepares, on a random subset of the prepared training
             split, for a fixed number of steps, validating as configured (on
             `--eval-images` images), checkpointing as a stage does and, when mlflow
             is importable, logging every validation to a real MLflow run in a
             temporary store (`store.use_store`: the project's store is
             untouched). images/s is FitResult's: training steps only (data,
             augmentation, step, loop), evaluation excluded. With feature caching on
             (the stage's default) the ResNet's recipe trains the head on cached features.
  reference  the course's loop: a Dataset turning each uint8 image into a PIL image
             for torchvision transforms (RandomCrop(32, padding) and
             RandomHorizontalFlip when the stage augments, Resize for ResNet,
             ToTensor, Normalize), a DataLoader with 2 workers, the course's
             per-step `loss.item()`; same model, optimizer, batch size and step.
  floor      the project's training step on one resident, prepared batch: forward,
             backward, optimizer step, no data work.

Then the numerics (`benchmarks.numerics`, off with `--numerics off`): the CPU's
native-bf16 flags; per model the floor step in float32 and bf16 autocast, each
contiguous and channels_last (`--compile`: through torch.compile too), the variant
`common.precision` chooses against the fastest (target >= 0.90) and the project path
against it; the lite stage's frozen prefix forward at `--prefix-size` px; achieved
GFLOP/s against a `--matmul-size` matmul's in each dtype; each stage's evaluation
share of its wall time from reports/<stage>/metrics.json (target <= 0.10).
`--quick` shrinks every count for a smoke run.

A warm-up round of every path is run and discarded; then `--repeats` rounds run the
three interleaved, in a rotating order. Figures are medians over repeats; ratios are
medians of the per-round ratios, so a change of machine load between rounds
cancels. CUDA runs synchronise around every timing. The three paths run the
numerics `common.precision` chooses, as the stages do. Needs only torch, torchvision, numpy, pillow
and PyYAML (params.yaml); mlflow is used when importable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks import numerics
from benchmarks.paths import (
    BenchData,
    ModelBench,
    load_bench_data,
    make_bench,
    measure_eval_epoch,
    time_floor,
    time_project,
    time_reference,
)
from benchmarks.summary import format_summary, machine_info
from src.config.layout import Layout, project_root
from src.config.load import PARAMS_FILE, load_params
from src.config.stages import TRAINING_STAGES
from src.config.typed import config_hash, to_dict
from src.runtime.entry import guarded
from src.tracking import store
from src.training.device import resolve_device
from src.training.models import count_parameters

MODELS = tuple(s.name for s in TRAINING_STAGES if s.own_section)  # tuned: a searched improved
PATHS = ("floor", "project", "reference")
# Timed steps per measurement when --steps does not say: about 2 s of training each on
# a 2-core CPU with native bf16 (a step of the baseline 13 ms, improved 150 ms, the
# heads on cached features 20-60 ms on an AMX Xeon; 3-4x that in float32). Shorter
# timings drifted with the host's load (improved at 4 steps: 0.46-1.1 of its floor).
# Even counts: two validations per fit.
DEFAULT_STEPS = {
    "cpu": {"baseline": 160, "improved": 16, "resnet": 32, "lite": 64},
    "cuda": {"baseline": 600, "improved": 300, "resnet": 300, "lite": 300},
}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 20}
REFERENCE_WORKERS = 2  # the course's DataLoader


# --------------------------------------------------------------------------- the benchmark


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _best(rows: list[dict]) -> float:
    """The fastest round: other jobs on a shared machine only ever slow a path down."""
    values = [r["images_per_s"] for r in rows if math.isfinite(r["images_per_s"])]
    return max(values) if values else math.nan


def bench_model(
    bench: ModelBench,
    data: BenchData,
    *,
    steps: int,
    warmup: int,
    repeats: int,
    work_dir: Path,
    track: bool,
    workers: int = REFERENCE_WORKERS,
    log: Callable[[str], None] = print,
) -> dict:
    """Warm-up round (discarded), then `repeats` interleaved rounds of the three paths."""

    def measure(path: str, n: int) -> dict:
        try:
            if path == "floor":
                return time_floor(bench, data, n, warmup)
            if path == "project":
                return time_project(bench, data, n, work_dir, track)
            return time_reference(bench, data, n, warmup, workers)
        except Exception as exc:  # one broken path must not lose the others' figures
            log(f"[bench] {bench.name} {path} failed: {type(exc).__name__}: {exc}")
            return {"images_per_s": math.nan, "error": f"{type(exc).__name__}: {exc}"}

    for path in PATHS:
        measure(path, max(2, warmup))
    rounds: list[dict[str, dict]] = []
    for r in range(repeats):
        order = PATHS[r % 3 :] + PATHS[: r % 3]
        row = {"loadavg": list(os.getloadavg())}
        for path in order:
            row[path] = measure(path, steps)
        rounds.append(row)
        log(
            f"[bench] {bench.name} round {r + 1}/{repeats}: "
            + ", ".join(f"{p} {row[p]['images_per_s']:,.1f}" for p in PATHS)
            + " img/s"
        )

    def ratio(a: str, b: str) -> float:
        values = [
            row[a]["images_per_s"] / row[b]["images_per_s"]
            for row in rounds
            if row[b]["images_per_s"] > 0
        ]
        values = [v for v in values if math.isfinite(v)]
        return statistics.median(values) if values else math.nan

    best = {path: _best([row[path] for row in rounds]) for path in PATHS}

    project_runs = [row["project"] for row in rounds]
    project = {
        key: _median(project_runs, key)
        for key in (
            "images_per_s",
            "images_per_s_excluding_eval",
            "tracking_share",
            "eval_share",
            "other_share",
            "tracking_per_validation_s",
            "other_per_validation_s",
            "tracking_run_open_close_s",
            "cache_images_per_s",
        )
        if any(key in run for run in project_runs)
    }
    project["best_images_per_s"] = best["project"]
    project["tracked"] = any(run.get("tracked") for run in project_runs)
    # The stage validates every `val_every` steps of the full epoch; per-validation
    # costs measured here, at that cadence, against the measured training rate.
    full_epoch = len(data.labels)
    per_epoch_s = full_epoch / project["images_per_s"] if project["images_per_s"] > 0 else math.nan
    validations_per_epoch = bench.cfg.validations_per_epoch
    project["tracking_share_at_stage_cadence"] = (
        validations_per_epoch * project["tracking_per_validation_s"] / per_epoch_s
        if "tracking_per_validation_s" in project
        else math.nan
    )
    model = bench.net.model
    return {
        "batch_size": bench.cfg.batch_size,
        "optimizer": bench.cfg.optimizer,
        "augment": to_dict(bench.cfg.augment),
        "n_parameters": count_parameters(model),
        "n_trainable_parameters": count_parameters(model, trainable_only=True),
        "steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        **bench.info,
        "floor": {
            "images_per_s": _median([r["floor"] for r in rounds], "images_per_s"),
            "best_images_per_s": best["floor"],
            # the numerics the project chose in each timing (`auto` measures each time)
            "variants": sorted({r["floor"]["variant"] for r in rounds if "variant" in r["floor"]}),
        },
        "reference": {
            "images_per_s": _median([r["reference"] for r in rounds], "images_per_s"),
            "best_images_per_s": best["reference"],
            "workers": workers,
        },
        "project": project,
        # medians of the per-round ratios, and the ratios of the fastest rounds
        "ratios": {
            "project_over_floor": ratio("project", "floor"),
            "project_over_reference": ratio("project", "reference"),
            "reference_over_floor": ratio("reference", "floor"),
            "best_project_over_floor": best["project"] / best["floor"],
            "best_project_over_reference": best["project"] / best["reference"],
        },
        "rounds": rounds,
    }


def project_over_best(paths: dict | None, entry: dict) -> dict:
    """The project path against the fastest variant of the numerics section. The two
    sections run minutes apart, and a shared host drifts more than that between them, so
    where the floor ran in the variant the project chose (`entry["chosen"]`) the ratio
    is a product of two paired ones, each a median of ratios within a round:
    project / floor (the paths) times chosen / best (the numerics). Otherwise, the
    ratio of the two sections' medians, unpaired."""
    if not paths:
        return {}
    best = entry["variants"].get(entry["best"] or "", {}).get("images_per_s", math.nan)
    unpaired = paths["project"].get("images_per_s", math.nan) / best if best > 0 else math.nan
    paired = paths["floor"].get("variants") == [entry["chosen"]]
    ratio = (
        paths["ratios"]["project_over_floor"] * entry["chosen_over_best"] if paired else unpaired
    )
    return {
        "project_over_best": ratio,
        "project_over_best_how": "paired: project/floor x chosen/best" if paired else "unpaired",
        "project_over_best_unpaired": unpaired,
        "project_target_met": (
            bool(ratio >= numerics.TARGET_CHOSEN_OVER_BEST) if math.isfinite(ratio) else None
        ),
    }


def bench_numerics(
    params, args: argparse.Namespace, data: BenchData, device: torch.device, steps, warmup
) -> dict:
    """The numerics section: CPU flags, matmul peaks, step and prefix variants, eval share."""
    print(f"[bench] numerics: {args.matmul_size}-square matmul peak ...", flush=True)
    peaks = numerics.matmul_peak(device, args.matmul_size, max(args.repeats, 1))
    cache = {"on": True, "off": False}.get(args.resnet_cache)
    out: dict = {
        "cpu": numerics.cpu_numerics(device, params.common.precision),
        "matmul_size": args.matmul_size,
        "matmul_peak_gflop_per_s": peaks,
        "models": {},
    }
    for name in args.models:
        out["models"][name] = numerics.bench_step_variants(
            params,
            name,
            data,
            device,
            resnet_size=args.resnet_size,
            cache=cache,
            steps=steps[name],
            warmup=warmup,
            repeats=args.repeats,
            peaks=peaks,
            compiled=args.compile,
        )
    out["lite_prefix"] = numerics.bench_prefix_variants(
        params,
        data,
        device,
        image_size=args.prefix_size,
        images=args.prefix_images,
        repeats=args.repeats,
        peaks=peaks,
    )
    out["eval_share"] = numerics.eval_share_targets(Layout().root, list(args.models))
    return out


# --------------------------------------------------------------------------- CLI


def parse_steps(tokens: list[str] | None, device_type: str) -> dict[str, int]:
    """`--steps 8` (every model) or `--steps baseline=8 improved=3`."""
    steps = dict(DEFAULT_STEPS["cuda" if device_type == "cuda" else "cpu"])
    for token in tokens or []:
        name, _, value = token.rpartition("=")
        if name and name not in MODELS:
            raise SystemExit(f"--steps: unknown model {name!r}; choose from {list(MODELS)}")
        try:
            n = int(value)
        except ValueError:
            raise SystemExit(f"--steps: expected N or MODEL=N, got {token!r}") from None
        if n < 2:
            raise SystemExit("--steps: at least 2 (fit validates twice per run)")
        if name:
            steps[name] = n
        else:
            steps = dict.fromkeys(steps, n)
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Training images/s: the project's path, a course-style DataLoader loop "
        "and the compute floor, per model, interleaved; medians of several rounds.",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--steps",
        nargs="+",
        metavar="[MODEL=]N",
        help="timed steps per measurement, for all models or per model "
        f"(default cpu {DEFAULT_STEPS['cpu']}, cuda {DEFAULT_STEPS['cuda']})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps before each floor/reference timing"
    )
    parser.add_argument("--resnet-size", type=int, default=64, help="ResNet input size (px)")
    parser.add_argument(
        "--resnet-cache",
        choices=("params", "on", "off"),
        default="params",
        help="ResNet feature caching: as params.yaml says, or forced",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--tracking",
        choices=("auto", "on", "off"),
        default="auto",
        help="MLflow logging in the project path (auto: when mlflow is importable)",
    )
    parser.add_argument("--workers", type=int, default=REFERENCE_WORKERS, help="reference loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--eval-images", type=int, default=128, help="val/test images per fit")
    parser.add_argument(
        "--eval-epoch",
        choices=MODELS,
        help="instead: one full epoch of this stage on the whole data set; the evaluation share",
    )
    parser.add_argument("--data", type=Path, help="prepared data set (default: data/cifar10)")
    parser.add_argument("--synthetic", type=int, default=0, help="N random images instead")
    parser.add_argument("--params", type=Path, help="params file (default: params.yaml)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--numerics",
        choices=("on", "off", "only"),
        default="on",
        help="fp32/bf16 x channels_last step variants, matmul peak, eval share "
        "(only: without the three paths)",
    )
    parser.add_argument("--compile", action="store_true", help="numerics: torch.compile too")
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="numerics: peak matmul size (default 2048)"
    )
    parser.add_argument(
        "--prefix-size", type=int, default=160, help="numerics: lite prefix input px (160)"
    )
    parser.add_argument(
        "--prefix-images", type=int, default=128, help="numerics: lite prefix images per timing"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke sizes: 2 steps, 1 repeat, 256 matmul, 64 px prefix on 32 images",
    )
    return parser


def apply_quick(args: argparse.Namespace) -> None:
    """--quick: every count at its smallest (figures only for a smoke run)."""
    if args.quick:
        args.steps = args.steps or ["2"]
        args.repeats, args.warmup = 1, 1 if args.warmup is None else args.warmup
        args.matmul_size = min(args.matmul_size, 256)
        args.prefix_size, args.prefix_images = min(args.prefix_size, 64), 32
        args.eval_images = min(args.eval_images, 32)


@guarded
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    apply_quick(args)
    load_start = list(os.getloadavg())
    started = datetime.now(UTC)
    params = load_params(args.params)
    device = resolve_device(args.device)
    steps = parse_steps(args.steps, device.type)
    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP[device.type]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tracking == "auto":
        track = store.tracking_enabled()
    else:
        track = args.tracking == "on"
        if track and not store.tracking_enabled():
            raise SystemExit(
                "--tracking on: mlflow is not importable (or CIFAR_MLOPS_TRACKING=off)"
            )
    data_dir = args.data or Layout().data
    eval_images = None if args.eval_epoch else args.eval_images
    data = load_bench_data(data_dir, device, eval_images, args.synthetic)
    cache = {"on": True, "off": False}.get(args.resnet_cache)

    def make(name: str) -> ModelBench:
        return make_bench(params, name, device, args.resnet_size, cache)

    result: dict = {
        "command": "python -m benchmarks.bench "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "data": data.source,
        # what was benchmarked: params.yaml may be edited (a `dvc exp run -S`) meanwhile
        "params": {
            "file": str(args.params or project_root() / PARAMS_FILE),
            "profile": params.profile,
            "hashes": {name: config_hash(getattr(params, name)) for name in MODELS},
        },
        "loadavg_start": load_start,
    }
    if params.profile != "full":
        print(f"[bench] note: params profile {params.profile!r}, not the full-size models")
    with tempfile.TemporaryDirectory(prefix="cifar-bench-") as tmp:
        if args.eval_epoch:
            bench = make(args.eval_epoch)
            print(f"[bench] one full epoch of {args.eval_epoch} on {device} ...", flush=True)
            result["eval_epoch"] = measure_eval_epoch(bench, data, Path(tmp))
        elif args.numerics != "only":
            result["tracking"] = track
            result["models"] = {}
            for name in args.models:
                bench = make(name)
                result["models"][name] = bench_model(
                    bench,
                    data,
                    steps=steps[name],
                    warmup=warmup,
                    repeats=args.repeats,
                    work_dir=Path(tmp),
                    track=track,
                    workers=args.workers,
                )
    if args.numerics != "off" and not args.eval_epoch:
        result["numerics"] = bench_numerics(params, args, data, device, steps, warmup)
        for name, entry in result["numerics"]["models"].items():
            entry.update(project_over_best(result.get("models", {}).get(name), entry))
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = (datetime.now(UTC) - started).total_seconds()
    print(format_summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"[bench] wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
