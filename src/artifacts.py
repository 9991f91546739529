"""Every file the stages write and read back: one writer and one reader per format.

Writes are atomic (a temporary sibling, then rename): a kill never leaves half a
file that looks complete. Torch files are read with `weights_only=True`: a file whose
pickle names globals that reader does not build (which could run code) is refused, naming
it and them; the refusal is recognised by disassembling the pickle, never by the wording
of torch's message.

Outputs of training stage <name> (folders: `src.config.layout.Layout`, fixed; dvc.yaml names
the same files), in the order the stage writes them:
    reports/<name>/history.csv       one row per validation (DVC plots)
    reports/<name>/predictions.csv   the test set: actual,predicted class name per image
    models/<name>.pt                 the model file: weights + resolved config + final
                                     metrics + MLflow run id + sha256 of history.csv
    reports/<name>/metrics.json      final figures, timings, MLflow run id (DVC metrics)
    checkpoints/<name>.pt            resumable training state while it runs (not a DVC
                                     out: DVC deletes outs before a stage runs)
Every one of them but the checkpoint is written after training ends: a `dvc repro` that
deletes the outs while an earlier run of the stage still trains (see `src.runner.lock`)
takes nothing that run needs. The stage's figures (learning_curves.png,
confusion_matrix.png) are drawn from these files by its figures stage (`pipelines.figures`).
A kill between two writes leaves files of two runs side by side; the links (run id
and final figures shared with metrics.json, the history digest) let the report
refuse such a mix (`src.report.inputs.load_inputs`).
"""

from __future__ import annotations

import _compat_pickle
import csv
import hashlib
import io
import json
import os
import pickletools
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config.cifar import CIFAR10_CLASSES
from src.config.layout import Layout
from src.config.typed import config_hash, to_dict
from src.runtime.errors import WeightsError

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
FIGURE_DPI = 120

_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------- atomic writes


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
    """`torch.load(weights_only=True)` on the CPU. A file whose pickle names globals that
    reader does not build (functions a crafted file would call) raises `refused` naming
    the file and those globals: nothing in it runs, and the file is left as it is. A
    missing, torn or foreign file raises WeightsError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise WeightsError(f"{path} does not exist") from None
    except Exception as exc:
        # What the file is, not how torch words its refusal: the globals its pickle names
        asks = refused_globals(Path(path))
        if asks:
            raise refused(
                f"{path}: refused: reading it needs arbitrary unpickling, which could run "
                f"code; only tensors and plain containers are read (it names {', '.join(asks)})"
            ) from None
        reason = _first_reason(exc)
        raise WeightsError(f"{path}: corrupt or not a readable PyTorch file ({reason})") from None


def _first_reason(exc: Exception) -> str:
    """The first sentence of torch's message that says what went wrong, not its advice."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(advice)]
    return (useful or lines or [type(exc).__name__])[0].split(". ")[0]


# torch's pre-1.6 (non-zip) format: magic number, protocol, system info, the object and its
# storage keys are five pickles in a row, then raw storage bytes
_LEGACY_PICKLES = 5
_STRING_OPS = frozenset(
    {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING"}
    | {"SHORT_BINSTRING"}
)


def refused_globals(path: Path) -> list[str]:
    """The globals a torch file's pickle names that `weights_only` does not build, found by
    disassembling the pickle (nothing in it is imported or run); [] for a file without
    such a pickle (torn, garbage, or plain tensors). Names as Python 3 resolves them."""
    import torch

    try:  # the zip format with the opcodes torch.save writes
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # the legacy format, or opcodes torch's disassembler does not read
        names = _pickle_globals(path) - _weights_only_globals()
    return sorted({_python3_name(name) for name in names})


def _pickle_globals(path: Path) -> set[str]:
    """Every global the pickle(s) of a torch file name (GLOBAL, INST, STACK_GLOBAL and
    extension-registry opcodes), read with `pickletools`; as far as the pickle parses."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                records = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not records:
                    return set()
                stream, count = io.BytesIO(archive.read(records[0])), 1
        else:
            stream, count = io.BytesIO(Path(path).read_bytes()), _LEGACY_PICKLES
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return set()
    names: set[str] = set()
    for _ in range(count):
        if not _scan_one_pickle(stream, names):
            break
    return names


def _scan_one_pickle(stream: io.BytesIO, names: set[str]) -> bool:
    """Add the globals of the pickle at `stream`'s position to `names`; whether it parsed
    to its STOP (the stream then stands after it)."""
    strings: list[str | None] = []  # what string pushes and memo reads put on the stack
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _pos in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                names.add(".".join(str(arg).split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                module, name = ([None, None] + strings)[-2:]
                resolved = isinstance(module, str) and isinstance(name, str)
                names.add(f"{module}.{name}" if resolved else "<a global built at load time>")
            elif op.name.startswith("EXT"):
                names.add(f"<copyreg extension {arg}>")
            elif op.name in _STRING_OPS:
                strings.append(str(arg))
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = strings[-1] if strings else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                strings.append(memo.get(arg))
            elif op.name == "STOP":
                return True
    except Exception:  # EOF, garbage, or the raw bytes after a legacy file's pickles
        return False
    return False


def _weights_only_globals() -> set[str]:
    """The globals torch's weights_only reader builds by default (left out of a refusal)."""
    try:  # no public name for the default list; without it every global is named
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:
        return set()
    return set(_get_allowed_globals())


def _python3_name(name: str) -> str:
    """'commands.Popen' (how protocol 2 spells subprocess.Popen) -> 'subprocess.Popen'."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        return ".".join(_compat_pickle.NAME_MAPPING[(module, attr)])
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}" if module else name


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
    def predictions(self) -> Path:
        return self.reports / PREDICTIONS_FILE

    @property
    def learning_curves(self) -> Path:
        return self.reports / "learning_curves.png"

    @property
    def confusion_matrix(self) -> Path:
        return self.reports / "confusion_matrix.png"

    @property
    def samples(self) -> Path:
        """The data stage's grid of training images (stage `figures-download`)."""
        return self.reports / "samples.png"

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


def write_predictions(path: Path, actual: Sequence[int], predicted: Sequence[int]) -> None:
    """predictions.csv: one row per test image, its class and the predicted one, by name
    (the columns DVC's `confusion` plot template reads)."""
    names = CIFAR10_CLASSES
    pairs = zip(actual, predicted, strict=True)
    rows = "".join(f"{names[int(a)]},{names[int(p)]}\n" for a, p in pairs)
    atomic_write_bytes(path, ("actual,predicted\n" + rows).encode())


def read_predictions(path: Path) -> tuple[list[int], list[int]]:
    """(actual, predicted) class indices from predictions.csv (OSError, or ValueError
    for a row that names no CIFAR-10 class)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
        return [index[r["actual"]] for r in rows], [index[r["predicted"]] for r in rows]
    except KeyError as exc:
        raise ValueError(f"{path}: {exc} is no CIFAR-10 class") from None


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
    """The dict `write_model_file` wrote: the weights ('model') and the resolved config
    ('config') at least. WeightsError, one line, when the file is missing, unreadable or
    another file (a plain state dict, a checkpoint); with `mmap` the tensors are
    memory-mapped, not read (for the config and metrics alone). The one reader of model
    files: serving, the report and `src.predict`'s choice of model all use it."""
    payload = load_torch(path, mmap=mmap)
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("model"), dict)
        and isinstance(payload.get("config"), dict)
    ):
        raise WeightsError(
            f"{path}: not a model file of this project (expected the 'model' and 'config' "
            "entries that the pipeline stages write)"
        )
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


def load_pretrained(
    model: nn.Module,
    weights: str,
    imagenet: Callable[[], tuple[dict, str]],
    path: Path | None,
    head: str,
    expected: str,
) -> None:
    """A backbone's pretrained weights into `model`, its own new classifier `head` kept:
    'none' loads nothing, 'imagenet' what `imagenet()` returns (state, source), anything
    else the weights file `path`. Every other key must match (WeightsError names those
    that differ); a missing file is a WeightsError saying what was `expected` there."""
    if weights == "none":
        return
    if weights == "imagenet":
        state, source = imagenet()
    else:
        if path is None or not path.is_file():
            raise WeightsError(f"resnet.weights: {path} does not exist (expected {expected})")
        state, source = read_weights(path), str(path)
    backbone = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    own_head = {k: v for k, v in model.state_dict().items() if k.startswith(f"{head}.")}
    load_state_strict(model, {**backbone, **own_head}, source)
