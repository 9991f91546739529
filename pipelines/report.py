"""Stage `report`: reports/report.md, reports/report.html (the same, self-contained) and
their figures, from every stage's outputs, the tuning summaries and the student's text.

python -m pipelines.report                   (dvc repro report)
python -m pipelines.report --allow-missing   render what exists; missing stages say so
                                             (a partial pipeline: DVC runs no stage whose
                                             dependency is missing)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from src.artifacts import atomic_write_bytes
from src.config.layout import Layout, project_root
from src.config.load import load_params
from src.report import build as report
from src.report import html as report_html
from src.report.formats import FIGURE_DIR
from src.report.inputs import load_inputs
from src.runtime.entry import guarded
from src.tracking.runs import run_summary, stage_run, write_figure

STAGE = "report"
QUICK_EXPERIMENT = "quick"  # src.quick's default name (src.quick imports nothing here)


def linked_figures(report_md: Path) -> set[str]:
    """Names of the figures the report at `report_md` links (none if it does not exist)."""
    try:
        text = report_md.read_text()
    except OSError:
        return set()
    pattern = rf"\]\({re.escape(FIGURE_DIR)}/([\w.-]+\.png)\)"
    return set(re.findall(pattern, text))


def invocation(argv: list[str]) -> str:
    """The command that is generating the report, as a reader would type it again: the
    DVC stage (DVC sets DVC_STAGE, and DVC_EXP_NAME in an experiment) or this module. An
    experiment is rerun with its own `-S` values, which only its maker knows: the quick
    run's command, else where DVC lists them."""
    stage = os.environ.get("DVC_STAGE")
    if stage:
        experiment = os.environ.get("DVC_EXP_NAME")
        if experiment == QUICK_EXPERIMENT:
            return "python -m src.quick -- -f"
        if experiment:
            return (
                f"dvc exp run -f -n {experiment} -S ... "
                f"(its values: dvc params diff HEAD {experiment})"
            )
        return f"dvc repro {stage}"
    return " ".join(["python -m pipelines.report", *argv])


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="render even when some stage has not run (its section says so)",
    )
    args = parser.parse_args(argv)
    command = invocation(list(argv) if argv is not None else sys.argv[1:])

    params = load_params()
    inputs = load_inputs(project_root(), params, allow_missing=args.allow_missing)
    runs = {
        stage: run_summary(outputs.metrics.get("mlflow_run_id"))
        for stage, outputs in inputs.stages.items()
        if outputs is not None
    }
    rendered = report.render_report(inputs, runs, command=command)

    layout = Layout()
    out = layout.report_md
    figure_dir = out.parent / FIGURE_DIR
    previous = linked_figures(out)  # only figures an earlier render wrote are ever removed
    logged = {"common": params.common}
    with stage_run(
        STAGE, logged, experiment=params.common.experiment, tags=rendered.tags
    ) as run:
        for name, figure in rendered.figures.items():
            write_figure(figure, figure_dir / name, run, f"{FIGURE_DIR}/{name}")
        for name, source in rendered.copies.items():
            atomic_write_bytes(figure_dir / name, (project_root() / source).read_bytes())
            run.log_artifact(figure_dir / name, FIGURE_DIR)
        written = set(rendered.figures) | set(rendered.copies)
        for stale in previous - written:
            (figure_dir / stale).unlink(missing_ok=True)
        atomic_write_bytes(out, rendered.markdown.encode())
        images = {f"{FIGURE_DIR}/{n}": (figure_dir / n).read_bytes() for n in written}
        title = rendered.markdown.splitlines()[0].lstrip("# ")
        page = report_html.render_html(rendered.markdown, images, title)
        html_out = layout.report_html
        atomic_write_bytes(html_out, page.encode())
        run.log_artifact(out)
        run.log_artifact(html_out)
    print(f"[{STAGE}] wrote {out}, {html_out.name} and {len(written)} figures in {figure_dir}")


if __name__ == "__main__":
    main()
