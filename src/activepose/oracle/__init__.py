"""Oracles: who labels a round's images, behind one protocol (`Labeller`) that the loop and `label` call.

- `simulated`: `SimulatedOracle` reveals ground-truth labels from a COCO file and records the paper's
  annotation cost; `SimulatedLabeller` is it as the loop's labeller.
- `files`: `FileLabeller` imports labels made elsewhere (COCO / CVAT-COCO, or Label Studio's JSON export).
- The labelling page's labeller is `web.labeller.WebLabeller` (it serves the page, so it lives with it).
Formats in and out (COCO and Label Studio exports, imports) are `activepose.interop`'s.
"""

from __future__ import annotations

from typing import Protocol

from ..project.store import Project


class Labeller(Protocol):
    """Labels a project's open round: returns (new person labels, a one-line message).

    Completes the round ('open' -> 'labelled') in the transaction that stores its last labels.
    """

    def label(self, project: Project, round_id: int) -> tuple[int, str]: ...
