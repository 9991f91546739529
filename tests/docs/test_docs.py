"""The README and docs/ tell the truth: figures come from the committed files they cite,
no commit hashes or issue numbers in prose, the README stays a front page."""

from __future__ import annotations

import json
import re

import pytest

from src.config.layout import PROJECT_ROOT
from src.report import results
from tools import results as results_tool

DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))


def test_the_results_page_and_readme_table_are_generated_from_the_committed_files(capsys):
    for path, text in results_tool.expected(PROJECT_ROOT).items():
        assert (PROJECT_ROOT / path).read_text() == text, f"{path}: run python -m tools.results"
    assert results_tool.main(["--check"]) == 0, capsys.readouterr().err


def test_the_generated_figures_are_the_files_values(tmp_path):
    """A changed metrics file changes the page: nothing in it is typed."""
    for rel in ("reports/baseline", "reports/seeds"):
        (tmp_path / rel).mkdir(parents=True)
    metrics = json.loads((PROJECT_ROOT / "reports/baseline/metrics.json").read_text())
    metrics["test_accuracy"] = 0.6543
    (tmp_path / "reports/baseline/metrics.json").write_text(json.dumps(metrics))
    page = results.results_page(tmp_path)
    assert "| baseline (2) | 0.756 | 0.6543 |" in page
    assert "| improved (3) | 0.811 | not run |" in page
    assert "No seed records yet" in page and "No benchmark recorded" in page


def _committed_values() -> set[str]:
    values: set[str] = set()
    files = [
        *PROJECT_ROOT.glob("reports/*/metrics.json"),
        *PROJECT_ROOT.glob("reports/seeds/*"),
        *PROJECT_ROOT.glob("reports/tune/*/*.csv"),  # study scores, full-size retrains
    ]
    for path in files:
        for number in re.findall(r"-?\d+\.\d+", path.read_text()):
            values.add(f"{float(number):.4f}")
    return values


@pytest.mark.parametrize("path", [PROJECT_ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_four_decimal_figure_is_a_committed_value(path):
    """Accuracies and losses are written with 4 decimals: each one in the docs must be a
    value of a committed metrics, seed or study file (mean and std included)."""
    found = set(re.findall(r"\b0\.\d{4}\b", path.read_text()))
    assert found <= _committed_values(), sorted(found - _committed_values())


@pytest.mark.parametrize("path", [PROJECT_ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_no_commit_hashes_or_issue_numbers_in_prose(path):
    text = path.read_text()
    assert not re.search(r"`[0-9a-f]{7,40}`", text)
    assert not re.search(r"\bissues? #?\d+", text, re.IGNORECASE)


def test_the_readme_is_a_front_page_that_links_every_doc():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for doc in DOCS:
        assert f"(docs/{doc.name}" in readme, doc.name
    ci = (PROJECT_ROOT / ".ci/run").read_text()
    for command in ("ruff check .", "python -m pytest"):  # the README's test commands
        assert f"\n{command}\n" in ci and f"\n{command}\n" in readme
