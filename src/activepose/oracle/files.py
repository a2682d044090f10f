"""File oracles: export a round for outside labelling tools, import their results.

Export (`export_round`) writes the round's images, in rank order, with the model's predictions as
pre-annotations:

- `fmt="coco"`: a COCO keypoint file; `annotations` are the predictions, each with a `score`.
- `fmt="label-studio"`: a Label Studio task list (import format). Each task is
  `{"data": {"image": URL, "activepose_image_id": ID}, "predictions": [{"model_version", "score", "result"}]}`;
  every predicted keypoint (v > 0) is one result item of type `keypointlabels` with `value.x` / `value.y` in
  percent of the image width / height, `from_name="kp"`, `to_name="image"` (see `label_studio_config`), and
  `meta.person` plus an id `p<person>k<keypoint>` that say which person it belongs to.

Image paths: `paths="relative"` (default) writes them relative to the exported file's folder, `"absolute"`
as absolute paths; Label Studio tasks get `url_prefix + path` (e.g. `/data/local-files/?d=` with local
storage, where the path must then be relative to the storage root: use `paths="relative"` with the export
next to that root, or a prefix that ends in the project folder).

Import (`import_label_studio`) reads a Label Studio JSON export. Grouping keypoints into people (Label Studio
points carry no person id): a point belongs to person `meta.person` (or `meta.instance`) when set, else to
the person of an id of the form `p<N>k<J>` (the ids this module exports, which Label Studio keeps when a
pre-annotation is accepted or moved). Points with neither: when the task has no grouped point at all, they
form one person (one person per task; a keypoint name used twice is then an error); otherwise each goes to
the one person that lacks that keypoint, and it is an error when zero or several do. Imported points get
v = 2 (Label Studio has no occluded flag); keypoints not placed get v = 0.

Model output is not a human label: Label Studio marks each region of an annotation with `origin`
("prediction": a pre-annotation submitted untouched, "prediction-changed": one the annotator edited,
"manual": drawn by hand). Regions with origin "prediction" are refused unless `accept_predictions`
(`--accept-predictions`); a task's `predictions` themselves are never imported. Labels are stored as
`Project.add_labels` stores them (changed labels replace an image's current ones, kept as history; the same
labels under another file name add nothing), and each file is recorded once (`Project.import_labels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from ..coco import annotation_dict
from ..fileio import atomic_write_json
from ..skeleton import Skeleton
from ..store import Project, StoreError

FROM_NAME = "kp"
TO_NAME = "image"
POINT_WIDTH = 0.75  # Label Studio point size, percent of the image width
_ID = re.compile(r"^p(\d+)k(\d+)$")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio renames uploaded files to <hash8>-<name>
_COLOURS = {"left": "#1f77b4", "right": "#d62728"}
_OTHER = "#2ca02c"

Predictions = Mapping[int, tuple[np.ndarray, np.ndarray]]


def label_studio_config(skeleton: Skeleton) -> str:
    """Return the Label Studio labelling config (XML): one KeyPointLabels label per keypoint name."""
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background="
        f"{quoteattr(_COLOURS.get(name.split('_')[0], _OTHER))}/>"
        for name in skeleton.keypoints
    )
    return (
        "<View>\n"
        f'  <KeyPointLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" opacity="0.9">\n'
        f"{labels}\n"
        "  </KeyPointLabels>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        "</View>\n"
    )


def _image_ref(project: Project, image_id: int, out: Path, paths: str) -> str:
    fp = project.image_path(image_id).resolve()
    if paths == "absolute":
        return str(fp)
    return Path(os.path.relpath(fp, out.parent.resolve())).as_posix()


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
) -> Path:
    """Write round `round_id`'s images with `predictions` {image_id: (kps (N, K, 3), scores (N,))} as
    pre-annotations, atomically; return the path. Images without an entry get no pre-annotation."""
    if fmt not in ("coco", "label-studio"):
        raise ValueError(f"unknown export format {fmt!r}; use 'coco' or 'label-studio'")
    if paths not in ("relative", "absolute"):
        raise ValueError(f"paths must be 'relative' or 'absolute', got {paths!r}")
    path = Path(path)
    ids = [i for i, _, _ in project.round(round_id).items]
    preds = _check_predictions(project, round_id, ids, predictions)
    if fmt == "coco":
        images, annotations = [], []
        for image_id in ids:
            img = project.image(image_id)
            ref = _image_ref(project, image_id, path, paths)
            images.append({"id": image_id, "file_name": ref, "width": img.width, "height": img.height})
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
        data = [_task(project, image_id, path, paths, url_prefix, preds, model_version) for image_id in ids]
    return atomic_write_json(path, data, indent=1)


def _task(
    project: Project,
    image_id: int,
    out: Path,
    paths: str,
    url_prefix: str,
    preds: dict[int, tuple[np.ndarray, np.ndarray]],
    model_version: str,
) -> dict[str, Any]:
    img = project.image(image_id)
    task: dict[str, Any] = {
        "data": {
            "image": url_prefix + _image_ref(project, image_id, out, paths),
            "activepose_image_id": image_id,
        }
    }
    if image_id not in preds:
        return task
    kps, scores = preds[image_id]
    result = []
    for n, person in enumerate(kps):
        for j, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            result.append(
                {
                    "id": f"p{n}k{j}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "keypointlabels",
                    "original_width": img.width,
                    "original_height": img.height,
                    "image_rotation": 0,
                    "value": {
                        "x": 100.0 * float(x) / img.width,
                        "y": 100.0 * float(y) / img.height,
                        "width": POINT_WIDTH,
                        "keypointlabels": [project.skeleton.keypoints[j]],
                    },
                    "score": round(float(scores[n]), 5),
                    "meta": {"person": n},
                }
            )
    score = float(np.mean(scores)) if len(scores) else 0.0
    task["predictions"] = [{"model_version": model_version, "score": round(score, 5), "result": result}]
    return task


# --- import ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelStudioImport:
    images: int  # tasks with an annotation, mapped to project images
    people: int
    new_labels: int  # label rows the store added (0 when the same labels were imported before)
    skipped_tasks: list[Any] = field(default_factory=list)  # task ids without a usable annotation
    replaced: int = 0  # current label rows the import superseded (kept as history)
    already_imported: bool = False  # this very file (same bytes) was imported before
    round_completed: bool = False  # with complete_round: the round became 'labelled' in the same transaction


def _file_name(ref: str) -> str:
    """Return the file name of a Label Studio image reference (a path, URL or `?d=` local-files URL)."""
    parsed = urlparse(ref)
    d = parse_qs(parsed.query).get("d")
    p = d[0] if d else unquote(parsed.path or ref)
    return PurePosixPath(p.replace("\\", "/")).name


def _person_of(item: dict[str, Any]) -> int | None:
    meta = item.get("meta")
    if isinstance(meta, dict):
        for key in ("person", "instance"):
            if isinstance(meta.get(key), int) and meta[key] >= 0:
                return int(meta[key])
    m = _ID.match(str(item.get("id", "")))
    return int(m.group(1)) if m else None


def _task_people(
    task: dict[str, Any], result: list[Any], project: Project, width: int, height: int, where: str
) -> tuple[np.ndarray, list[str]]:
    names = {n: j for j, n in enumerate(project.skeleton.keypoints)}
    k = len(names)
    groups: dict[int, np.ndarray] = {}
    loose: list[tuple[int, float, float]] = []
    problems: list[str] = []
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "keypointlabels":
            continue  # other controls (choices, text areas, relations) are not keypoints
        value = item.get("value") or {}
        labels = value.get("keypointlabels") or []
        if len(labels) != 1 or labels[0] not in names:
            problems.append(
                f"{where}: keypoint region {item.get('id')!r} has labels {labels}, expected one keypoint name"
            )
            continue
        try:
            x = float(value["x"]) / 100.0 * width
            y = float(value["y"]) / 100.0 * height
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: keypoint region {item.get('id')!r} has no numeric x / y")
            continue
        j, person = names[labels[0]], _person_of(item)
        if person is None:
            loose.append((j, x, y))
            continue
        kps = groups.setdefault(person, np.zeros((k, 3)))
        if kps[j, 2] > 0:
            problems.append(f"{where}: person {person} has keypoint {labels[0]!r} twice")
            continue
        kps[j] = (x, y, 2)
    if loose and not groups:
        groups[0] = np.zeros((k, 3))
        for j, x, y in loose:
            if groups[0][j, 2] > 0:
                problems.append(
                    f"{where}: keypoint {project.skeleton.keypoints[j]!r} placed twice without a person "
                    "(set meta.person on the regions of a multi-person task)"
                )
            groups[0][j] = (x, y, 2)
    else:
        for j, x, y in loose:
            free = [p for p, kps in groups.items() if kps[j, 2] == 0]
            if len(free) != 1:
                problems.append(
                    f"{where}: keypoint {project.skeleton.keypoints[j]!r} has no person and "
                    f"{len(free)} people lack it (set meta.person on the region)"
                )
                continue
            groups[free[0]][j] = (x, y, 2)
    people = [groups[p] for p in sorted(groups) if (groups[p][:, 2] > 0).any()]
    return (np.stack(people) if people else np.zeros((0, k, 3))), problems


def _annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """Return the task's most recent annotation that was not cancelled (None when there is none)."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return anns[-1] if anns else None


def import_label_studio(
    project: Project,
    path: str | Path,
    round_id: int | None = None,
    source: str | None = None,
    accept_predictions: bool = False,
    complete_round: bool = False,
) -> LabelStudioImport:
    """Import a Label Studio JSON export's keypoint annotations into the project (all-or-nothing).

    Tasks map to project images by `data.activepose_image_id` when present (and its file name agrees), else by
    the unique project image with the file name of `data.image` (Label Studio's `<hash8>-` upload prefix is
    tolerated). Each task's last non-cancelled annotation is used; tasks without one are skipped and listed.
    An annotation with no keypoints records the image as labelled with nobody in it. With `round_id`, every
    image must belong to that round. `source` defaults to 'label-studio:<file name>'. Importing the same file
    again, or the same labels from another file, adds nothing; changed labels replace an image's current
    ones (kept as history). Regions Label Studio marks `origin: "prediction"` (pre-annotations submitted
    untouched) are refused unless `accept_predictions`. `complete_round` (needs `round_id`) moves the round
    to 'labelled' in the same transaction once all its images are labelled or skipped.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        tasks = json.loads(raw)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot import: {exc}") from exc
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise StoreError(f"{path}: cannot import: expected a JSON list of Label Studio tasks")
    source = source or f"label-studio:{path.name}"
    by_name: dict[str, list[int]] = {}
    for image_id in project.image_ids():
        by_name.setdefault(Path(project.image(image_id).path).name, []).append(image_id)
    in_round = None if round_id is None else {i for i, _, _ in project.round(round_id).items}
    labels: dict[int, np.ndarray] = {}
    problems: list[str] = []
    predicted: list[str] = []
    skipped: list[Any] = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            problems.append(f"tasks[{n}]: not a JSON object")
            continue
        tid = task.get("id", f"#{n}")
        where = f"task {tid}"
        ann = _annotation(task)
        if ann is None:
            skipped.append(tid)
            continue
        data = task.get("data") or {}
        image_id, why = _map_task(project, data, by_name)
        if image_id is None:
            problems.append(f"{where} (image {data.get('image')!r}): {why}")
            continue
        if in_round is not None and image_id not in in_round:
            problems.append(f"{where}: image id {image_id} is not in round {round_id}")
            continue
        if image_id in labels:
            problems.append(f"{where}: image id {image_id} appears in more than one task")
            continue
        result = ann.get("result") or []
        untouched = sum(
            1
            for item in result
            if isinstance(item, dict)
            and item.get("type") == "keypointlabels"
            and item.get("origin") == "prediction"
        )
        if untouched and not accept_predictions:
            predicted.append(
                f"{where} (image id {image_id}): {untouched} keypoint region(s) are pre-annotations submitted "
                "untouched (origin 'prediction')"
            )
        img = project.image(image_id)
        kps, found = _task_people(task, result, project, img.width, img.height, where)
        problems += found
        labels[image_id] = kps
    if predicted:
        raise StoreError(
            f"{path}: {len(predicted)} task(s) hold model predictions, not human labels; nothing imported "
            "(pass --accept-predictions to import them as labels)",
            predicted + problems,
        )
    if problems:
        raise StoreError(f"{path}: cannot import, nothing stored", problems)
    result = project.import_labels(
        path,
        labels,
        source=source,
        round=round_id,
        complete_round=complete_round,
        content_hash=hashlib.sha1(raw).hexdigest(),
    )
    return LabelStudioImport(
        len(labels),
        sum(len(v) for v in labels.values()),
        result.new_labels,
        skipped,
        result.replaced,
        result.already_imported,
        result.round_completed,
    )


def _map_task(
    project: Project, data: dict[str, Any], by_name: dict[str, list[int]]
) -> tuple[int | None, str]:
    name = _file_name(str(data.get("image", "")))
    given = data.get("activepose_image_id")
    if isinstance(given, int):
        try:
            if Path(project.image(given).path).name == name:
                return given, ""
        except StoreError:
            pass
    for candidate in (name, _UPLOAD_PREFIX.sub("", name, count=1)):
        hits = by_name.get(candidate, [])
        if len(hits) == 1:
            return hits[0], ""
        if len(hits) > 1:
            return None, f"{len(hits)} project images are named {candidate!r}"
    return None, f"no project image named {name!r}"
