"""Export a round for outside labelling tools (COCO, Label Studio): one entry point for both formats.

Export (`export_round`) writes the round's images, in rank order, with the model's predictions as
pre-annotations:

- `fmt="coco"`: a COCO keypoint file; `annotations` are the predictions, each with a `score` (found
  keypoints written as labelled and visible, v = 2). It imports back with `interop.coco.import_coco`.
- `fmt="label-studio"`: a Label Studio task list; see `label_studio` (its labelling config, the person
  choice that groups points into people, image URLs with `ls_root`, and `import_label_studio`).

Image paths: `paths="relative"` (default) writes them relative to the exported file's folder, `"absolute"`
as absolute paths; Label Studio tasks get `url_prefix + path`, or with `ls_root=DIR` the local-files URL
`/data/local-files/?d=<path relative to DIR>` that Label Studio serves with DIR as its document root.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_json
from ..pose.coco import annotation_dict
from ..project.schema import StoreError
from ..project.store import Project
from .label_studio import image_urls, label_studio_tasks
from .paths import image_ref

Predictions = Mapping[int, tuple[np.ndarray, np.ndarray]]


def _check_predictions(
    project: Project, round_id: int, ids: list[int], predictions: Predictions | None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    k = project.skeleton.num_keypoints
    out, problems = {}, []
    for raw_id, pred in (predictions or {}).items():
        image_id = int(raw_id)
        if image_id not in ids:
            problems.append(f"image id {image_id}: has predictions but is not in round {round_id}")
            continue
        kps, scores = pred
        kps = np.asarray(kps, dtype=np.float64)
        if kps.size == 0:
            kps = kps.reshape(0, k, 3)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if kps.ndim != 3 or kps.shape[1:] != (k, 3) or len(scores) != len(kps):
            problems.append(
                f"image id {image_id}: predictions of shape {kps.shape} with {len(scores)} score(s), "
                f"expected (N, {k}, 3) and N scores"
            )
            continue
        out[image_id] = (kps, scores)
    if problems:
        raise StoreError(f"{project.folder}: round {round_id} not exported", problems)
    return out


def export_round(
    project: Project,
    round_id: int,
    path: str | Path,
    fmt: str = "coco",
    predictions: Predictions | None = None,
    *,
    paths: str = "relative",
    url_prefix: str = "",
    model_version: str = "activepose",
    ls_root: str | Path | None = None,
) -> Path:
    """Write round `round_id`'s images with `predictions` {image_id: (kps (N, K, 3), scores (N,))} as
    pre-annotations, atomically; return the path. Images without an entry get no pre-annotation. A
    prediction's third value is the keypoint's own confidence (> 0: found). Label Studio only: `ls_root`
    writes local-files URLs relative to that folder (StoreError, nothing written, for an image outside it)."""
    if fmt not in ("coco", "label-studio"):
        raise ValueError(f"unknown export format {fmt!r}; use 'coco' or 'label-studio'")
    if paths not in ("relative", "absolute"):
        raise ValueError(f"paths must be 'relative' or 'absolute', got {paths!r}")
    if ls_root is not None and (fmt != "label-studio" or url_prefix):
        raise ValueError("ls_root is for fmt='label-studio' and replaces url_prefix")
    path = Path(path)
    ids = [i for i, _, _ in project.round(round_id).items]
    preds = _check_predictions(project, round_id, ids, predictions)
    if fmt == "coco":
        images, annotations = [], []
        for image_id in ids:
            img = project.image(image_id)
            ref = image_ref(project, image_id, path, paths)
            entry = {"id": image_id, "file_name": ref, "width": img.width, "height": img.height}
            if img.video is not None:  # footage: the fields of youtube_pose's images
                entry.update(video=img.video, frame=img.frame)
            images.append(entry)
            kps, scores = preds.get(image_id, (np.zeros((0, 1, 3)), np.zeros(0)))
            for person, score in zip(kps, scores, strict=True):
                # A prediction's third value is the keypoint's peak score, not a COCO visibility flag (written
                # as int(score), a found keypoint became 0 "not labelled", or 3+, which no import accepts): a
                # found keypoint is written as labelled and visible (2), a missing one as not labelled (0).
                person = np.asarray(person, dtype=np.float64).copy()
                person[:, 2] = np.where(person[:, 2] > 0, 2, 0)
                ann = annotation_dict(len(annotations) + 1, image_id, person)
                ann["score"] = round(float(score), 5)
                annotations.append(ann)
        data: Any = {
            "info": {"description": f"activepose round {round_id} with predictions", "round": round_id},
            "categories": [project.skeleton.to_coco_category(1)],
            "images": images,
            "annotations": annotations,
        }
    else:
        urls = image_urls(project, ids, path, paths, url_prefix, ls_root)
        data = label_studio_tasks(project, ids, urls, preds, model_version)
    return atomic_write_json(path, data, indent=1)
