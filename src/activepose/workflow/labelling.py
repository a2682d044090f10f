"""Oracles as the workflow sees them: `label(project, round_id) -> (new labels, message)`.

- `SimulatedLabeller` reveals a ground-truth file (the paper's simulation), with a seeded 15-20 s per person.
- `FileLabeller` imports what people labelled elsewhere: COCO (CVAT, activepose's own export) or Label Studio.
Both complete the round ('open' -> 'labelled') in the transaction that stores its last labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import load_data, same_keypoints

FORMATS = ("coco", "label-studio")


@dataclass
class SimulatedLabeller:
    ground_truth: Path
    seed: int = 0
    _gt: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._gt = load_data(self.ground_truth, check_images=False)

    def check_covers(self, project) -> None:
        """Raise ConfigError unless the ground truth has every image that could still be selected."""
        same_keypoints(str(self.ground_truth), self._gt.skeleton, project.skeleton, "the project's")
        known = {f.image_id: Path(f.file_name).name for f in self._gt}
        missing = []
        for image_id in project.unlabelled_ids() + project.queued_ids():
            name = Path(project.image(image_id).path).name
            if known.get(image_id) != name:
                missing.append(f"{image_id} ({name})")
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ConfigError(
                f"{self.ground_truth}: does not cover the project's pool: {len(missing)} unlabelled image(s) missing "
                f"or under another file name: {shown}"
            )

    def label(self, project, round_id: int) -> tuple[int, str]:
        from ..oracle import SimulatedOracle

        n = SimulatedOracle(self._gt, seed=self.seed).label(project, round_id, complete_round=True)
        return n, f"simulated oracle labelled {n} image(s) of round {round_id}"


@dataclass
class FileLabeller:
    path: Path
    fmt: str = "coco"
    include_empty: bool = False  # coco: images without annotations count as labelled with nobody
    accept_predictions: bool = False  # model output (annotations with a score) may become labels

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown --format {self.fmt!r}; use {' or '.join(FORMATS)}")
        if not Path(self.path).is_file():
            raise ConfigError(f"{self.path}: no such file")

    def label(self, project, round_id: int) -> tuple[int, str]:
        from ..oracle import import_label_studio

        if self.fmt == "coco":
            res = project.import_coco(self.path, round=round_id, include_empty=self.include_empty,
                                      accept_predictions=self.accept_predictions, complete_round=True)  # fmt: skip
            return res.new_labels, res.message
        res = import_label_studio(project, self.path, round_id=round_id,
                                  accept_predictions=self.accept_predictions, complete_round=True)  # fmt: skip
        return res.new_labels, f"{self.path}: {res.message}"
