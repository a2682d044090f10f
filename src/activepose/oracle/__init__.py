"""Oracles: who labels a round's images.

- `SimulatedOracle` reveals ground-truth labels from a COCO file and records the paper's annotation cost.
- `files`: export a round with the model's predictions as pre-annotations (COCO or Label Studio).
  COCO / CVAT-COCO imports are `Project.import_coco`.
- `label_studio`: Label Studio's labelling config (keypoints plus a per-point person choice), its tasks, and
  the import of its JSON export (`import_label_studio`).
"""

from __future__ import annotations

from .files import export_round
from .label_studio import LabelStudioImport, import_label_studio, label_studio_config
from .simulated import SimulatedOracle

__all__ = [
    "LabelStudioImport",
    "SimulatedOracle",
    "export_round",
    "import_label_studio",
    "label_studio_config",
]
