"""Oracles: who labels a round's images.

- `SimulatedOracle` reveals ground-truth labels from a COCO file and records the paper's annotation cost.
- `files`: export a round with the model's predictions as pre-annotations (COCO or Label Studio) and import
  Label Studio exports back. COCO / CVAT-COCO imports are `Project.import_coco`.
"""

from __future__ import annotations

from .files import LabelStudioImport, export_round, import_label_studio, label_studio_config
from .simulated import SimulatedOracle

__all__ = [
    "LabelStudioImport",
    "SimulatedOracle",
    "export_round",
    "import_label_studio",
    "label_studio_config",
]
