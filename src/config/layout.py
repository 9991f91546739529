"""Where the project is and where its stages read and write: fixed folders, DVC's temp copies.

`project_root()` is where params.yaml is read and outputs are written, `repo_root()` the
repository a run belongs to (they differ in DVC's temporary experiment copies), and
`Layout` the fixed folders under it, which dvc.yaml spells the same.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from src.config.schema import SOURCE_ENV_VAR, Params
from src.runtime.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def temp_dir_pattern(name: str) -> re.Pattern:
    """Temporary siblings of a prepared data folder `name` (src.data.prepare):
    `.<name>.tmp-XXXXXXXX` while writing, `.<name>.old-XXXXXXXX` while swapping,
    `.<name>.XXXXXXXX` from before they had a tag; XXXXXXXX is tempfile.mkdtemp's suffix."""
    return re.compile(rf"\.{re.escape(name)}\.(?:tmp-|old-)?[a-z0-9_]{{8}}")


def check_source(params: Params) -> None:
    """A local `data.source` must not lie inside the prepared data folder, which the data
    stage replaces, nor inside its temporary copies (symlinks resolved)."""
    source = params.data.source
    if source == "official":
        return
    data = Layout().data.resolve()
    where = f" (from ${SOURCE_ENV_VAR})" if os.environ.get(SOURCE_ENV_VAR) else ""
    path = Path(source).expanduser().resolve()  # as src.data.sources reads it
    temp = temp_dir_pattern(data.name)
    if path.is_relative_to(data) or (
        path.is_relative_to(data.parent)
        and path != data.parent
        and temp.fullmatch(path.relative_to(data.parent).parts[0])
    ):
        raise ConfigError(
            "data.source",
            f"{source!r}{where} lies inside {data} or its temporary copies, which the data "
            "stage replaces; keep the source elsewhere",
        )


def resolve_path(path: str | Path) -> Path:
    """Project-relative paths resolve against the project (or DVC) root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def project_root() -> Path:
    """Where params.yaml is read and outputs are written: `DVC_ROOT` when DVC runs the
    stage, the checkout this code is in otherwise. DVC runs `--temp` and queued
    experiments in a temporary copy (<repo>/.dvc/tmp/exps/.../tmpXXXX) but sets `DVC_ROOT`
    to the original repository there: the copy, where the stage runs, is the project."""
    dvc_root = os.environ.get("DVC_ROOT")
    if not dvc_root:
        return PROJECT_ROOT
    temp = Path(dvc_root).resolve().joinpath(*DVC_TEMP_EXPS)
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(temp):
        for folder in (cwd, *cwd.parents):
            if folder == temp:
                break
            if (folder / ".dvc").is_dir():
                return folder
    return Path(dvc_root)


# Where DVC runs `--temp` and queued experiments: <repo>/.dvc/tmp/exps/standalone/tmpXXXX
# (dvc/repo/experiments/executor/local.py: TempDirExecutor under repo.tmp_dir / "exps").
DVC_TEMP_EXPS = (".dvc", "tmp", "exps")


def repo_root() -> Path:
    """The repository a stage belongs to: `project_root()`, except in DVC's temporary copy
    for an experiment (<repo>/.dvc/tmp/exps/.../tmpXXXX), which is thrown away afterwards;
    then the repository that copy was made from. MLflow runs land in its store."""
    root = project_root().resolve()
    parts = root.parts
    for i in range(len(parts) - len(DVC_TEMP_EXPS), 0, -1):
        if parts[i : i + len(DVC_TEMP_EXPS)] == DVC_TEMP_EXPS:
            return Path(*parts[:i])
    return root


@dataclass(frozen=True)
class Layout:
    """Where the stages read and write: fixed folders under `root` (the project root by
    default). Not params: DVC deletes a stage's declared outs *before* it runs the
    stage's command, so a params value that moved an out could aim that deletion at any
    folder before the stage's own checks ran. dvc.yaml spells these same paths
    literally; tests/tools/test_dvc_deps.py checks the two agree."""

    root: Path = field(default_factory=lambda: project_root())

    @property
    def data(self) -> Path:
        """Prepared arrays + manifest.json: the `download` stage's out."""
        return self.root / "data" / "cifar10"

    @property
    def raw(self) -> Path:
        """Downloaded archives: not an out, so kept across reruns."""
        return self.root / "data" / "raw"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def tune_reports(self) -> Path:
        """`python -m src.tune`'s results, one folder per study (best_params.yaml, figures)."""
        return self.reports / "tune"

    @property
    def seeds(self) -> Path:
        """`python -m src.seeds`'s records, one <stage>.json per training stage (git-tracked)."""
        return self.reports / "seeds"

    @property
    def discussion(self) -> Path:
        """The student's text for the report, one `## <id>` section per place (git-tracked)."""
        return self.reports / "discussion.md"

    @property
    def fp32_runs(self) -> Path:
        """Full-size runs computed in float32, <stage>/metrics.json and <stage>/history.csv
        as the stage wrote them: the report compares the current runs' numerics with them."""
        return self.reports / "numerics" / "fp32"

    @property
    def report_md(self) -> Path:
        """The `report` stage's markdown report (its figures in a folder beside it)."""
        return self.reports / "report.md"

    @property
    def report_html(self) -> Path:
        """The same report as one self-contained HTML file."""
        return self.reports / "report.html"

    @property
    def benchmark(self) -> Path:
        """Measured training rates (`python -m benchmarks.bench --json`), git-tracked."""
        return self.root / "benchmarks" / "cpu.json"

    @property
    def checkpoints(self) -> Path:
        """Resumable training state and the stages' lock files: never an out."""
        return self.root / "checkpoints"

    def folders(self) -> list[Path]:
        return [self.data, self.raw, self.models, self.reports, self.checkpoints]

    def check_inside(self) -> None:
        """ConfigError naming the first folder the stages write (or a folder in `models/`
        or `reports/`) whose real path, symlinks resolved, lies outside the project: a
        stage would write, and DVC delete, at the link's target."""
        root = self.root.resolve()
        folders = list(self.folders())
        for parent in (self.models, self.reports):
            if parent.is_dir():
                folders += sorted(p for p in parent.iterdir() if p.is_dir())
        for folder in folders:
            real = folder.resolve()
            if not real.is_relative_to(root):
                raise ConfigError(
                    "",
                    f"{folder} resolves to {real}, outside the project {root} (a symlink); "
                    "the stages write and DVC deletes only inside the project: make it a "
                    "folder of the project (data on another disk: DVC's cache, "
                    "docs/troubleshooting.md)",
                )
