"""The simulated oracle: reveals ground-truth people from a COCO file and records a per-person labelling cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..pose.coco import CocoKeypoints, load_coco
from ..pose.skeleton import same_keypoints
from ..project.schema import StoreError
from ..project.store import Project

SOURCE = "simulated"


class SimulatedOracle:
    """Label a round's queued images with their ground truth, as the paper's simulation does.

    Images are matched to the ground truth by image id (the pool file's stable ids); when both sides have a
    file name, the last path components must agree too, so a ground truth for another pool is refused rather
    than silently revealing the wrong people. The cost of an image is the sum over its people of a uniform
    draw in `seconds_per_person` (15-20 s, as the paper quotes), seeded by (seed, image id): re-running after
    a crash records the same cost. Images without people are recorded as labelled with nobody in them (an
    empty (0, K, 3) array; they store no label row, so their cost of 0 s is not stored either).
    """

    def __init__(
        self,
        ground_truth: CocoKeypoints,
        seconds_per_person: tuple[float, float] = (15.0, 20.0),
        seed: int = 0,
    ):
        lo, hi = (float(v) for v in seconds_per_person)
        if not 0 <= lo <= hi or not np.isfinite(hi):
            raise ValueError(
                f"seconds_per_person must be (lo, hi) with 0 <= lo <= hi, got {seconds_per_person}"
            )
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.ground_truth = ground_truth
        self.seconds_per_person = (lo, hi)
        self.seed = int(seed)

    def seconds(self, image_id: int, num_people: int) -> float:
        """Return the simulated labelling time of an image: deterministic per (seed, image id)."""
        rng = np.random.default_rng([self.seed, int(image_id) & 0xFFFFFFFFFFFFFFFF])
        return float(rng.uniform(*self.seconds_per_person, size=int(num_people)).sum())

    def label(self, project: Project, round_id: int, complete_round: bool = False) -> int:
        """Label every image still queued in round `round_id`; return how many images this call labelled.

        All-or-nothing: an image missing from the ground truth (or whose file name disagrees, or a skeleton
        mismatch) raises StoreError naming it, and nothing is written. Images of the round that are already
        labelled (a previous run, or another oracle) are left alone, so a second call returns 0 and adds
        nothing; labels identical to stored ones are a no-op in the store as well. With `complete_round` the
        round moves open -> labelled in the same transaction as the labels once every one of its images is
        labelled or skipped (also when there was nothing left to label).
        """
        gt_names = list(self.ground_truth.skeleton.keypoints)
        if gt_names != list(project.skeleton.keypoints):
            raise StoreError(
                f"{self._where()}: ground-truth keypoints {gt_names} differ from the project's "
                f"{list(project.skeleton.keypoints)}"
            )
        info = project.round(round_id)
        todo = [i for i, _, _ in info.items if project.image(i).state == "queued"]
        labels, seconds, problems = {}, {}, []
        for image_id in todo:
            try:
                frame = self.ground_truth.frame(image_id)
            except KeyError:
                problems.append(f"image id {image_id}: not in the ground truth")
                continue
            mine, theirs = Path(project.image(image_id).path).name, Path(frame.file_name).name
            if mine != theirs:
                problems.append(
                    f"image id {image_id}: file name {mine!r} in the project but {theirs!r} in the ground truth"
                )
                continue
            labels[image_id] = np.asarray(frame.keypoints, dtype=np.float64).reshape(-1, len(gt_names), 3)
            seconds[image_id] = self.seconds(image_id, frame.num_people)
        if problems:
            raise StoreError(f"{self._where()}: round {round_id} not labelled, nothing stored", problems)
        if labels or complete_round:
            project.add_labels(
                labels, source=SOURCE, round=round_id, seconds=seconds, complete_round=complete_round
            )
        return len(labels)

    def _where(self) -> str:
        return str(self.ground_truth.path or "<ground truth>")


@dataclass
class SimulatedLabeller:
    """The loop's simulated oracle: reveals `ground_truth` (a COCO file) with a seeded 15-20 s per person."""

    ground_truth: Path
    seed: int = 0
    _gt: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._gt = load_coco(self.ground_truth, check_images=False)

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
        n = SimulatedOracle(self._gt, seed=self.seed).label(project, round_id, complete_round=True)
        return n, f"simulated oracle labelled {n} image(s) of round {round_id}"
