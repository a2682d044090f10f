"""Skeletons: keypoint names, limbs, left/right flip pairs and OKS sigmas.

One `Skeleton` is the single source of truth for everything that depends on the keypoint layout:
the number of heatmap channels (K + 1), the PAF channels (2 per limb), horizontal-flip
augmentation and the OKS metric.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ActiveposeError, ConfigError

LOG = logging.getLogger(__name__)

# COCO's published per-keypoint OKS sigmas (cocoapi), by keypoint name. Other skeletons reuse them by name.
_COCO_SIGMAS = {
    "nose": 0.026,
    "left_eye": 0.025,
    "right_eye": 0.025,
    "left_ear": 0.035,
    "right_ear": 0.035,
    "left_shoulder": 0.079,
    "right_shoulder": 0.079,
    "left_elbow": 0.072,
    "right_elbow": 0.072,
    "left_wrist": 0.062,
    "right_wrist": 0.062,
    "left_hip": 0.107,
    "right_hip": 0.107,
    "left_knee": 0.087,
    "right_knee": 0.087,
    "left_ankle": 0.089,
    "right_ankle": 0.089,
    # Not in COCO: neck sits between the shoulders (shoulder-like uncertainty), head_top like an ear.
    "neck": 0.079,
    "head_top": 0.035,
}
_DEFAULT_SIGMA = 0.07


class SkeletonError(ActiveposeError, ValueError):
    """A skeleton definition is unknown or inconsistent."""


@dataclass(frozen=True)
class Skeleton:
    """Keypoint layout of one category.

    `limbs` are 0-based index pairs (parent, child); `flip_pairs` are 0-based (left, right) pairs that
    swap under a horizontal flip; `sigmas` are the OKS per-keypoint constants.
    """

    name: str
    keypoints: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        if k == 0:
            raise SkeletonError(f"skeleton {self.name!r}: no keypoints")
        if len(set(self.keypoints)) != k:
            raise SkeletonError(f"skeleton {self.name!r}: duplicate keypoint names")
        for a, b in self.limbs:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise SkeletonError(
                    f"skeleton {self.name!r}: limb ({a}, {b}) is not a pair of keypoints 0..{k - 1}"
                )
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k):
                raise SkeletonError(f"skeleton {self.name!r}: flip pair ({a}, {b}) out of range")
        if not self.sigmas:
            object.__setattr__(
                self, "sigmas", tuple(_COCO_SIGMAS.get(n, _DEFAULT_SIGMA) for n in self.keypoints)
            )
        if len(self.sigmas) != k:
            raise SkeletonError(f"skeleton {self.name!r}: {len(self.sigmas)} sigmas for {k} keypoints")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def sigma_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    def flip_permutation(self) -> np.ndarray:
        """Return the keypoint index permutation applied by a horizontal flip."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def index(self, name: str) -> int:
        return self.keypoints.index(name)

    # --- COCO category round trip -------------------------------------------------------------
    @classmethod
    def from_coco_category(cls, category: dict[str, Any], name: str | None = None) -> Skeleton:
        """Return the skeleton of a COCO category (`keypoints` + 1-based `skeleton`)."""
        try:
            names = tuple(str(n) for n in category["keypoints"])
        except (KeyError, TypeError) as exc:
            raise SkeletonError("COCO category has no 'keypoints' list") from exc
        raw = category.get("skeleton") or []
        try:
            limbs = tuple((int(a) - 1, int(b) - 1) for a, b in raw)
        except (TypeError, ValueError) as exc:
            raise SkeletonError("COCO category 'skeleton' must be a list of [a, b] 1-based pairs") from exc
        sigmas = tuple(float(s) for s in category["sigmas"]) if "sigmas" in category else ()
        return cls(
            name=name or str(category.get("name", "custom")),
            keypoints=names,
            limbs=limbs,
            flip_pairs=infer_flip_pairs(names),
            sigmas=sigmas,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the skeleton as plain JSON-able data (checkpoints, the project store)."""
        return {
            "name": self.name,
            "keypoints": list(self.keypoints),
            "limbs": [list(x) for x in self.limbs],
            "flip_pairs": [list(x) for x in self.flip_pairs],
            "sigmas": list(self.sigmas),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Skeleton:
        return cls(
            name=d["name"],
            keypoints=tuple(d["keypoints"]),
            limbs=tuple(tuple(x) for x in d["limbs"]),
            flip_pairs=tuple(tuple(x) for x in d["flip_pairs"]),
            sigmas=tuple(d["sigmas"]),
        )

    def to_coco_category(self, category_id: int = 1) -> dict[str, Any]:
        return {
            "id": category_id,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(self.keypoints),
            "skeleton": [[a + 1, b + 1] for a, b in self.limbs],
        }


def infer_flip_pairs(names: tuple[str, ...] | list[str]) -> tuple[tuple[int, int], ...]:
    """Return (left, right) index pairs matched by name: `left_x`/`right_x`, `l_x`/`r_x`, `x_l`/`x_r`."""
    index = {n.lower(): i for i, n in enumerate(names)}
    rules = (
        lambda n: "right_" + n[5:] if n.startswith("left_") else None,
        lambda n: "r_" + n[2:] if n.startswith("l_") else None,
        lambda n: n[:-5] + "_right" if n.endswith("_left") else None,
        lambda n: n[:-2] + "_r" if n.endswith("_l") else None,
    )
    pairs = set()
    for n, i in index.items():
        for rule in rules:
            j = index.get(rule(n) or "")
            if j is not None and j != i:
                pairs.add((i, j))
                break
    return tuple(sorted(pairs))


_COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# The standard COCO 1-based skeleton.
_COCO17_LIMBS_1 = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

# OpenPose's COCO-18 order: COCO + neck (midpoint of the shoulders), 19 limbs (a tree + 2 ear-shoulder links).
_COCO18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
_COCO18_LIMBS_1 = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)  # fmt: skip

_LSP14_NAMES = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist",
    "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "neck", "head_top",
)  # fmt: skip
# The LSPET files' tree rooted at the neck (13 limbs) plus four torso links (shoulder-hip on each side,
# shoulder-shoulder, hip-hip). The neck is unlabelled for about 19 % of LSPET people; with a pure tree their
# PAF graph falls apart into pieces below the decoder's minimum part count. The extra links keep a person
# connected, as OpenPose's COCO-18 adds redundant ear-shoulder links.
_LSP14_LIMBS_1 = (
    (13, 14), (13, 9), (9, 8), (8, 7), (13, 10), (10, 11), (11, 12), (13, 3), (3, 2), (2, 1),
    (13, 4), (4, 5), (5, 6), (9, 3), (10, 4), (9, 10), (3, 4),
)  # fmt: skip


def _preset(name: str, names: tuple[str, ...], limbs_1: tuple[tuple[int, int], ...]) -> Skeleton:
    return Skeleton(
        name=name,
        keypoints=names,
        limbs=tuple((a - 1, b - 1) for a, b in limbs_1),
        flip_pairs=infer_flip_pairs(names),
    )


PRESETS: dict[str, Skeleton] = {
    "coco17": _preset("coco17", _COCO17_NAMES, _COCO17_LIMBS_1),
    "coco18": _preset("coco18", _COCO18_NAMES, _COCO18_LIMBS_1),
    "lsp14": _preset("lsp14", _LSP14_NAMES, _LSP14_LIMBS_1),
}


def get_skeleton(spec: str | Path | Skeleton) -> Skeleton:
    """Return a preset by name, or the skeleton of the first category of a COCO JSON file."""
    if isinstance(spec, Skeleton):
        return spec
    key = str(spec)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix.lower() == ".json" and path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SkeletonError(f"{path}: not valid JSON ({exc})") from exc
        cats = data.get("categories") if isinstance(data, dict) else None
        if isinstance(data, dict) and "keypoints" in data:
            cats = [data]
        if not cats:
            raise SkeletonError(f"{path}: no category with 'keypoints' found")
        return Skeleton.from_coco_category(cats[0], name=path.stem)
    raise SkeletonError(
        f"unknown skeleton {key!r}: use one of {', '.join(PRESETS)} or a COCO JSON file with a category"
    )


def match_preset(skeleton: Skeleton) -> Skeleton:
    """Return the preset with the same keypoints whose limbs include all of `skeleton`'s, else `skeleton`.

    A preset may carry extra (redundant) limbs beyond a file's skeleton; those only add PAF channels.
    """
    limbs = set(map(frozenset, skeleton.limbs))
    for preset in PRESETS.values():
        if preset.keypoints == skeleton.keypoints and limbs <= set(map(frozenset, preset.limbs)):
            return preset
    return skeleton


def same_keypoints(what: str, theirs, ours, where: str = "the model's") -> None:
    """Raise ConfigError when two skeletons' keypoint names differ (a file of another skeleton)."""
    if list(theirs.keypoints) != list(ours.keypoints):
        raise ConfigError(
            f"{what}: keypoints {list(theirs.keypoints)} ({theirs.name}) differ from {where} "
            f"{list(ours.keypoints)} ({ours.name})"
        )
