#!/usr/bin/env bash
# The GPU check in one go, on a lent GPU machine (BENCHMARKS.md, "GPU"):
#   1. prepare the data set from the carried image-folder archive (src.data.prepare.prepare_dataset)
#   2. python -m benchmarks.bench on CUDA: baseline, improved, ResNet18 at 224 px
#   3. the three full-size stages (python -m pipelines.train <stage>), tracking off,
#      each timed, in a scratch project root (the repo's data/, models/, reports/ untouched)
# Needs python3 with torch, torchvision, numpy, pillow and PyYAML (matplotlib for the stages'
# figures); no mlflow, dvc, optuna or network. Results: $OUT (the device tool's folder) or
# $GPU_CHECK_WORK/out: gpu_check.json (summary), bench_cuda.json, <stage>.metrics.json, logs.
#
#   scripts/gpu_check.sh --stage-carry    here, first: copies the data archive (and a pure-Python
#                                         PyYAML fallback) into .device/gpu_check/ (git-ignored)
#   bash scripts/gpu_check.sh             on the GPU machine; device tool: carry
#                                         [".device/gpu_check"], timeout_s 600
#   GPU_CHECK_SMOKE=1 scripts/gpu_check.sh   the same logic on CPU in minutes (dry-run stages)
#
# ResNet weights: with .device/gpu_check/resnet18-f37072fd.pth (torchvision's IMAGENET1K_V1
# file) the stage is pretrained; without it, it runs with random weights (speed only: its
# accuracy is then not the course's).
set -euo pipefail
cd "$(dirname "$0")/.."

CARRY=.device/gpu_check
WEIGHTS_FILE=resnet18-f37072fd.pth
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}

if [[ "${1:-}" == "--stage-carry" ]]; then
  mkdir -p "$CARRY/pylib"
  archive=${GPU_CHECK_ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}
  cp -f "$archive" "$CARRY/cifar10-jpeg.tar.gz"
  # PyYAML's pure-Python half runs on any Python 3; its C speed-up is optional.
  yaml_dir=$("$PY" -c 'import os, yaml; print(os.path.dirname(yaml.__file__))')
  rm -rf "$CARRY/pylib/yaml" && cp -r "$yaml_dir" "$CARRY/pylib/yaml"
  find "$CARRY/pylib" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
  torch_weights="${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/$WEIGHTS_FILE"
  [[ -f "$torch_weights" ]] && cp -f "$torch_weights" "$CARRY/"
  du -sh "$CARRY"
  exit 0
fi

WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
RESULTS=${OUT:-$WORK/out}
ROOT=$WORK/root  # scratch project root for the stages (DVC_ROOT)
DATA=$ROOT/data/cifar10  # the fixed layout (src.config.layout.Layout) under that root
mkdir -p "$WORK" "$RESULTS"
export PYTHONUNBUFFERED=1 CIFAR_MLOPS_TRACKING=off
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  export PYTHONPATH="$PWD/$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" - <<'EOF' | tee "$RESULTS/machine.txt"
import os, platform, torch, torchvision, yaml
print("python", platform.python_version(), "torch", torch.__version__,
      "torchvision", torchvision.__version__, "yaml", yaml.__version__, "cpus", os.cpu_count())
print("cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv | tee -a "$RESULTS/machine.txt" || true

rm -rf "$ROOT" && mkdir -p "$ROOT"

# 1. data -------------------------------------------------------------------------------
archive=${GPU_CHECK_ARCHIVE:-$CARRY/cifar10-jpeg.tar.gz}
[[ -f "$archive" ]] || archive=../shared/data/cifar10-jpeg.tar.gz
ms() { date +%s%3N; }
start=$(ms)
"$PY" - "$archive" "$DATA" <<'EOF'
import dataclasses, sys
from pathlib import Path
from src.config.load import load_params
from src.data.prepare import prepare_dataset
cfg = dataclasses.replace(load_params().data, source=sys.argv[1])
manifest = prepare_dataset(cfg, Path(sys.argv[2]), Path(sys.argv[2]).parent / "raw")
print("[gpu_check] prepared", manifest["counts"], "from", sys.argv[1])
EOF
prepare_ms=$(( $(ms) - start ))

# 2. benchmark --------------------------------------------------------------------------
if [[ "$SMOKE" == 1 ]]; then
  bench_args=(--device cpu --steps 2 --repeats 1 --resnet-size 32 --eval-images 16)
else
  bench_args=(--device cuda --resnet-size 224)
fi
"$PY" -m benchmarks.bench --models baseline improved resnet --tracking off --data "$DATA" \
  "${bench_args[@]}" ${GPU_CHECK_BENCH_ARGS:-} --json "$RESULTS/bench_cuda.json" \
  2>&1 | grep -v '^Epoch: ' | tee "$RESULTS/bench.log"

# 3. the three full-size stages ---------------------------------------------------------
weights=none
if [[ -f "$CARRY/$WEIGHTS_FILE" ]]; then
  mkdir -p "$WORK/torch/hub/checkpoints" && cp -f "$CARRY/$WEIGHTS_FILE" "$WORK/torch/hub/checkpoints/"
  export TORCH_HOME=$WORK/torch
  weights=imagenet
fi
"$PY" - "$ROOT/params.yaml" "$weights" "$SMOKE" <<'EOF'
import sys, yaml
from src.config.layout import PROJECT_ROOT
out, weights, smoke = sys.argv[1:]
raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
raw["resnet"]["weights"] = weights
for stage in ("baseline", "improved", "resnet"):
    raw[stage]["train"]["device"] = "cpu" if smoke == "1" else "cuda"
    raw[stage]["train"]["dry_run"] = smoke == "1"
if smoke == "1":
    raw["resnet"]["image_size"] = 64
open(out, "w").write(yaml.safe_dump(raw, sort_keys=False))
EOF
declare -A stage_ms
for stage in baseline improved resnet; do
  start=$(ms)
  DVC_ROOT=$ROOT "$PY" -m pipelines.train "$stage" --no-progress 2>&1 | grep -v '^Epoch: ' | tee "$RESULTS/$stage.log"
  stage_ms[$stage]=$(( $(ms) - start ))
  cp "$ROOT/reports/$stage/metrics.json" "$RESULTS/$stage.metrics.json"
done

"$PY" - "$RESULTS" "$prepare_ms" "${stage_ms[baseline]}" "${stage_ms[improved]}" \
  "${stage_ms[resnet]}" "$weights" <<'EOF'
import json, sys
from pathlib import Path
results, prepare_ms, *walls_ms, weights = sys.argv[1:]
walls = [int(w) / 1000 for w in walls_ms]
try:
    from src.report.inputs import REFERENCE  # the course's accuracies (needs pandas)
except Exception as exc:  # a summary without the comparison beats no summary
    print(f"[gpu_check] no course accuracies to compare with: {exc}")
    REFERENCE = {}
bench = json.loads((Path(results) / "bench_cuda.json").read_text())
summary = {"prepare_s": int(prepare_ms) / 1000, "resnet_weights": weights, "stages": {}}
for stage, wall in zip(("baseline", "improved", "resnet"), walls):
    m = json.loads((Path(results) / f"{stage}.metrics.json").read_text())
    course = REFERENCE.get(stage, {}).get("test_accuracy")
    summary["stages"][stage] = {
        "wall_s": wall,
        "train_time_s": m.get("train_time_s"),
        "eval_time_s": m.get("eval_time_s"),
        "eval_share": m.get("eval_share"),
        "train_images_per_s": m.get("train_images_per_s", m.get("images_per_s")),
        "epochs_run": m.get("epochs_run"),
        "test_accuracy": m.get("test_accuracy"),
        "course_test_accuracy": course,
        "course_accuracy_reached": None if course is None else m["test_accuracy"] >= course,
    }
summary["stages_total_s"] = sum(walls)
summary["bench"] = {
    name: {
        "floor": r["floor"]["images_per_s"],
        "project": r["project"]["images_per_s"],
        "reference": r["reference"]["images_per_s"],
        **r["ratios"],
    }
    for name, r in bench["models"].items()
}
(Path(results) / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
