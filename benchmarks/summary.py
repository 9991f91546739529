"""The benchmark's record of the machine, and its results as a console table."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torchvision


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "hostname": platform.node(),
    }
    return info


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def format_summary(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
        + (f", {m['gpu']}" if m["gpu"] else "")
        + f"; torch {m['torch']}; params profile {result['params']['profile']}"
        + f"; load {_loads(result['loadavg_start'])} -> {_loads(result['loadavg_end'])}"
    ]
    if "eval_epoch" in result:
        e = result["eval_epoch"]
        lines.append(
            f"{e['model']}: one epoch, {e['steps']} steps at {e['images_per_s']:,.1f} img/s; "
            f"train {e['train_s']:.1f} s, {e['validations']} validations "
            f"{e['validation_s']:.1f} s, "
            f"final evaluation {e['final_eval_s']:.1f} s, other {e['other_s']:.1f} s; "
            f"eval share {e['eval_share_one_epoch']:.1%} of the epoch"
        )
        return "\n".join(lines)
    if "models" not in result:
        return "\n".join(lines + format_numerics(result.get("numerics")))
    header = (
        f"{'model':<9}{'batch':>6}{'floor':>11}{'project':>11}{'reference':>11}"
        f"{'proj/floor':>11}{'proj/ref':>9}{'tracking':>10}"
    )
    lines += [header + "   (images/s, medians; [fastest rounds])", "-" * len(header)]
    for name, r in result["models"].items():
        p = r["project"]
        lines.append(
            f"{name:<9}{r['batch_size']:>6}{r['floor']['images_per_s']:>11,.1f}"
            f"{p['images_per_s']:>11,.1f}{r['reference']['images_per_s']:>11,.1f}"
            f"{r['ratios']['project_over_floor']:>11.3f}"
            f"{r['ratios']['project_over_reference']:>9.3f}"
            f"{p.get('tracking_share', math.nan):>10.2%}"
        )
        lines.append(
            f"{'':<15}{r['floor']['best_images_per_s']:>11,.1f}{p['best_images_per_s']:>11,.1f}"
            f"{r['reference']['best_images_per_s']:>11,.1f}"
            f"{r['ratios']['best_project_over_floor']:>11.3f}"
            f"{r['ratios']['best_project_over_reference']:>9.3f}"
        )
    return "\n".join(lines + format_numerics(result.get("numerics")))


def format_numerics(n: dict | None) -> list[str]:
    """The numerics section: variants per model (images/s, share of the dtype's peak)."""
    if not n:
        return []
    cpu, peak = n["cpu"], n["matmul_peak_gflop_per_s"]
    lines = [
        "",
        f"numerics: common.precision {cpu['precision']} -> {cpu['numerics']}"
        f"{' + channels_last' if cpu['channels_last'] else ''} ({cpu['numerics_reason']}); "
        f"native bf16 flags: {', '.join(cpu['native_bf16_flags']) or 'none'}; "
        f"{n['matmul_size']}-square matmul peak fp32 {peak['fp32']:,.1f}, "
        f"bf16 {peak['bf16']:,.1f} GFLOP/s",
    ]
    entries = {**n["models"], "lite prefix": n["lite_prefix"]}
    names = list(next(iter(entries.values()))["variants"])
    header = f"{'model':<12}" + "".join(f"{v:>17}" for v in names) + f"{'chosen/best':>13}"
    lines += [header + "   (images/s [share of peak])", "-" * len(header)]
    for name, e in entries.items():
        cells = "".join(
            f"{e['variants'][v]['images_per_s']:>10,.1f} "
            f"[{e['variants'][v]['share_of_peak']:>4.0%}]"
            for v in names
        )
        mark = "ok" if e["target_met"] else "LOW"
        lines.append(
            f"{name:<12}{cells}{e['chosen_over_best']:>9.3f} {mark:<3}"
            f"  ({e['chosen']} vs {e['best']}"
            + (
                f"; project path {e['project_over_best']:.3f}, "
                f"{e['project_over_best_how'].split(':')[0]}"
                if math.isfinite(e.get("project_over_best", math.nan))
                else ""
            )
            + ")"
        )
    for stage, e in n.get("eval_share", {}).items():
        lines.append(
            f"{stage}: evaluation {e['eval_share']:.1%} of its {e['of']} "
            f"(target <= {e['target']:.0%}: {'met' if e['target_met'] else 'missed'}; "
            f"{e['numerics']})"
        )
    return lines
