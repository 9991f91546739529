"""The benchmark runs its three paths and writes every figure (no timing asserted),
and the training path imports nothing beyond torch, torchvision, numpy and pillow."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from benchmarks import bench
from src.config.layout import PROJECT_ROOT
from src.tracking import store
from tests.conftest import tiny_params

LIGHT_MODULES = (
    "src.training.loop",
    "src.training.augment",
    "src.data.prepare",
    "src.training.models",
    "src.runner.training_stage",
    "src.training.feature_cache",
    "src.training.recipe",
    "benchmarks.bench",
)
HEAVY_PACKAGES = ("mlflow", "optuna", "dvc", "pandas", "matplotlib", "yaml", "sqlalchemy")


@pytest.fixture
def tiny_params_file(tmp_path):
    """The real params.yaml, shrunk (narrow models, batch 16), as a file."""
    raw = tiny_params(tmp_path, "unused")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _finite_numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in _finite_numbers(value)]
    if isinstance(tree, list):
        return [v for value in tree for v in _finite_numbers(value)]
    return [tree] if isinstance(tree, float) else []


@pytest.fixture
def one_thread():
    """Figures are not asserted here; one thread keeps a loaded CI machine quick."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_writes_every_figure(tiny_params_file, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    redirects = ("DVC_ROOT", "MLFLOW_TRACKING_URI", store.TRACKING_SWITCH_ENV)
    environ, uri = {k: os.environ.get(k) for k in redirects}, store.tracking_uri()
    out = tmp_path / "bench.json"
    result = bench.main(
        [
            "--params",
            str(tiny_params_file),
            "--synthetic",
            "128",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--resnet-size",
            "32",
            "--eval-images",
            "16",
            "--tracking",
            "on",
            "--matmul-size",
            "64",
            "--prefix-size",
            "32",
            "--prefix-images",
            "8",
            "--json",
            str(out),
        ]
    )
    written = json.loads(out.read_text())
    assert written["models"].keys() == set(bench.MODELS)
    for name, model in written["models"].items():
        for path in bench.PATHS:
            assert model[path]["images_per_s"] > 0, (name, path)
        assert len(model["rounds"]) == 1
        for ratio in model["ratios"].values():
            assert math.isfinite(ratio) and ratio > 0
        project = model["project"]
        assert project["tracked"] is True
        assert 0 <= project["tracking_share"] < 1
        assert 0 < project["eval_share"] < 1
        assert project["tracking_per_validation_s"] > 0
    assert written["models"]["resnet"]["project"]["cache_images_per_s"] > 0
    assert all(math.isfinite(v) for v in _finite_numbers(written))
    assert len(written["loadavg_start"]) == len(written["loadavg_end"]) == 3
    assert written["machine"]["cpu_cores"] >= 1
    assert result["models"]["baseline"]["batch_size"] == 16
    numerics = written["numerics"]
    assert numerics["cpu"]["numerics"] == "fp32"  # conftest: a CPU without native bf16
    assert set(numerics["matmul_peak_gflop_per_s"]) == {"fp32", "bf16"}
    assert numerics["models"].keys() == set(bench.MODELS)
    for name, entry in {**numerics["models"], "prefix": numerics["lite_prefix"]}.items():
        assert set(entry["variants"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}, name
        for variant in entry["variants"].values():
            assert variant["images_per_s"] > 0 and variant["gflop_per_s"] > 0, name
            assert variant["share_of_peak"] > 0, name
        assert entry["chosen"] == "fp32" and entry["best"] in entry["variants"]
        assert entry["chosen_over_best"] > 0 and entry["target_chosen_over_best"] == 0.9
    for name, entry in numerics["models"].items():
        paths = written["models"][name]
        assert paths["floor"]["variants"] == ["fp32"], name  # as the project chose
        assert entry["project_over_best_how"].startswith("paired"), name
        assert entry["project_over_best"] == pytest.approx(
            paths["ratios"]["project_over_floor"] * entry["chosen_over_best"]
        )
    assert numerics["lite_prefix"]["image_size"] == 32
    assert not (tmp_path / "mlruns").exists()
    # tracked into its own temporary store, named explicitly: what once redirected it
    # is as it was, and so is the store the project tracks into
    assert {k: os.environ.get(k) for k in redirects} == environ
    assert store.tracking_uri() == uri


def test_eval_epoch_splits_validation_and_final_evaluation(tiny_params_file, tmp_path, one_thread):
    out = tmp_path / "epoch.json"
    bench.main(
        [
            "--params",
            str(tiny_params_file),
            "--synthetic",
            "96",
            "--device",
            "cpu",
            "--eval-epoch",
            "baseline",
            "--json",
            str(out),
        ]
    )
    epoch = json.loads(out.read_text())["eval_epoch"]
    assert epoch["steps"] == 96 // 16 and epoch["validations"] == 2
    assert epoch["validation_s"] > 0 and epoch["final_eval_s"] > 0
    assert 0 < epoch["eval_share_one_epoch"] < 1


def test_project_over_best_pairs_through_the_floor():
    """The two sections' drift cancels: project/floor and chosen/best are each paired
    within rounds; an unpaired ratio only where the floor ran another variant."""
    paths = {
        "floor": {"variants": ["bf16+cl"]},
        "project": {"images_per_s": 50.0},
        "ratios": {"project_over_floor": 0.95},
    }
    entry = {
        "variants": {"bf16+cl": {"images_per_s": 100.0}, "fp32": {"images_per_s": 40.0}},
        "best": "bf16+cl",
        "chosen": "bf16+cl",
        "chosen_over_best": 0.98,
    }
    paired = bench.project_over_best(paths, entry)
    assert paired["project_over_best"] == pytest.approx(0.95 * 0.98)
    assert paired["project_target_met"] is True
    assert paired["project_over_best_unpaired"] == pytest.approx(0.5)
    other = bench.project_over_best({**paths, "floor": {"variants": ["fp32"]}}, entry)
    assert other["project_over_best"] == pytest.approx(0.5)
    assert other["project_over_best_how"] == "unpaired"
    assert other["project_target_met"] is False
    assert bench.project_over_best(None, entry) == {}


def test_steps_argument():
    assert bench.parse_steps(["5"], "cpu") == dict.fromkeys(bench.MODELS, 5)
    steps = bench.parse_steps(["improved=3"], "cuda")
    assert steps["improved"] == 3 and steps["baseline"] == bench.DEFAULT_STEPS["cuda"]["baseline"]
    with pytest.raises(SystemExit):
        bench.parse_steps(["vgg=3"], "cpu")


def test_training_path_imports_only_torch_and_friends():
    code = (
        "import sys\n"
        f"for name in {LIGHT_MODULES!r}: __import__(name)\n"
        f"print(sorted(p for p in {HEAVY_PACKAGES!r} if p in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"imported at module level: {out.stdout.strip()}"


def test_quick_numerics_follow_the_cpu_flags(tiny_params_file, tmp_path, monkeypatch, one_thread):
    """--quick --numerics only: no three paths; a CPU with native bf16 chooses bf16 +
    channels_last; a stage's metrics.json gives its evaluation share against 10 %."""
    from benchmarks import numerics as bench_numerics
    from src.training import device, numerics_probe
    from src.training.numerics_probe import CANDIDATES

    for module in (device, bench_numerics):  # whatever this machine's CPU has
        monkeypatch.setattr(module, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    # the stage's own measurement (tested in tests/training) says bf16+cl, as on most nets
    rates = dict(zip(CANDIDATES, (2.0, 1.0, 1.0)))
    monkeypatch.setattr(numerics_probe, "step_rates", lambda *a, **k: rates)
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    (reports / "baseline").mkdir(parents=True)
    shares = {"training": 0.8, "evaluation": 0.12, "startup": 0.05, "other": 0.03}
    metrics = {"time_shares": shares, "numerics": "bf16"}
    (reports / "baseline/metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(bench.Layout, "reports", reports)
    # reports/ outside the project on purpose: the check that refuses such a layout is off
    monkeypatch.setattr(bench.Layout, "check_inside", lambda self: None)
    result = bench.main(
        [
            "--params",
            str(tiny_params_file),
            "--synthetic",
            "64",
            "--device",
            "cpu",
            "--models",
            "baseline",
            "--numerics",
            "only",
            "--quick",
            "--prefix-size",
            "32",
        ]
    )
    assert "models" not in result
    numerics = result["numerics"]
    assert numerics["cpu"]["native_bf16_flags"] == ["avx512_bf16"]
    assert numerics["cpu"]["numerics_reason"] == "cpu avx512_bf16"
    assert numerics["matmul_size"] == 256
    baseline = numerics["models"]["baseline"]
    assert baseline["chosen"] == "bf16+cl" and len(baseline["rounds"]) == 1
    assert numerics["lite_prefix"]["chosen"] == "bf16+cl"
    assert numerics["eval_share"]["baseline"] == {
        "eval_share": 0.12,
        "of": "wall time",
        "target": 0.1,
        "target_met": False,
        "numerics": "bf16",
    }
