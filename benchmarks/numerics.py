"""The benchmark's numerics section (`benchmarks.bench`): how fast each network's
training step runs in float32 and bf16 autocast, each in the default and the
channels_last memory format (and through torch.compile, on request), against what the
processor can do at all (a large matmul per dtype), and what `common.precision`
chooses of them.

Every variant trains the stage's network as its recipe builds it, placed as the
variant says, on one resident batch (`paths.time_floor`): no data work, so the
variants differ only in their numerics. The lite stage's frozen prefix (its feature
cache) is timed forward only, in eval mode, at its stage's image size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.paths import BenchData, ModelBench, make_bench, time_floor, variant_name
from src.artifacts import StagePaths
from src.config.schema import Params
from src.config.stages import get_stage
from src.training.device import NATIVE_BF16_FLAGS, Placement, cpu_bf16_flags, synchronize
from src.training.feature_cache import compute_features
from src.training.loop import build_optimizer
from src.training.models import BackbonePart, split_backbone
from src.training.recipe import build_stage
from src.training.steps import set_train_mode

# (name, bf16 autocast, channels_last); "+compile" variants join them with --compile
VARIANTS = (
    ("fp32", False, False),
    ("fp32+cl", False, True),
    ("bf16", True, False),
    ("bf16+cl", True, True),
)
TARGET_CHOSEN_OVER_BEST = 0.90  # the project's numerics against the fastest variant
TARGET_EVAL_SHARE = 0.10  # of a stage's wall time
PREFIX_STAGE = "lite"  # the stage whose feature cache is timed


def cpu_numerics(device: torch.device, precision: str) -> dict:
    """The CPU's native-bf16 flags and what `common.precision` resolves to here."""
    placement = Placement.for_device(device, precision=precision)
    return {
        "native_bf16_flags": list(cpu_bf16_flags()),
        "flags_looked_for": list(NATIVE_BF16_FLAGS),
        "precision": precision,
        **placement.describe(),
    }


def matmul_peak(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a `size` x `size` matmul in float32 and bf16: the best of `repeats`
    timings of a few products each (the machine's practical peak)."""
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        n = max(1, int(2e9 // (2 * size**3)))  # about 2 GFLOP per timing
        a @ b  # warm-up
        best = math.inf
        for _ in range(max(1, repeats)):
            synchronize(device)
            tic = time.perf_counter()
            for _ in range(n):
                a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - tic)
        peaks[name] = 2 * size**3 * n / best / 1e9
    return peaks


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations `fn` runs (PyTorch's FLOP counter: matmuls and convs)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops_per_image(bench: ModelBench, data: BenchData) -> float:
    """Forward + backward FLOPs of one training step of `bench`, per image."""
    bs = bench.cfg.batch_size
    prepared, _ = bench.prepare(data.splits, dataclasses.replace(bench.cfg, subset=bs, epochs=1))
    with torch.no_grad():
        x = prepared.pipeline(prepared.data.train_x[:bs], train=False)
    y = prepared.data.train_y[:bs]
    model = prepared.fit_model
    set_train_mode(model)
    optimizer = build_optimizer(model.parameters(), prepared.train_cfg)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x.float()), y).backward()

    return count_flops(step) / len(y)


def _median_ratio(rounds: list[dict], a: str, b: str) -> float:
    values = [r[a] / r[b] for r in rounds if r.get(b, 0) > 0 and math.isfinite(r.get(a, math.nan))]
    return statistics.median(values) if values else math.nan


def _summarise(
    rounds: list[dict], names: list[str], chosen: str, flops: float, peaks: dict
) -> dict:
    """Medians per variant, the fastest, the chosen one against it, GFLOP/s achieved."""
    medians = {
        n: statistics.median([r[n] for r in rounds if math.isfinite(r[n])] or [math.nan])
        for n in names
    }
    finite = {n: v for n, v in medians.items() if math.isfinite(v)}
    best = max(finite, key=finite.get) if finite else None
    ratio = _median_ratio(rounds, chosen, best) if best else math.nan
    # per round, against that round's fastest variant
    per_round_best = [
        r[chosen] / max(r[n] for n in names if math.isfinite(r[n]))
        for r in rounds
        if any(math.isfinite(r[n]) for n in names)
    ]
    variants = {}
    for n in names:
        gflops = medians[n] * flops / 1e9
        peak = peaks.get("bf16" if n.startswith("bf16") else "fp32", math.nan)
        variants[n] = {
            "images_per_s": medians[n],
            "gflop_per_s": gflops,
            "share_of_peak": gflops / peak if peak > 0 else math.nan,
        }
    return {
        "variants": variants,
        "chosen": chosen,
        "best": best,
        "chosen_over_best": ratio,
        "chosen_over_round_best": statistics.median(per_round_best) if per_round_best else math.nan,
        "target_chosen_over_best": TARGET_CHOSEN_OVER_BEST,
        "target_met": bool(ratio >= TARGET_CHOSEN_OVER_BEST) if math.isfinite(ratio) else None,
        "gflop_per_image": flops / 1e9,
        "rounds": rounds,
    }


def _variants(compiled: bool) -> list[tuple[str, bool, bool, bool]]:
    out = [(n, bf16, cl, False) for n, bf16, cl in VARIANTS]
    if compiled:
        out += [(f"{n}+compile", bf16, cl, True) for n, bf16, cl in VARIANTS]
    return out


def project_variant(
    params: Params,
    name: str,
    data: BenchData,
    device: torch.device,
    *,
    resnet_size: int,
    cache: bool | None,
) -> str:
    """The variant a stage trains in: `common.precision` resolved, and with `auto` the
    fastest of its own step's variants (`src.training.numerics_probe`)."""
    bench = make_bench(params, name, device, resnet_size, cache)
    cfg = dataclasses.replace(bench.cfg, subset=bench.cfg.batch_size, epochs=1)
    recipe, _ = bench.prepare(data.splits, cfg)
    return variant_name(recipe.placement)


def bench_step_variants(
    params: Params,
    name: str,
    data: BenchData,
    device: torch.device,
    *,
    resnet_size: int,
    cache: bool | None,
    steps: int,
    warmup: int,
    repeats: int,
    peaks: dict,
    compiled: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """The training step of stage `name` in every variant, interleaved over `repeats`
    rounds in a rotating order; medians, and the variant `common.precision` chooses
    against the fastest."""
    variants = _variants(compiled)
    benches = {
        n: make_bench(
            params, name, device, resnet_size, cache, Placement(device, bf16, cl, reason=n)
        )
        for n, bf16, cl, _ in variants
    }
    chosen = project_variant(params, name, data, device, resnet_size=resnet_size, cache=cache)
    flops = step_flops_per_image(benches["fp32"], data)
    rounds = []
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        row = {}
        for n, _, _, comp in order:
            try:
                row[n] = time_floor(benches[n], data, steps, warmup, compiled=comp)["images_per_s"]
            except Exception as exc:  # a variant the machine cannot run loses only itself
                log(f"[bench] {name} {n} failed: {type(exc).__name__}: {exc}")
                row[n] = math.nan
        rounds.append(row)
        log(
            f"[bench] {name} numerics round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {row[n]:,.1f}" for n, *_ in variants)
            + " img/s"
        )
    return _summarise(rounds, [n for n, *_ in variants], chosen, flops, peaks)


def bench_prefix_variants(
    params: Params,
    data: BenchData,
    device: torch.device,
    *,
    image_size: int,
    images: int,
    repeats: int,
    peaks: dict,
    log: Callable[[str], None] = print,
) -> dict:
    """The lite stage's frozen prefix (what its feature cache computes), forward only in
    eval mode, batched as the stage batches it, at `image_size` px, in every variant."""
    stage = get_stage(PREFIX_STAGE)
    section = dataclasses.replace(
        getattr(params, PREFIX_STAGE), weights="none", image_size=image_size
    )
    prefix_names, _ = split_backbone(section.backbone, section.trainable)
    bs = section.train.eval_batch_size
    x = data.splits.train_x[: max(images, bs)]
    nets = {}
    for n, bf16, cl in VARIANTS:
        placement = Placement(device, bf16, cl, reason=n)
        net = build_stage(stage, section, placement, params.common.seed)
        prefix = BackbonePart(net.model, section.backbone, prefix_names)
        nets[n] = (prefix, net.pipeline, placement)
    chosen = variant_name(Placement.for_device(device, precision=params.common.precision))
    prefix, pipeline, _ = nets["fp32"]
    prefix.eval()
    with torch.no_grad():
        flops = count_flops(lambda: prefix(pipeline(x[:bs], train=False))) / min(bs, len(x))

    def run(n: str) -> float:
        prefix, pipeline, placement = nets[n]
        compute_features(prefix, x[:bs], pipeline, bs, placement)  # warm-up
        synchronize(device)
        tic = time.perf_counter()
        compute_features(prefix, x, pipeline, bs, placement)
        synchronize(device)
        return len(x) / (time.perf_counter() - tic)

    rounds = []
    names = [n for n, *_ in VARIANTS]
    for r in range(repeats):
        row = {}
        for n in names[r % len(names) :] + names[: r % len(names)]:
            try:
                row[n] = run(n)
            except Exception as exc:
                log(f"[bench] {PREFIX_STAGE} prefix {n} failed: {type(exc).__name__}: {exc}")
                row[n] = math.nan
        rounds.append(row)
        log(
            f"[bench] {PREFIX_STAGE} prefix round {r + 1}/{repeats}: "
            + ", ".join(f"{n} {row[n]:,.1f}" for n in names)
            + " img/s"
        )
    summary = _summarise(rounds, names, chosen, flops, peaks)
    return {
        "image_size": image_size,
        "batch_size": bs,
        "images": len(x),
        "blocks": [prefix_names[0], prefix_names[-1]],
        **summary,
    }


def eval_share_targets(root: Path, stages: list[str]) -> dict:
    """Each stage's evaluation share of its wall time (metrics.json's `time_shares`, or
    of training + evaluation where a stage predates them) against the target."""
    out = {}
    for stage in stages:
        with contextlib.suppress(OSError, ValueError):
            metrics = json.loads(StagePaths.for_stage(stage, root).metrics.read_text())
            shares = metrics.get("time_shares") or {}
            share, of = (
                (shares["evaluation"], "wall time")
                if "evaluation" in shares
                else (metrics.get("eval_share"), "training + evaluation time")
            )
            if isinstance(share, (int, float)):
                out[stage] = {
                    "eval_share": share,
                    "of": of,
                    "target": TARGET_EVAL_SHARE,
                    "target_met": share <= TARGET_EVAL_SHARE,
                    "numerics": metrics.get("numerics", "fp32 (before common.precision)"),
                }
    return out
