"""The report stage: task 1 as rendered, and the whole report on tiny-data stage outputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import threading
from html.parser import HTMLParser

import mlflow
import pytest
import yaml

from src.config.layout import PROJECT_ROOT, Layout
from src.config.load import load_params
from src.config.stages import TRAINING_STAGES, get_stage
from src.config.typed import to_dict
from src.report import build as report
from src.report import html as report_html
from src.report import inputs as report_inputs
from src.report.formats import fmt_duration
from src.report.inputs import REFERENCE, load_benchmark
from src.report.network import n_parameters, stage_network
from src.report.sections.stage import stage_cost
from src.report.sections.task1 import task1_section
from src.training.models import build_cnn
from tests.conftest import update_params

HEADINGS = [
    "# CIFAR-10 with convolutional networks: TDT4265 assignment 3",
    "## Where the numbers come from",
    "## Summary",
    "## Task 1: theory",
    "### Task 1a: convolution with the Sobel-x kernel",
    "### Task 1b: the layer that reduces sensitivity to translation",
    "### Task 1c–1f: padding, kernel and output sizes",
    "### Task 1g: parameters of the baseline network",
    "## Task 2: baseline CNN",
    "## Task 3 (improved): improved CNN",
    "### Task 3d: before and after",
    "### Task 3c: what helped and what did not (discussion)",
    "### Task 3f: overfitting (discussion)",
    "## Task 3 (tuned): CNN design found by the search",
    "### Task 3 (tuned): the search",
    "### Task 3 (tuned): the search's design against the hand design",
    "### Task 3 (tuned): low against full fidelity",
    "## Task 4a (resnet): ResNet18 transfer learning",
    "## Task 4a (lite): EfficientNet-Lite0 transfer learning",
    "### Task 4a: transfer learning (discussion)",
]
STAGE_SUBSECTIONS = ["architecture", "hyperparameters", "learning curves", "accuracy and loss"]


def _section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = markdown.index(heading + "\n") + len(heading) + 1
    nxt = re.search(rf"^#{{1,{len(level)}}} ", markdown[start:], flags=re.M)
    return markdown[start : start + nxt.start()] if nxt else markdown[start:]


def _table(text: str) -> list[dict[str, str]]:
    """The first markdown table in `text` as rows of header -> cell."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip("|").split(" | ")]  # noqa: E731
    header = split(lines[0])
    rows = []
    for line in lines[2:]:
        rows.append(dict(zip(header, split(line))))
    return rows


class _Fetches(HTMLParser):
    """Every URL an HTML page would fetch on opening: src/href of images, scripts, styles,
    fonts, frames, media, and url(...) in inline styles."""

    FETCH_ATTRS = {"src", "srcset", "href", "data", "poster", "background"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name == "style":
                self.urls += re.findall(r"url\(([^)]*)\)", value)
            if name not in self.FETCH_ATTRS or (tag == "a" and name == "href"):
                continue  # a link is followed on a click, not fetched on opening
            self.urls.append(value)

    def handle_data(self, data):
        if self._in_style:
            self.urls += re.findall(r"url\(([^)]*)\)", data)
            self.urls += re.findall(r"@import\s+['\"]?([^'\";]+)", data)


def fetched_urls(page: str) -> list[str]:
    parser = _Fetches()
    parser.feed(page)
    return parser.urls


def test_report_html_inlines_figures_and_fetches_nothing():
    png = b"\x89PNG\r\n\x1a\n fake"
    markdown = (
        "# Title\n\n<!-- marker: dropped -->\n\n| a | b |\n| --- | ---: |\n| 1 | 2 |\n\n"
        "![curves](report/curves.png)\n\n![remote](https://example.com/x.png)\n\n"
        '<img src="http://example.com/y.png"> <script src="https://cdn.example/v.js"></script>\n'
    )
    page = report_html.render_html(markdown, {"report/curves.png": png}, "Title")
    fetched = fetched_urls(page)
    assert fetched == ["data:image/png;base64," + base64.b64encode(png).decode()]
    assert "<table>" in page and '<th style="text-align:right">b</th>' in page
    assert "marker: dropped" not in page
    assert "[image not embedded: remote (https://example.com/x.png)]" in page
    assert "&lt;script" in page  # raw HTML is shown as text, never run


def test_discussion_sections_are_read_by_id(tmp_path):
    path = tmp_path / "discussion.md"
    assert report_inputs.read_discussion(path) is None
    path.write_text(
        "# Discussion\nintro\n\n## 3c: what helped\n\nBatch norm helped.\n\n### detail\nmore\n"
        "## 3f: overfitting\n\n## 9z: unknown\nignored\n## 4a\nPretrained wins.\n"
    )
    assert report_inputs.read_discussion(path) == {
        "3c": "Batch norm helped.\n\n### detail\nmore",
        "3f": "",
        "4a": "Pretrained wins.",
    }
    committed = report_inputs.read_discussion(Layout(PROJECT_ROOT).discussion)
    assert set(committed) == set(report_inputs.DISCUSSION)  # the file in git has every place


def test_task1_renders_the_theory_values():
    baseline = to_dict(load_params(PROJECT_ROOT / "params.yaml").baseline)
    model, _ = stage_network(baseline, "baseline")
    text = "\n".join(task1_section(model, "params.yaml's baseline"))
    result = _section(text, "### Task 1a: convolution with the Sobel-x kernel")
    for row in ([-11, 2, 4, -1, 7], [-24, 8, 12, -5, 12], [-19, 10, 4, -3, 15]):
        assert "  ".join(f"{v:4d}" for v in row) in result
    assert "**identical**" in result
    layer = _section(text, "### Task 1b: the layer that reduces sensitivity to translation")
    assert layer.strip().startswith("**Max pooling.**") and "window" in layer
    answers = _table(_section(text, "### Task 1c–1f: padding, kernel and output sizes"))
    assert [(r["Task"], r["Answer"]) for r in answers] == [
        ("1c", "3"),
        ("1d", "5"),
        ("1e", "254"),
        ("1f", "252"),
    ]
    assert "`P = (K - 1) / 2 = (7 - 1) / 2`" in answers[0]["Formula"]
    params = _table(_section(text, "### Task 1g: parameters of the baseline network"))
    assert [r["Parameters"] for r in params] == [
        "2,432",
        "51,264",
        "204,928",
        "131,136",
        "650",
        "**390,410**",
    ]
    assert "Total **390,410** parameters; course report: 390,410 (equal)" in text
    assert "on params.yaml's baseline:" in text


def test_reference_values_are_the_course_reports():
    assert REFERENCE["baseline"] == {"test_accuracy": 0.756, "n_parameters": 390_410}
    assert REFERENCE["improved"]["test_accuracy"] == 0.811
    assert REFERENCE["resnet"]["test_accuracy"] == 0.889


def test_missing_outputs_name_what_to_run(project, capsys, monkeypatch):
    from pipelines import report as stage

    monkeypatch.setenv("CIFAR_MLOPS_TRACKING", "off")  # nothing here needs the MLflow store
    with pytest.raises(SystemExit) as info:
        stage.main([])
    assert info.value.code == 1
    err = capsys.readouterr().err
    for name in ("download", "baseline", "improved", "resnet"):
        assert f"dvc repro {name}" in err
    assert "reports/baseline/metrics.json" in err and "models/improved.pt" in err
    assert "Traceback" not in err and not (project / "reports/report.md").exists()
    assert "python -m pipelines.report --allow-missing" in err  # the partial report's command

    stage.main(["--allow-missing"])  # every heading; what to run for what is missing
    text = (project / "reports/report.md").read_text()
    for heading in HEADINGS:
        assert f"\n{heading}\n" in f"\n{text}", heading
    assert "**Not run here**: `reports/baseline/metrics.json`" in text
    assert "Run it with `dvc repro improved`" in text
    assert "> **Partial report.** Not run here: `baseline` (task 2), `improved` (task 3)" in text
    assert "Generated by `python -m pipelines.report --allow-missing`" in text
    assert "`data/cifar10/manifest.json` is missing (run `dvc repro download`)" in text
    assert "No training stage has run yet." in text
    assert "on params.yaml's `baseline` network (the stage has not run)" in text
    assert "No tuning study was run: `reports/tune/` holds no" in text
    assert "Not available: `reports/discussion.md` does not exist." in text
    assert not list((project / "reports/report").glob("*.png"))
    assert (project / "reports/report.html").is_file()


def _bare_numbers(markdown: str) -> set[str]:
    """Integers of 1,000 or more written without thousands separators, outside code (a
    params.yaml literal, a run id or a path is code) and the course's name."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    prose = re.sub(r"`[^`]*`", "", prose).replace("TDT4265", "")
    return set(re.findall(r"(?<![\d,.])\d{4,}(?!\d)", prose))


def _commit_baseline_results(root) -> dict:
    """What a fresh clone holds of the committed baseline run: dvc.lock, metrics.json and
    history.csv are in git (the benchmark's rates too); models/baseline.pt and data/ are
    only in DVC's cache."""
    shutil.copy(PROJECT_ROOT / "dvc.lock", root / "dvc.lock")
    Layout(root).benchmark.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Layout(PROJECT_ROOT).benchmark, Layout(root).benchmark)
    (root / "reports/baseline").mkdir(parents=True)
    for name in ("metrics.json", "history.csv"):
        shutil.copy(PROJECT_ROOT / "reports/baseline" / name, root / "reports/baseline" / name)
    return json.loads((root / "reports/baseline/metrics.json").read_text())


def test_the_spread_over_seeds_is_in_the_summary_and_the_stage(project, monkeypatch):
    """reports/seeds/<stage>.json (python -m src.seeds): mean ± sample std, each seed, the
    commit and machine; a stage without a record says how to get one."""
    from pipelines import report as stage
    from src.seeds import spread

    monkeypatch.setenv("CIFAR_MLOPS_TRACKING", "off")
    _commit_baseline_results(project)
    runs = [spread.SeedRun(f"baseline-seed{k}", k, v, "success") for k, v in enumerate(ACC)]
    spread.write_record(spread.Spread("baseline", runs, commit="ab" * 20), root=project)
    stage.main(["--allow-missing"])
    text = (project / "reports/report.md").read_text()

    summary = {r["Stage"].strip("`"): r for r in _table(_section(text, "## Summary"))}
    assert summary["baseline"]["Test accuracy over seeds"] == "0.7200 ± 0.0050 (n=3)"
    baseline = _section(text, "## Task 2: baseline CNN")
    assert "**Over seeds**: test accuracy 0.7200 ± 0.0050 (mean ± sample standard" in baseline
    assert "seed 0: 0.7150, seed 1: 0.7200, seed 2: 0.7250" in baseline
    assert "of commit `ababababab`" in baseline and "reports/seeds/baseline.json" in baseline
    assert "repeats a run exactly only on the same machine" in baseline

    (project / "reports/seeds/baseline.json").write_text('{"stage": "baseline"}')
    with pytest.raises(SystemExit) as info:
        stage.main(["--allow-missing"])
    assert info.value.code == 1


ACC = (0.715, 0.72, 0.725)  # sample std 0.005


def test_a_fresh_clone_renders_the_committed_results(project, monkeypatch):
    from pipelines import report as stage

    monkeypatch.setenv("CIFAR_MLOPS_TRACKING", "off")
    committed = _commit_baseline_results(project)
    stage.main(["--allow-missing"])
    text = (project / "reports/report.md").read_text()

    top = text.split("\n## ")[0]  # the banner, before any number
    assert (
        "> **Partial report.** Not run here: `improved` (task 3), `tuned` (task 3), "
        "`resnet` (task 4a), `lite` (task 4a)." in top
    )
    assert "> **Without model files.** Not here: `models/baseline.pt`" in top
    assert "Smoke run" not in top
    assert "Generated by `python -m pipelines.report --allow-missing`" in top

    # the committed numbers, in one format
    summary = {r["Stage"].strip("`"): r for r in _table(_section(text, "## Summary"))}
    assert list(summary) == ["baseline"]
    assert summary["baseline"]["Test accuracy"] == f"{committed['test_accuracy']:.4f}"
    assert summary["baseline"]["Parameters"] == "390,410"
    task2 = _section(text, "## Task 2: baseline CNN")
    assert (
        f"early stop at step {committed['early_stop_step']:,}; "
        f"best checkpoint at step {committed['best_step']:,})"
    ) in task2
    assert _bare_numbers(text) == set()
    assert "profile applied" not in text

    # what needs the model file says so and how to get it; the config is dvc.lock's (the
    # tiny project's own params.yaml has another network: the lock is what trained it)
    assert "> **`models/baseline.pt` is not here.**" in task2
    assert "`dvc pull models/baseline.pt`" in task2 and "`dvc repro baseline`" in task2
    hyper = {r["Key"]: r["Value"] for r in _table(_section(text, "### Task 2: hyperparameters"))}
    assert hyper["`model.filters`"] == "`[32, 64, 128]`" and hyper["`train.lr`"] == "`0.05`"
    assert "from `dvc.lock`, whose hashes of this `metrics.json` and `history.csv` match" in task2
    assert "Total **390,410** parameters; course report: 390,410 (equal)" in text
    checks = _table(_section(text, "## Where the numbers come from"))[0]["Checks"]
    assert "no model file to check against" in checks

    # a missing stage: why, the command, and what it costs from the measured rate
    improved = _section(text, "## Task 3 (improved): improved CNN")
    assert "**Not run here**: `reports/improved/metrics.json`" in improved
    rate, _ = load_benchmark(Layout(PROJECT_ROOT).benchmark, PROJECT_ROOT).rates["improved"]
    epoch = fmt_duration(45_000 / rate)
    assert f"Run it with `dvc repro improved`; 1 epoch of 45,000 images: {epoch} of training" in (
        improved
    )
    assert f"{rate} training images/s measured on a 2-core AMD EPYC CPU" in improved

    # a metrics.json the lock does not describe: no config, and the report says what needs it
    metrics = project / "reports/baseline/metrics.json"
    metrics.write_text(metrics.read_text() + "\n")
    stage.main(["--allow-missing"])
    text = (project / "reports/report.md").read_text()
    arch = _section(text, "### Task 2: architecture")
    assert "Needs `models/baseline.pt` (the resolved config it stores)." in arch
    assert "params.yaml's `baseline` network (the stage left no record of its config here)" in (
        text
    )
    assert _table(_section(text, "## Summary"))[0]["Parameters"] == "—"

    # run by DVC, it says so
    monkeypatch.setenv("DVC_STAGE", "report")
    stage.main(["--allow-missing"])
    assert "Generated by `dvc repro report` (" in (project / "reports/report.md").read_text()


def test_what_a_missing_stage_costs_comes_from_measured_figures():
    params = load_params(PROJECT_ROOT / "params.yaml")
    bench = load_benchmark(Layout(PROJECT_ROOT).benchmark, PROJECT_ROOT)
    improved = stage_cost("improved", to_dict(params.improved), 45_000, bench)
    rate, _ = bench.rates["improved"]  # the file's figure, not one typed here
    hours = fmt_duration(10 * 45_000 / rate)
    assert improved.startswith(f"10 epochs of 45,000 images: {hours} of training at the {rate} ")
    assert "measured on a 2-core AMD EPYC CPU (`benchmarks/cpu.json`)" in improved
    resnet = stage_cost("resnet", to_dict(params.resnet), 45_000, bench)
    small, size = bench.rates["resnet"]
    assert (
        f"no training rate has been measured at 224 px, only {small} images/s at {size} px "
        "(layer4 and fc on cached features) on a 2-core AMD EPYC CPU" in resnet
    )
    assert "resnet18-f37072fd.pth" in resnet and "docs/pipeline.md's ResNet section" in resnet
    assert "measured" not in stage_cost("improved", to_dict(params.improved), 45_000, None)


def test_the_cost_rates_are_the_benchmark_files_rows(tmp_path):
    """Every row of the benchmark's JSON, a lite row too, and no rate typed into the code."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    lite = to_dict(params.lite)
    size = lite.get("image_size", lite.get("model", {}).get("image_size"))
    data = json.loads(Layout(PROJECT_ROOT).benchmark.read_text())
    data["models"]["lite"] = {"image_size": size, "project": {"images_per_s": 123.44}}
    (tmp_path / "cpu.json").write_text(json.dumps(data))
    bench = load_benchmark(tmp_path / "cpu.json", tmp_path)
    assert bench.rates["lite"] == (123.4, size)
    assert "at the 123.4 training images/s measured on" in stage_cost("lite", lite, 45_000, bench)


def test_a_quick_profile_run_is_a_smoke_run(project):
    """The quick run's improved stage, as dvc.lock records it: its values are profile
    quick's, so the report names the profile and carries the smoke banner."""
    import hashlib

    raw = yaml.safe_load((project / "params.yaml").read_text())
    section = raw["improved"]
    for dotted, value in raw["profiles"]["quick"].items():
        stage, *keys, last = dotted.split(".")
        if stage == "improved":
            node = section
            for key in keys:
                node = node[key]
            node[last] = value
    outs = project / "reports/improved"
    outs.mkdir(parents=True)
    for name in ("metrics.json", "history.csv"):
        shutil.copy(PROJECT_ROOT / "reports/baseline" / name, outs / name)
    lock = {
        "schema": "2.0",
        "stages": {
            "improved": {
                "params": {"params.yaml": {"improved": section}},
                "outs": [
                    {
                        "path": f"reports/improved/{name}",
                        "hash": "md5",
                        "md5": hashlib.md5((outs / name).read_bytes()).hexdigest(),
                    }
                    for name in ("metrics.json", "history.csv")
                ],
            }
        },
    }
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    from src.seeds import spread  # a full-size seed record beside the smoke run: not shown

    runs = [spread.SeedRun(f"improved-seed{k}", k, 0.81 + k / 100, "success") for k in range(3)]
    spread.write_record(spread.Spread("improved", runs, commit="ab" * 20), root=project)

    inputs = report_inputs.load_inputs(
        project, load_params(project / "params.yaml"), allow_missing=True
    )
    improved = inputs.stages["improved"]
    assert improved.profile == "quick"
    assert improved.smoke == ("profile quick", "trained on 10,000 images")
    text = report.render_report(inputs, command="python -m pipelines.report --allow-missing")
    text = text.markdown
    assert "> **Smoke run, not results.** `improved`: profile quick, trained on 10,000 images." in (
        text
    )
    assert "These are profile `quick`'s values (`profiles.quick` in params.yaml" in text
    assert "Not comparable with the course: profile quick; trained on 10,000 images." in text
    assert "Over seeds" not in text and "0.8200" not in text  # full-size spread: not here
    summary = {r["Stage"].strip("`"): r for r in _table(_section(text, "## Summary"))}
    assert summary["improved"]["Test accuracy over seeds"] == "—"
    assert "`baseline`, `improved`, `tuned`, `resnet`, `lite` stages wrote" in text


def test_the_report_names_a_command_that_reruns_what_made_it(monkeypatch):
    from pipelines.report import invocation

    monkeypatch.setenv("DVC_STAGE", "report")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert invocation([]) == "dvc repro report"
    monkeypatch.setenv("DVC_EXP_NAME", "quick")  # the quick run: its own command, not
    assert invocation([]) == "python -m src.quick -- -f"  # `dvc exp run` of full params
    monkeypatch.setenv("DVC_EXP_NAME", "mine")
    assert "dvc params diff HEAD mine" in invocation([])


def test_a_rerender_removes_only_figures_the_last_report_linked(project, monkeypatch):
    from pipelines import report as stage

    monkeypatch.setenv("CIFAR_MLOPS_TRACKING", "off")
    figures = project / "reports" / "report"
    figures.mkdir(parents=True)
    for name in ("old_stage.png", "mine.png"):
        (figures / name).write_bytes(b"png")
    (project / "reports" / "report.md").write_text("![old](report/old_stage.png)\n")
    stage.main(["--allow-missing"])  # renders no figures: nothing has run
    assert sorted(p.name for p in figures.iterdir()) == ["mine.png"]


def test_report_stage_end_to_end(prepared):
    from pipelines import report as stage
    from pipelines import train

    # the fixture's params (weights none, 32 px, 1 epoch), and only fc of the transfer
    # networks trains: the report reads the same outputs in a third of the time
    # and a study of the test's own, whatever params.yaml's tune.study is
    update_params(
        prepared,
        **{"resnet.trainable": ["fc"], "lite.trainable": ["fc"], "tune.study": "cifar10-improved"},
    )
    tune = prepared / "reports/tune/cifar10-improved"  # as src.tune.write_best_params lays it out
    tune.mkdir(parents=True)
    (tune / "best_params.yaml").write_text(  # what the tuned stage trains
        "# Best trial of Optuna study 'cifar10-improved': trial 7, val_accuracy 0.6123\n"
        "knobs:\n  lr: 0.02\n  dropout: 0.1\n"
    )
    stages = [s.name for s in TRAINING_STAGES]
    for name in stages:
        train.main([name, "--no-progress"])
    from pipelines import figures

    figures.main(["baseline"])  # any PNG will do
    shutil.copy(
        prepared / "reports/baseline/learning_curves.png", tune / "optimization_history.png"
    )
    discussion = Layout(prepared).discussion
    shutil.copy(Layout(PROJECT_ROOT).discussion, discussion)
    discussion.write_text(
        discussion.read_text().replace(
            "## 3f: overfitting\n", "## 3f: overfitting\n\nMy 3f text.\n"
        )
    )

    stage.main([])
    text = (prepared / "reports/report.md").read_text()
    metrics = {s: json.loads((prepared / f"reports/{s}/metrics.json").read_text()) for s in stages}

    for heading in HEADINGS:
        assert f"\n{heading}\n" in f"\n{text}", heading
    # the data source as the manifest names it: kind and sha256
    assert "source kind `official-archive`, sha256 `" in text
    for info in TRAINING_STAGES:
        if info.name in stages:
            for sub in STAGE_SUBSECTIONS:
                assert f"### {info.heading}: {sub}\n" in text

    # every figure it links exists, and every stage's learning curves are among them
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    expected = {"summary_accuracy.png", "task3d_loss_comparison.png", "tuned_search_curves.png"}
    expected |= {f"{s}_learning_curves.png" for s in stages}
    expected.add("tune-cifar10-improved-optimization_history.png")  # copied: a DVC output
    assert {link.split("/")[-1] for link in links} == expected
    for link in links:
        assert (prepared / "reports" / link).stat().st_size > 10_000, link

    # the numbers are metrics.json's, in the summary and in each stage's table
    summary = {r["Stage"].strip("`"): r for r in _table(_section(text, "## Summary"))}
    assert sorted(summary) == sorted(stages)
    columns = {
        "Training accuracy": "final_train_accuracy",
        "Validation accuracy": "final_val_accuracy",
        "Test accuracy": "test_accuracy",
        "Test loss": "test_loss",
    }
    for name in stages:
        for column, key in columns.items():
            assert summary[name][column] == f"{metrics[name][key]:.4f}", (name, column)
        heading = get_stage(name).heading
        split_rows = _table(_section(text, f"### {heading}: accuracy and loss"))
        test_row = next(r for r in split_rows if r["Split"] == "Test")
        assert test_row["Accuracy"] == f"{metrics[name]['test_accuracy']:.4f}"
        assert test_row["Loss"] == f"{metrics[name]['test_loss']:.4f}"
        course = REFERENCE.get(name, {}).get("test_accuracy")  # the search's stage has none
        assert test_row["Course report accuracy"] == ("—" if course is None else f"{course:.3f}")
        assert f"MLflow run `{metrics[name]['mlflow_run_id']}`" in text
    assert text.count("MLflow and model file agree") == len(stages)

    # task 1g counts the network the baseline stage trained (the fixture's narrow one)
    tiny = build_cnn(load_params(prepared / "params.yaml").baseline.model)
    total = sum(p.numel() for p in tiny.parameters())
    assert f"Total **{total:,}** parameters; course report: 390,410 (**different**" in text
    assert summary["baseline"]["Parameters"] == f"{total:,}"

    # provenance: a random-init ResNet is never passed off as pretrained
    assert "Weights: `none`, **not pretrained**" in text
    # the banner says so first, with profiles.smoke_reasons' words (the ones that keep
    # the version from @champion), and the stage's section again
    assert (
        "> **Smoke run, not results.** `resnet`: random-init backbone; "
        "`lite`: random-init backbone." in text
    )
    assert "Not comparable with the course: random-init backbone." in text
    assert "Partial report" not in text and "Without model files" not in text
    assert "Generated by `python -m pipelines.report" in text and "profile applied" not in text
    tuning = _section(text, "### Task 3 (tuned): the search")
    assert "`reports/tune/cifar10-improved/best_params.yaml`" in tuning
    assert "trial 7, val_accuracy 0.6123" in tuning
    assert "| `lr` | float 0.005 to 0.3, log scale | 0.02 |" in tuning
    assert "`reports/tune/cifar10-improved/trials.csv` is not here" in tuning
    designs = _section(text, "### Task 3 (tuned): the search's design against the hand design")
    rows = {r["Measure"]: r for r in _table(designs)}
    assert rows["Learning rate"]["tuned (search)"] == "0.02"
    assert rows["Test accuracy"]["improved (hand)"] == f"{metrics['improved']['test_accuracy']:.4f}"

    # the student's text sits in its marked place; the others say where to write
    assert "My 3f text." in _section(text, "### Task 3f: overfitting (discussion)")
    place = _section(text, "### Task 3c: what helped and what did not (discussion)")
    assert "<!-- discussion 3c begins" in place and "<!-- discussion 3c ends -->" in place
    assert "Not written yet: write it in `reports/discussion.md`, under `## 3c`" in place

    # report.html: the same content, every figure inlined, nothing fetched from anywhere
    page = (prepared / "reports/report.html").read_text()
    fetched = fetched_urls(page)
    assert len(fetched) == len(links) and all(
        u.startswith("data:image/png;base64,") for u in fetched
    )
    assert "My 3f text." in page and "trial 7, val_accuracy 0.6123" in page
    assert f"{metrics['baseline']['test_accuracy']:.4f}" in page

    # regenerating keeps the text (it lives in the declared dependency, not in report.md)
    (prepared / "reports/report.md").unlink()  # as DVC does before it reruns the stage
    stage.main([])
    again = (prepared / "reports/report.md").read_text()
    assert "My 3f text." in _section(again, "### Task 3f: overfitting (discussion)")

    # one MLflow run `report` with the report, its figures and the source run ids
    mlflow.set_tracking_uri(f"sqlite:///{prepared}/mlflow.db")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("cifar10")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.run_name = 'report'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(runs) == 2  # rendered twice above
    run = runs[0]
    assert run.info.status == "FINISHED"
    for name in stages:
        assert run.data.tags[f"source_run.{name}"] == metrics[name]["mlflow_run_id"]
    assert run.data.tags["resnet_pretrained"] == "false"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.html", "report"} <= artifacts
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert logged == {f"report/{name}" for name in expected}


def _interrupt_stage_at(monkeypatch, name: str, when) -> None:
    """Run the baseline stage with `src.artifacts.<name>` interrupted when `when(args)`."""
    from pipelines import train
    from src import artifacts as stage_module

    real = getattr(stage_module, name)

    def interrupted(*args, **kwargs):
        if when(args):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(stage_module, name, interrupted)
        with pytest.raises(SystemExit) as info:
            train.main(["baseline", "--no-progress"])
    assert info.value.code == 130


def test_report_refuses_outputs_of_two_runs(prepared, monkeypatch, capsys):
    from pipelines import report as report_stage
    from pipelines import train

    def load():
        return report_inputs.load_inputs(
            prepared, load_params(prepared / "params.yaml"), allow_missing=True
        )

    train.main(["baseline", "--no-progress"])
    assert load().stages["baseline"] is not None  # one run's outputs: accepted

    # killed after the new model file, before metrics.json: two runs side by side
    update_params(prepared, **{"baseline.train.lr": 0.02})
    _interrupt_stage_at(monkeypatch, "atomic_write_json", lambda a: a[0].name == "metrics.json")
    with pytest.raises(report_inputs.ReportInputError) as info:
        load()
    message = str(info.value)
    assert "models/baseline.pt" in message and "reports/baseline/metrics.json" in message
    assert "Rerun `dvc repro baseline`" in message
    assert "MLflow run" in message and "test_loss" in message
    with pytest.raises(SystemExit) as exit_info:  # the stage: one clear line, exit 1
        report_stage.main(["--allow-missing"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "dvc repro baseline" in err and "Traceback" not in err
    assert "--allow-missing" not in err  # it renders nothing of two runs either

    # killed before the model file: a new history.csv beside the old model and metrics
    train.main(["baseline", "--no-progress"])
    load()
    update_params(prepared, **{"baseline.train.lr": 0.03})
    _interrupt_stage_at(monkeypatch, "write_model_file", lambda a: True)
    with pytest.raises(report_inputs.ReportInputError, match="history.csv is not the one"):
        load()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium (apt-get install -y chromium)")
def test_report_html_opens_offline_in_chromium(tmp_path):
    """A real browser opens the page with every request sent to a local proxy that
    answers nothing: the report makes none and still shows its figure; a page with one
    remote image (the control) does reach the proxy. Chromium's own background calls
    (Google's time and update services) are not the page's and are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([0, 1, 2], [2.0, 1.2, 0.9], linewidth=4)
    figure.savefig(tmp_path / "curves.png")
    plt.close(figure)
    markdown = "# Offline\n\nText and a figure.\n\n![curves](report/curves.png)\n"
    images = {"report/curves.png": (tmp_path / "curves.png").read_bytes()}
    page = tmp_path / "report.html"
    page.write_text(report_html.render_html(markdown, images, "Offline"))
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    requests: list[str] = []  # the hosts asked for
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    line = conn.recv(4096).decode("latin-1").split("\r\n")[0]
                except OSError:
                    line = "? ?"
                target = line.split(" ")[1] if " " in line else line
                host = re.sub(r"^\w+://", "", target).split("/")[0].split(":")[0]
                if not re.search(r"(^|\.)(google\.com|googleapis\.com|gvt1\.com)$", host):
                    requests.append(host)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def open_page(path, shot):
        return subprocess.run(
            [
                _chromium(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--proxy-server=http://127.0.0.1:{server.getsockname()[1]}",
                "--proxy-bypass-list=<-loopback>",
                "--window-size=1000,800",
                "--virtual-time-budget=5000",
                f"--screenshot={shot}",
                path.as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )

    try:
        proc = open_page(page, tmp_path / "report.png")
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert requests == [], requests
        proc = open_page(control, tmp_path / "control.png")
        assert set(requests) == {"example.invalid"}, (
            "the control's remote image never reached the proxy"
        )
    finally:
        done.set()
        thread.join()
        server.close()
    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("L"), dtype=float)
    assert pixels.std() > 5  # not a blank page: text and the plotted curve
    assert (pixels < 128).mean() > 0.002


def test_the_network_is_rebuilt_once_per_config():
    """The summary, the stage's architecture and task 1g count one rebuilt network."""
    baseline = to_dict(load_params(PROJECT_ROOT / "params.yaml").baseline)
    model, size = stage_network(baseline, "baseline")
    assert stage_network(dict(baseline), "baseline")[0] is model and size == 32
    assert n_parameters(model) == REFERENCE["baseline"]["n_parameters"]


def test_summary_cells_of_a_stage_without_a_course_value_read_as_dashes():
    """A stage the course has no figure for (tuned) sits in float columns beside stages
    that have one: pandas holds its missing numbers as NaN, and they read as dashes."""
    import pandas as pd

    from src.report.formats import format_frame
    from src.report.sections.overview import SUMMARY_FORMATS

    frame = pd.DataFrame(
        [
            {"Course test accuracy": 0.811, "Test − course": 0.0068, "Training time (s)": 1183.6},
            {"Course test accuracy": None, "Test − course": None, "Training time (s)": None},
        ]
    )
    formats = {k: SUMMARY_FORMATS[k] for k in frame.columns}
    cells = format_frame(frame, formats).to_dict("records")
    assert cells[0] == {
        "Course test accuracy": "0.811",
        "Test − course": "+0.0068",
        "Training time (s)": "1,184",
    }
    assert set(cells[1].values()) == {"—"}
