"""What each strategy chose, round by round: the evidence for *why* one strategy beats another (or not).

Read from the simulated projects of a grid (`DIR/projects/<strategy>-seed<s>/project.db`): per (strategy,
seed, round) the chosen images' labels as the oracle gave them (people per image, labelled keypoints per
person, person height relative to the image's height), the simulated annotation seconds, and for the
strategies that score uncertainty the filter's pass rate (images with fewer than thKP confident keypoints /
candidates scored). `choices_table` averages seeds; the report (`outputs.py`) writes DIR/choices.csv.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..project.store import Project
from .layout import project_folders


@dataclass(frozen=True)
class RoundChoice:
    strategy: str
    seed: int
    round: int
    images: int
    people: int
    keypoints_per_person: float  # labelled keypoints per person (nan: nobody)
    person_height: float  # median labelled-keypoint extent / image height (nan: nobody)
    annotation_seconds: float
    candidates: int | None  # images the strategy considered
    uncertain: int | None  # of those, uncertain by the heatmap rule (strategies that score it)
    selection_seconds: float | None

    @property
    def pass_rate(self) -> float:
        if not self.candidates or self.uncertain is None:
            return math.nan
        return self.uncertain / self.candidates


def round_choices(out_dir: str | Path) -> list[RoundChoice]:
    """Return one RoundChoice per labelled round of every project under `out_dir/projects`."""

    out: list[RoundChoice] = []
    for strategy, seed, folder in project_folders(out_dir):
        if not (folder / "project.db").is_file():
            continue
        project = Project.open(folder, readonly=True)
        try:
            for info in project.rounds():
                if info.state == "open":
                    continue
                people, kps, heights, seconds = 0, [], [], 0.0
                for image_id, _, _ in info.items:
                    labels = project.labels_of(image_id)
                    if not labels:
                        continue
                    seconds += float(labels[0].seconds or 0.0)
                    h = project.image(image_id).height
                    for label in labels:
                        lab = label.keypoints[:, 2] > 0
                        if not lab.any():
                            continue
                        people += 1
                        kps.append(int(lab.sum()))
                        ys = label.keypoints[lab, 1]
                        heights.append(float(ys.max() - ys.min()) / max(h, 1))
                stats = info.params.get("stats", {}) if isinstance(info.params, dict) else {}
                secs = stats.get("seconds", {}) if isinstance(stats, dict) else {}
                out.append(RoundChoice(
                    strategy=strategy, seed=seed, round=info.id, images=len(info.items), people=people,
                    keypoints_per_person=float(np.mean(kps)) if kps else math.nan,
                    person_height=float(np.median(heights)) if heights else math.nan,
                    annotation_seconds=seconds, candidates=stats.get("candidates"),
                    uncertain=stats.get("uncertain"), selection_seconds=secs.get("total"),
                ))  # fmt: skip
        finally:
            project.close()
    return out


def choices_table(choices: Sequence[RoundChoice]) -> list[dict[str, float | int | str]]:
    """Return per (strategy, round) the means over seeds (people per image, pass rate, ...), sorted."""
    groups: dict[tuple[str, int], list[RoundChoice]] = defaultdict(list)
    for c in choices:
        groups[(c.strategy, c.round)].append(c)

    def mean(values) -> float:
        v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
        return float(np.mean(v)) if v else math.nan

    rows = []
    for (strategy, r), cs in sorted(groups.items()):
        rows.append({
            "strategy": strategy, "round": r, "seeds": len(cs),
            "people_per_image": mean(c.people / c.images if c.images else math.nan for c in cs),
            "keypoints_per_person": mean(c.keypoints_per_person for c in cs),
            "person_height": mean(c.person_height for c in cs),
            "annotation_minutes": mean(c.annotation_seconds / 60 for c in cs),
            "uncertain_pass_rate": mean(c.pass_rate for c in cs),
            "selection_seconds": mean(c.selection_seconds for c in cs),
        })  # fmt: skip
    return rows
