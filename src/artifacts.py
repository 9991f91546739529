"""Every file the stages write and read back: one writer and one reader per format.

Writes are atomic (a temporary sibling, then rename): a kill never leaves half a
file that looks complete. Torch files are read with `weights_only=True`: a file
that needs arbitrary unpickling (which could run code) is refused, naming it.

Outputs of training stage <name> (folders: `src.config.Layout`, fixed; dvc.yaml names the
same files), in the order the stage writes them:
    reports/<name>/history.csv       one row per validation (DVC plots)
    reports/<name>/learning_curves.png, confusion_matrix.png
    models/<name>.pt                 the model file: weights + resolved config + final
                                     metrics + MLflow run id + sha256 of history.csv
    reports/<name>/metrics.json      final figures, timings, MLflow run id (DVC metrics)
    checkpoints/<name>.pt            resumable training state while it runs (not a DVC
                                     out: DVC deletes outs before a stage runs)
Every one of them but the checkpoint is written after training ends: a `dvc repro` that
deletes the outs while an earlier run of the stage still trains (see `src.stage_lock`)
takes nothing that run needs.
A kill between two writes leaves files of two runs side by side; the links (run id
and final figures shared with metrics.json, the history digest) let the report
refuse such a mix (`src.report.load_inputs`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config import Layout, config_hash, to_dict
from src.errors import WeightsError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
FIGURE_DPI = 120

_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------- atomic writes


def temp_sibling(path: Path) -> bool:
    """Whether `path` is what `atomic_write_bytes` leaves when killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------- torch files


def save_torch(obj: object, path: Path) -> None:
    """`torch.save` of tensors and plain containers, atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path, refused: type[Exception] = WeightsError, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` on the CPU. A file that needs arbitrary unpickling
    raises `refused` naming what it asks for (nothing in it runs); a missing, torn or
    foreign file raises WeightsError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except pickle.UnpicklingError as exc:  # weights_only refused what the pickle asks for
        found = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(exc))
        asks = found.group(1).strip() if found else ""
        if not asks:  # garbage rather than a request for some class
            raise WeightsError(f"{path}: corrupt or not a readable PyTorch file") from None
        raise refused(
            f"{path}: refused: reading it needs arbitrary unpickling, which could run code; "
            f"only tensors and plain containers are read ({asks})"
        ) from None
    except Exception as exc:
        raise WeightsError(f"{path}: corrupt or not a readable PyTorch file ({exc})") from exc


def load_state_strict(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict with an error that says which keys or shapes differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"shape mismatch {shapes[:3]}" if shapes else "",
            )
            if part
        )
        raise WeightsError(f"{source}: weights are for another architecture ({details})")
    model.load_state_dict(state)


# --------------------------------------------------------------------------- stage outputs


@dataclass(frozen=True)
class StagePaths:
    """Where stage `stage` writes, under `root` (default: the project root). The data
    stage uses `reports` and `metrics` only."""

    model: Path
    reports: Path
    checkpoint: Path

    @classmethod
    def for_stage(cls, stage: str, root: Path | None = None) -> StagePaths:
        layout = Layout(Path(root)) if root is not None else Layout()
        return cls(
            model=layout.models / f"{stage}.pt",
            reports=layout.reports / stage,
            checkpoint=layout.checkpoints / f"{stage}.pt",
        )

    @property
    def history(self) -> Path:
        return self.reports / HISTORY_FILE

    @property
    def metrics(self) -> Path:
        return self.reports / METRICS_FILE

    @property
    def learning_curves(self) -> Path:
        return self.reports / "learning_curves.png"

    @property
    def confusion_matrix(self) -> Path:
        return self.reports / "confusion_matrix.png"

    def linked(self) -> dict[str, Path]:
        """The outputs that must come from one run (the report checks their links)."""
        return {"metrics": self.metrics, "history": self.history, "model": self.model}


def write_history(path: Path, rows: list[dict]) -> str:
    """history.csv, one row per validation; returns its sha256 (the model file keeps it)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    payload = buffer.getvalue().encode()
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def read_history(path: Path) -> pd.DataFrame:
    """history.csv as a DataFrame (OSError or ValueError when unreadable)."""
    import pandas as pd

    return pd.read_csv(path)


def write_figure(figure: Any, path: Path) -> Path:
    """A matplotlib figure as PNG, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------- the model file


def write_model_file(
    path: Path,
    model: nn.Module,
    stage: str,
    config: Any,
    metrics: dict,
    run_id: str | None = None,
    history_sha256: str | None = None,
) -> None:
    """Weights (float32 on the CPU, as trained) with what ties them to the stage's other
    outputs: the resolved config, the final figures and MLflow run id (as in
    metrics.json) and history.csv's sha256."""
    save_torch(
        {
            "stage": stage,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": to_dict(config),
            "config_hash": config_hash(config),
            "metrics": metrics,
            "mlflow_run_id": run_id,
            "history_sha256": history_sha256,
        },
        path,
    )


def read_model_file(path: Path, mmap: bool = False) -> dict:
    """The model file's dict (WeightsError when it is missing or not one); with `mmap`
    the tensors are memory-mapped, not read (for the config and metrics alone)."""
    payload = load_torch(path, mmap=mmap)
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise WeightsError(f"{path}: not a model file of this project (no 'model' entry)")
    return payload


def read_weights(path: Path) -> dict:
    """A state dict from a plain weights file (torchvision's, say) or from this
    project's model file; WeightsError when it is neither."""
    state = load_torch(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a model file (`write_model_file`)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_model_file(path: Path, model: nn.Module) -> dict:
    """Load the weights of the model file at `path` into `model`; returns the file's dict."""
    payload = read_model_file(path)
    load_state_strict(model, payload["model"], str(path))
    return payload
