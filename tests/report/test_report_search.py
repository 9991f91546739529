"""The search behind the `tuned` stage in the report: the study from its committed files
(best_params.yaml, trials.csv, figures, fidelity.csv), the searched design beside the hand
design, both curves against training images seen. Small hand-written files under tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from src.config.design import best_params_file, knobs_into
from src.config.layout import PROJECT_ROOT, Layout
from src.config.load import load_params
from src.config.typed import to_dict
from src.report import build as report
from src.report.inputs import ReportInputs, StageOutputs, load_inputs, load_recorded_runs
from src.report.network import n_parameters, stage_network
from src.report.search_inputs import load_tune
from src.report.sections.search import spearman
from src.runtime.errors import ReportInputError
from tests.report.test_report import _section, _table
from tests.report.test_report_numerics import BF16_METRICS, FP32_METRICS, _history, _record

PARAMS = load_params(PROJECT_ROOT / "params.yaml")
KNOBS = {"width": 0.5, "blocks": 4, "lr": 0.14, "scheduler": "cosine", "batch_size": 128}
BEST = (
    "# Best trial of Optuna study 'cifar10-improved': trial 3, val_accuracy 0.5684\n"
    "# (scored after 2 epochs on 10000 training images).\n"
    "knobs:\n" + "".join(f"  {k}: {v}\n" for k, v in KNOBS.items())
)
TRIALS = """number,state,val_accuracy,epochs,subset,validations,seconds,batch_size,lr,width
0,COMPLETE,0.5486,2,10000,4,100.0,64,0.05,1.0
1,FAIL,0.3478,2,10000,2,10.0,64,0.07,0.53
2,PRUNED,0.4630,2,10000,2,20.0,128,0.2,0.3
3,COMPLETE,0.5684,2,10000,4,50.0,128,0.14,0.5
4,COMPLETE,0.5601,2,10000,4,80.0,64,0.02,0.8
"""
# tools.fidelity's table: the top trials at full size, one probe without a study score
FIDELITY = (
    (
        "name,trial,study_rank,study_val_accuracy,full_rank,final_val_accuracy,test_accuracy,"
        "epochs_run,train_images_per_s,wall_time_s,numerics,machine\n"
    )
    + """trial-33,33,1,0.5684,2,0.8316,0.8211,10.0,550.0,898.0,bf16,a 2-core AMD EPYC CPU
trial-39,39,2,0.5650,1,0.8402,0.8290,10.0,610.2,850.1,bf16,a 2-core AMD EPYC CPU
trial-31,31,3,0.5601,3,0.8250,0.8188,10.0,480.7,990.4,bf16,a 2-core AMD EPYC CPU
trial-0,0,9,0.5486,4,0.8144,0.8028,8.987,222.1,2020.7,bf16,a 2-core AMD EPYC CPU
probe-wide,,,,5,0.8001,0.7950,10.0,200.0,2300.0,bf16,a 2-core AMD EPYC CPU
"""
)
SEARCH = "### Task 3 (tuned): the search"
DESIGNS = "### Task 3 (tuned): the search's design against the hand design"
FIDELITY_HEADING = "### Task 3 (tuned): low against full fidelity"


def _study_files(root, fidelity: bool = False) -> None:
    folder = Layout(root).tune_reports / "cifar10-improved"
    folder.mkdir(parents=True)
    (folder / "best_params.yaml").write_text(BEST)
    (folder / "trials.csv").write_text(TRIALS)
    for name in ("parallel_coordinate", "param_importances", "optimization_history"):
        (folder / f"{name}.png").write_bytes(b"\x89PNG fake")
    if fidelity:
        (folder / "fidelity.csv").write_text(FIDELITY)


def _outputs(stage: str, config: dict, metrics: dict, history: pd.DataFrame) -> StageOutputs:
    return StageOutputs(
        stage=stage,
        metrics=metrics,
        history=history,
        config=config,
        model_metrics={},
        files={
            "metrics": f"reports/{stage}/metrics.json",
            "history": f"reports/{stage}/history.csv",
            "model": f"models/{stage}.pt",
        },
        config_source="the test",
        has_model=False,
    )


def _inputs(root, tuned: bool = True) -> ReportInputs:
    hand = to_dict(PARAMS.improved)
    found = knobs_into(hand, KNOBS)
    stages = {info: None for info in ("baseline", "improved", "tuned", "resnet", "lite")}
    stages["improved"] = _outputs("improved", hand, BF16_METRICS, _history([0.8, 0.55]))
    if tuned:
        metrics = {**BF16_METRICS, "test_accuracy": 0.8211, "final_val_accuracy": 0.8316}
        stages["tuned"] = _outputs("tuned", found, metrics, _history([0.7, 0.5]))
    return ReportInputs(
        stages=stages,
        missing={s: [f"reports/{s}/metrics.json"] for s, o in stages.items() if o is None},
        manifest=None,
        manifest_file="data/cifar10/manifest.json",
        download=None,
        tune=load_tune(Layout(root).tune_reports, root),
        baseline_params=to_dict(PARAMS.baseline),
        fp32=load_recorded_runs(Layout(root).fp32_runs, root),
        tune_params=dict(PARAMS.tune),
    )


def test_the_search_follows_the_tuned_stage_with_the_study_and_both_designs(tmp_path):
    _study_files(tmp_path)
    _record(tmp_path, "improved", FP32_METRICS, _history([0.9, 0.6, 0.5]))
    rendered = report.render_report(_inputs(tmp_path))
    text = rendered.markdown

    order = [
        "## Task 3 (tuned): CNN design found by the search",
        "### Task 3 (tuned): accuracy and loss",
        SEARCH,
        DESIGNS,
        FIDELITY_HEADING,
        "## Task 4a (resnet): ResNet18 transfer learning",
    ]
    places = [text.index(f"\n{h}\n") for h in order]
    assert places == sorted(places)
    assert (
        "`tune.base`'s params.yaml section with the study's best knobs (`src.config.design`) "
        "as the stage read it" in _section(text, "### Task 3 (tuned): hyperparameters")
    )
    assert "## Tuning study" not in text  # the old section at the end is gone

    search = _section(text, SEARCH)
    assert "**5 trials**: 3 complete, 1 pruned, 1 failed." in search
    assert f"the study itself: `{PARAMS.tune['storage']}` (params.yaml `tune.storage`)" in search
    assert "2 epochs of 10,000 training images (20,000 images seen at most; 5 trials)" in search
    assert "4 min in all (260 s), median 50 s per trial" in search
    assert "Best trial: **3**, validation accuracy **0.5684** at that budget." in search
    assert "Trial 0, the hand design as the space expresses it" in search
    assert "(`src.tune` enqueues it first): validation accuracy 0.5486." in search
    assert "trial 3, val_accuracy 0.5684" in search  # best_params.yaml's header
    knobs = {r["Knob"]: r for r in _table(search)}
    assert set(knobs) == {f"`{k}`" for k in PARAMS.tune["space"]}
    assert knobs["`lr`"]["Best trial"] == "0.14"
    assert knobs["`lr`"]["Searched (params.yaml `tune.space`)"] == "float 0.005 to 0.3, log scale"
    assert knobs["`kernel_size`"]["Best trial"] == "—"  # not among the best trial's knobs
    # the study's figures, optimisation history and importances first, copied beside
    links = [ln for ln in search.splitlines() if ln.startswith("![")]
    assert [ln.split("/")[-1].rstrip(")") for ln in links] == [
        "tune-cifar10-improved-optimization_history.png",
        "tune-cifar10-improved-param_importances.png",
        "tune-cifar10-improved-parallel_coordinate.png",
    ]
    assert set(rendered.copies) == {ln.split("/")[-1].rstrip(")") for ln in links}

    designs = _section(text, DESIGNS)
    rows = {r["Measure"]: r for r in _table(designs)}
    hand, found = "improved (hand)", "tuned (search)"
    assert rows["Conv filters"][hand] == "[128, 256, 512, 1024]"
    assert rows["Conv filters"][found] == "[64, 128, 256, 512]"
    assert (rows["Learning rate"][hand], rows["Learning rate"][found]) == ("0.05", "0.14")
    assert (rows["Scheduler"][hand], rows["Scheduler"][found]) == ("none", "cosine")
    assert rows["Label smoothing"][hand] == "0"  # the schema's default, not "—"
    assert (rows["Batch size"][hand], rows["Batch size"][found]) == ("64", "128")
    counts = {
        s: n_parameters(stage_network(c, s)[0])
        for s, c in (
            ("improved", to_dict(PARAMS.improved)),
            ("tuned", knobs_into(to_dict(PARAMS.improved), KNOBS)),
        )
    }
    assert rows["Parameters"][hand] == f"{counts['improved']:,}"
    assert rows["Parameters"][found] == f"{counts['tuned']:,}"
    assert rows["Training images seen"][hand] == f"{700 * 64:,}"
    assert rows["Training images seen"][found] == f"{700 * 128:,}"
    assert rows["Test accuracy"][hand] == "0.8200" and rows["Test accuracy"][found] == "0.8211"
    assert rows["Wall time"][found] == "600 s"
    assert (
        "**Test accuracy**: `improved` (hand) 0.8200, `tuned` (search) 0.8211 (+0.0011); the "
        "hand design's float32 run (`reports/numerics/fp32/improved/metrics.json`): 0.8150."
    ) in designs

    # one figure: validation loss and accuracy against images seen, the float32 run too
    assert "(report/tuned_search_curves.png)" in designs
    loss, accuracy = rendered.figures["tuned_search_curves.png"].axes
    assert loss.get_legend_handles_labels()[1] == [
        "improved (hand, bf16 autocast + channels_last)",
        "tuned (search, bf16 autocast + channels_last)",
        "improved (hand, float32 run)",
    ]
    hand_line, found_line, fp32_line = accuracy.get_lines()
    assert list(hand_line.get_xdata()) == [350 * 64, 700 * 64]
    assert list(found_line.get_xdata()) == [350 * 128, 700 * 128]
    assert list(fp32_line.get_xdata()) == [350 * 64, 700 * 64, 1050 * 64]
    assert accuracy.get_xlabel() == "Training images seen (step × batch size)"

    fidelity = _section(text, FIDELITY_HEADING)
    assert (
        "`reports/tune/cifar10-improved/fidelity.csv` is not here: no trial has been retrained "
        "at full size (`python -m tools.fidelity` makes it)."
    ) in fidelity
    assert "Spearman" not in fidelity


def test_the_full_size_retrains_are_ranked_against_the_study(tmp_path):
    _study_files(tmp_path, fidelity=True)
    text = report.render_report(_inputs(tmp_path)).markdown
    fidelity = _section(text, FIDELITY_HEADING)
    rows = _table(fidelity)
    assert [r["Name"] for r in rows] == [
        "`trial-33`",
        "`trial-39`",
        "`trial-31`",
        "`trial-0`",
        "`probe-wide`",
    ]
    assert rows[1] == {
        "Name": "`trial-39`",
        "Study rank": "2",
        "Study val accuracy": "0.5650",
        "Full-size rank": "1",
        "Full-size val accuracy": "0.8402",
        "Test accuracy": "0.8290",
        "Numerics": "bf16",
        "Machine": "a 2-core AMD EPYC CPU",
    }
    assert rows[4]["Study rank"] == "—" and rows[4]["Study val accuracy"] == "—"
    # ranks 4 3 2 1 against 3 4 2 1: 1 - 6 * 2 / (4 * 15) = 0.8; the probe has no study score
    assert (
        "Spearman rank correlation between the study's score and the full-size validation "
        "accuracy: **+0.80** (n = 4 designs with both; few pairs: a weak test)."
    ) in fidelity


def test_spearman_ranks_with_ties_and_says_when_it_is_undefined():
    rho, n = spearman([0.1, 0.2, 0.2, 0.4, None], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert n == 4 and rho == pytest.approx(
        pd.Series([1, 2.5, 2.5, 4]).corr(pd.Series([1, 2, 3, 4]))
    )
    assert spearman([0.1, 0.3, 0.2], [3, 1, 2]) == (pytest.approx(-1.0), 3)
    assert spearman([0.5], [0.8]) == (None, 1)
    assert spearman([0.5, 0.5], [0.8, 0.9]) == (None, 2)  # one side constant


def test_without_the_tuned_stage_the_search_says_what_to_run(tmp_path):
    _study_files(tmp_path)
    text = report.render_report(_inputs(tmp_path, tuned=False)).markdown
    stage = _section(text, "## Task 3 (tuned): CNN design found by the search")
    assert "Run it with `dvc repro tuned`" in stage
    assert "### Task 3 (tuned): hyperparameters" not in text
    designs = _section(text, DESIGNS)
    assert "`tuned` has not run here: `dvc repro tuned` trains the study's best design" in designs
    assert "**5 trials**" in _section(text, SEARCH)  # the study is shown all the same


def test_without_a_study_the_search_says_how_to_make_one(tmp_path):
    text = report.render_report(_inputs(tmp_path, tuned=False)).markdown
    assert "No tuning study was run: `reports/tune/` holds no `<study>/best_params.yaml`" in (
        _section(text, SEARCH)
    )
    assert "`reports/tune/<study>/fidelity.csv` is not here" in _section(text, FIDELITY_HEADING)


def test_a_fresh_clone_reads_the_tuned_design_from_dvc_lock(tmp_path):
    """No models/tuned.pt: the config is dvc.lock's base section with the knobs of the
    best_params.yaml the lock hashed; another best_params.yaml gives no config."""
    shutil.copy(PROJECT_ROOT / "dvc.lock", tmp_path / "dvc.lock")
    best_rel = best_params_file(Path("reports/tune"), PARAMS.tune["study"])
    for rel in ("reports/tuned/metrics.json", "reports/tuned/history.csv", best_rel):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / rel, tmp_path / rel)
    tuned = load_inputs(tmp_path, PARAMS, allow_missing=True).stages["tuned"]
    knobs = load_tune(Layout(tmp_path).tune_reports, tmp_path)[0].knobs
    assert tuned.config["train"]["lr"] == knobs["lr"]
    assert tuned.config["train"]["scheduler"] == knobs["scheduler"]
    assert "`dvc.lock`" in tuned.config_source
    assert json.loads((tmp_path / "reports/tuned/metrics.json").read_text()) == tuned.metrics

    best = tmp_path / best_rel
    other = yaml.safe_load(best.read_text())
    other["knobs"]["lr"] *= 2
    best.write_text(yaml.safe_dump(other))
    assert load_inputs(tmp_path, PARAMS, allow_missing=True).stages["tuned"].config is None


def test_a_trials_table_without_a_column_the_report_reads_is_refused(tmp_path):
    _study_files(tmp_path)
    trials = Layout(tmp_path).tune_reports / "cifar10-improved" / "trials.csv"
    trials.write_text(TRIALS.replace(",seconds,", ",secs,"))
    with pytest.raises(ReportInputError, match="trials.csv: no column seconds"):
        load_tune(Layout(tmp_path).tune_reports, tmp_path)
