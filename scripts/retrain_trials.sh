#!/usr/bin/env bash
# Retrain exported study trials at full size, each through the tuned stage's own code path
# (`python -m pipelines.train tuned` with the trial's knobs as best_params.yaml), in a
# scratch project root; tracking off. Results: $OUT (or $RETRAIN_WORK/out): retrain.json
# (one entry per trial: its study rank and score, full-size metrics) and histories.csv.
#
#   python -m tools.fidelity export --trials ... --out .device/retrain/trials.json   (here)
#   bash scripts/retrain_trials.sh .device/retrain/trials.json      (device tool: carry
#        [".device/gpu_check", ".device/retrain"]; the archive comes from gpu_check's carry)
#   RETRAIN_SMOKE=1 scripts/retrain_trials.sh ...   the same logic on CPU, dry-run stages
#   python -m tools.fidelity table <out>/retrain.json --machine "..."   (here, afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:?usage: scripts/retrain_trials.sh trials.json}
PY=${PYTHON:-python3}
WORK=${RETRAIN_WORK:-/tmp/retrain}
RESULTS=${OUT:-$WORK/out}
ROOT=$WORK/root
mkdir -p "$WORK" "$RESULTS"
export PYTHONUNBUFFERED=1 CIFAR_MLOPS_TRACKING=off
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  export PYTHONPATH="$PWD/.device/gpu_check/pylib${PYTHONPATH:+:$PYTHONPATH}"
fi
archive=${RETRAIN_ARCHIVE:-.device/gpu_check/cifar10-jpeg.tar.gz}
[[ -f "$archive" ]] || archive=../shared/data/cifar10-jpeg.tar.gz
rm -rf "$ROOT" && mkdir -p "$ROOT"
"$PY" - "$archive" "$ROOT" "$TRIALS" "$RESULTS" "${RETRAIN_SMOKE:-0}" <<'PYEOF'
import csv, dataclasses, json, shutil, subprocess, sys, time
from pathlib import Path
import yaml
from src.config.design import best_params_file
from src.config.layout import PROJECT_ROOT
from src.config.load import load_params
from src.data.prepare import prepare_dataset

archive, root, trials, results, smoke = sys.argv[1:]
root, results = Path(root), Path(results)
raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
if smoke == "1":
    raw["improved"]["train"].update(dry_run=True, device="cpu")
(root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
cfg = dataclasses.replace(load_params().data, source=archive)
prepare_dataset(cfg, root / "data/cifar10", root / "data/raw")
exported = json.loads(Path(trials).read_text())
best = best_params_file(root / "reports/tune", raw["tune"]["study"])
best.parent.mkdir(parents=True, exist_ok=True)
done, histories = [], []
for entry in exported["entries"]:
    for path in ("models/tuned.pt", "reports/tuned", "checkpoints"):
        shutil.rmtree(root / path, ignore_errors=True) if (root / path).is_dir() else (root / path).unlink(missing_ok=True)
    best.write_text(yaml.safe_dump({"knobs": entry["knobs"]}))
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "pipelines.train", "tuned", "--no-progress"],
                         env={**__import__("os").environ, "DVC_ROOT": str(root)},
                         capture_output=True, text=True)
    print(f"[retrain] {entry['name']}: rc {run.returncode}, {time.time() - start:.0f} s; "
          + (run.stdout.strip().splitlines() or [""])[-1], flush=True)
    if run.returncode:
        print(run.stderr[-2000:], flush=True)
        continue
    metrics = json.loads((root / "reports/tuned/metrics.json").read_text())
    done.append({**entry, **metrics, "wall_s": round(time.time() - start, 1)})
    with (root / "reports/tuned/history.csv").open() as fh:
        histories += [{"name": entry["name"], **row} for row in csv.DictReader(fh)]
    (results / "retrain.json").write_text(json.dumps(done, indent=1) + "\n")
    with (results / "histories.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(histories[0]))
        writer.writeheader()
        writer.writerows(histories)
PYEOF
