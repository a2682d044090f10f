"""The file oracle: labels people made elsewhere, imported as one round (COCO, or Label Studio's JSON export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..interop.coco import import_coco
from ..interop.label_studio import import_label_studio

FORMATS = ("coco", "label-studio")


@dataclass
class FileLabeller:
    """Imports what people labelled elsewhere: COCO (CVAT, activepose's own export) or Label Studio."""

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
        if self.fmt == "coco":
            res = import_coco(project, self.path, round=round_id, include_empty=self.include_empty,
                                      accept_predictions=self.accept_predictions, complete_round=True)  # fmt: skip
            return res.new_labels, res.message
        res = import_label_studio(project, self.path, round_id=round_id,
                                  accept_predictions=self.accept_predictions, complete_round=True)  # fmt: skip
        return res.new_labels, f"{self.path}: {res.message}"
