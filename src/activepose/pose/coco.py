"""COCO keypoint JSON: load, validate, save. Keypoints live in (N, K, 3) arrays per image.

Coordinates are COCO pixel coordinates: (0, 0) is the top-left corner of the image, x grows right,
y grows down; visibility v follows COCO (0 = not labelled, 1 = labelled but occluded, 2 = visible).
Image ids from the file are kept everywhere: they are the stable sample ids of the project.
"""

from __future__ import annotations

import json
import logging
import math
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ActiveposeError
from ..fileio import ImageReadError, atomic_write_json, exif_orientation, image_size
from .skeleton import Skeleton, SkeletonError, match_preset

LOG = logging.getLogger(__name__)

# Labelled keypoints a little past the border (annotators clicking on the edge, exporter rounding) are
# clipped into the image; farther out is an error. The margin: this fraction of the longer image side, >= 1 px.
OUTSIDE_TOLERANCE = 0.01
_MAX_LISTED_PROBLEMS = 20
# Limits shared by label imports and the labelling page (web API): people in one image, annotator names.
MAX_PEOPLE_PER_IMAGE = 100
# Annotator names (use with fullmatch): 1-64 letters, digits, spaces, '.', '_', '@' or '-'.
ANNOTATOR_NAME = re.compile(r"[\w .@-]{1,64}")
_INT64 = 2**63
_FILE_NAME_BYTES = 255  # the longest file or folder name most file systems allow
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What must never reach a terminal from imported text: control characters, zero-width and bidi overrides.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 80
_shown.maxlist = _shown.maxdict = 6
_shown.maxlevel = 3


def shown(value: Any) -> str:
    """Return a short repr of a value read from a file, for messages: bounded, control characters escaped."""
    return _shown.repr(value)


def printable(text: Any) -> str:
    """`text` as it may reach a terminal: control characters, zero-width and bidi overrides removed."""
    return _UNPRINTABLE.sub("", str(text))


def is_int(value: Any) -> bool:
    """True for a JSON integer that fits SQLite's 64 bits: not a bool, a float or a string."""
    return type(value) is int and -_INT64 <= value < _INT64


def is_real(value: Any) -> bool:
    """True for a finite JSON number (a 64-bit int or a finite float): not a bool or a string."""
    return is_int(value) or (type(value) is float and math.isfinite(value))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def read_json(raw: bytes | str) -> Any:
    """Parse JSON strictly; raise ValueError saying what is wrong: invalid JSON, NaN or Infinity, a number
    beyond a float (1e400), an integer of thousands of digits, or nesting too deep to parse."""
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class CocoError(ActiveposeError, ValueError):
    """A COCO keypoint file is malformed or inconsistent. `problems` lists every finding."""

    def __init__(self, path: str | Path | None, problems: list[str]):
        self.path = str(path) if path is not None else "<memory>"
        self.problems = problems
        shown = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        text = "\n".join(f"  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(f"{self.path}: {len(problems)} problem(s):\n{text}")


@dataclass
class Frame:
    """One image and its people: `keypoints` is (N, K, 3) float32 of (x, y, v)."""

    image_id: int
    file_name: str
    width: int
    height: int
    keypoints: np.ndarray
    annotation_ids: list[int] = field(default_factory=list)
    # Footage: the video the image is a frame of and its frame index (COCO `images[].video` / `.frame`, as in
    # `youtube_pose`); None for a still photo.
    video: str | None = None
    frame: int | None = None

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass
class CocoKeypoints:
    """A COCO keypoint data set with a single person category."""

    frames: list[Frame]
    skeleton: Skeleton
    root: Path
    path: Path | None = None
    category_id: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    # True when the file's annotations carry a "score": model predictions (a COCO results file turned into
    # a data set), not human labels. Callers that need ground truth should refuse such a file.
    has_scores: bool = False

    def __post_init__(self) -> None:
        self._index = {f.image_id: i for i, f in enumerate(self.frames)}

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    @property
    def image_ids(self) -> list[int]:
        return [f.image_id for f in self.frames]

    def frame(self, image_id: int) -> Frame:
        try:
            return self.frames[self._index[int(image_id)]]
        except KeyError:
            raise KeyError(f"{self.path or '<memory>'}: no image with id {image_id}") from None

    def image_path(self, frame: Frame | int) -> Path:
        if not isinstance(frame, Frame):
            frame = self.frame(frame)
        p = Path(frame.file_name)
        return p if p.is_absolute() else self.root / p

    def subset(self, image_ids) -> CocoKeypoints:
        """Return the data set restricted to `image_ids`, in the given order."""
        return replace(self, frames=[self.frame(i) for i in image_ids])

    @property
    def num_people(self) -> int:
        return sum(f.num_people for f in self.frames)

    def to_dict(self) -> dict[str, Any]:
        images, annotations = [], []
        next_ann = 1 + max((a for f in self.frames for a in f.annotation_ids), default=0)
        for f in self.frames:
            image = {"id": f.image_id, "file_name": f.file_name, "width": f.width, "height": f.height}
            if f.video is not None:
                image["video"] = f.video
            if f.frame is not None:
                image["frame"] = f.frame
            images.append(image)
            ann_ids = list(f.annotation_ids)
            while len(ann_ids) < f.num_people:
                ann_ids.append(next_ann)
                next_ann += 1
            for ann_id, kps in zip(ann_ids, f.keypoints, strict=False):
                annotations.append(annotation_dict(ann_id, f.image_id, kps, self.category_id))
        return {
            "info": self.info,
            "categories": [self.skeleton.to_coco_category(self.category_id)],
            "images": images,
            "annotations": annotations,
        }


def annotation_dict(ann_id: int, image_id: int, kps: np.ndarray, category_id: int = 1) -> dict[str, Any]:
    """Return a COCO annotation for one person's (K, 3) keypoints, with bbox/area from labelled points."""
    kps = np.asarray(kps, dtype=np.float64)
    bbox = keypoint_bbox(kps)
    return {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": category_id,
        "iscrowd": 0,
        "keypoints": [round(float(v), 2) if i % 3 != 2 else int(v) for i, v in enumerate(kps.reshape(-1))],
        "num_keypoints": int((kps[:, 2] > 0).sum()),
        "bbox": [round(float(b), 2) for b in bbox],
        "area": round(float(bbox[2] * bbox[3]), 2),
    }


def keypoint_bbox(kps: np.ndarray, pad: float = 0.15) -> np.ndarray:
    """Return [x, y, w, h] around the labelled keypoints, padded by `pad` of the size on each side."""
    vis = kps[:, 2] > 0
    if not vis.any():
        return np.zeros(4)
    xy = kps[vis, :2]
    lo, hi = xy.min(0), xy.max(0)
    size = np.maximum(hi - lo, 1.0)
    lo = lo - pad * size
    return np.array([lo[0], lo[1], size[0] * (1 + 2 * pad), size[1] * (1 + 2 * pad)])


def load_coco(
    path: str | Path,
    *,
    skeleton: Skeleton | None = None,
    check_images: bool = True,
    read_image_headers: bool = False,
) -> CocoKeypoints:
    """Return the validated data set in `path`; raise CocoError listing every problem found.

    Checks: JSON syntax (no NaN, infinity or nesting too deep to parse) and structure with strict types (ids
    and sizes are 64-bit integers, never floats, strings or bools; see `check_people` for keypoints), at
    most MAX_PEOPLE_PER_IMAGE people per image, file names without control characters, one keypoint category,
    unique image and annotation ids,
    annotations pointing at known images and at the keypoint category, keypoint counts matching the
    skeleton, labelled keypoints inside the image (up to a margin of 1 % of the longer side, clipped onto
    the border), image files present (`check_images`) and readable with the stated size as training reads
    them, i.e. with the EXIF orientation applied (`read_image_headers`, slower: opens every file header).
    No annotation is dropped silently: one that cannot be used is a listed problem. `has_scores` of the
    result tells whether the annotations carry a "score" (model predictions rather than labels).
    """
    path = Path(path)
    if not path.is_file():
        raise CocoError(path, ["file not found"])
    try:
        data = read_json(path.read_bytes())
    except ValueError as exc:
        raise CocoError(path, [f"not valid JSON: {exc}"]) from None
    return parse_coco(
        data, path=path, root=path.parent, skeleton=skeleton,
        check_images=check_images, read_image_headers=read_image_headers,
    )  # fmt: skip


def parse_coco(
    data: Any,
    *,
    path: Path | None = None,
    root: Path | None = None,
    skeleton: Skeleton | None = None,
    check_images: bool = True,
    read_image_headers: bool = False,
) -> CocoKeypoints:
    """Return the validated data set held in a parsed COCO dict (see `load_coco`)."""
    problems: list[str] = []
    if isinstance(data, list) and data and all(isinstance(a, dict) and "score" in a for a in data):
        raise CocoError(
            path,
            ["this is a COCO results file (a list of scored predictions), not a keypoint data set with "
             "'images', 'annotations' and 'categories'"],
        )  # fmt: skip
    if not isinstance(data, dict):
        raise CocoError(path, ["top level must be a JSON object with 'images', 'annotations', 'categories'"])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problems.append(f"missing or non-list '{key}'")
    if not isinstance(data.get("info") or {}, dict):
        problems.append(f"'info' must be an object, got {shown(data['info'])}")
    if problems:
        raise CocoError(path, problems)

    category_ids: set[int] = set()
    for n, c in enumerate(data["categories"]):
        if isinstance(c, dict) and is_int(c.get("id")):
            category_ids.add(c["id"])
        else:
            problems.append(f"categories[{n}]: needs an integer 'id'")
    if problems:
        raise CocoError(path, problems)
    cats = [c for c in data["categories"] if "keypoints" in c]
    if not cats:
        raise CocoError(path, ["no category with a 'keypoints' list"])
    if len(cats) > 1:
        LOG.warning(
            "%s: %d keypoint categories; using the first (%s)", path, len(cats), shown(cats[0].get("name"))
        )
    category = cats[0]
    other_keypoint_ids = {c["id"] for c in cats[1:]}
    try:
        file_skeleton = Skeleton.from_coco_category(category)
    except SkeletonError as exc:
        raise CocoError(path, [f"category {category.get('id')}: {exc}"]) from exc
    if skeleton is None:
        skeleton = match_preset(file_skeleton)
    elif skeleton.keypoints != file_skeleton.keypoints:
        raise CocoError(
            path,
            [f"category keypoints {list(file_skeleton.keypoints)} do not match skeleton {skeleton.name!r} "
             f"{list(skeleton.keypoints)}"],
        )  # fmt: skip
    k = skeleton.num_keypoints
    category_id = category["id"]
    root = Path(root) if root is not None else Path(".")

    frames: dict[int, Frame] = {}
    for n, img in enumerate(data["images"]):
        where = f"images[{n}]"
        if not isinstance(img, dict):
            problems.append(f"{where}: must be an object, got {shown(img)}")
            continue
        bad = [
            f"{key} {shown(img.get(key))}" for key in ("id", "width", "height") if not is_int(img.get(key))
        ]
        if bad:
            problems.append(f"{where}: 'id', 'width' and 'height' must be integers, got {', '.join(bad)}")
            continue
        image_id, file_name, width, height = img["id"], img.get("file_name"), img["width"], img["height"]
        if not _file_name_ok(file_name):
            problems.append(f"{where}: file_name {shown(file_name)} is not a file path")
            continue
        where = f"image id {image_id} ({shown(file_name)})"
        if image_id in frames:
            problems.append(f"{where}: duplicate image id")
            continue
        if width <= 0 or height <= 0:
            problems.append(f"{where}: non-positive size {width}x{height}")
        if check_images:
            fp = Path(file_name) if Path(file_name).is_absolute() else root / file_name
            if not fp.is_file():
                problems.append(f"{where}: image file missing: {fp}")
            elif read_image_headers:
                try:
                    w, h = image_size(fp)
                    if (w, h) != (width, height):
                        problems.append(f"{where}: {_size_mismatch(fp, w, h, width, height)}")
                except ImageReadError as exc:
                    problems.append(f"{where}: unreadable image: {exc}")
        video, frame = img.get("video"), img.get("frame")
        if is_int(video):  # a numeric video id, as some footage data sets have
            video = str(video)
        if video is not None and not (isinstance(video, str) and video.strip() and len(video) <= 512):
            problems.append(
                f"{where}: 'video' must be a non-empty name (at most 512 characters), got {shown(video)}"
            )
            continue
        if frame is not None and not (is_int(frame) and frame >= 0):
            problems.append(f"{where}: 'frame' must be a frame index (an integer >= 0), got {shown(frame)}")
            continue
        frames[image_id] = Frame(
            image_id, file_name, width, height, np.zeros((0, k, 3), np.float32), video=video, frame=frame
        )

    people: dict[int, list[np.ndarray]] = {i: [] for i in frames}
    ann_ids: dict[int, list[int]] = {i: [] for i in frames}
    seen_ann: set[int] = set()
    has_scores = False
    ignored: dict[int, int] = {}  # annotations of non-keypoint categories (e.g. a full instances file)
    count: dict[int, int] = {}  # people per image
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{n}]: must be an object, got {shown(ann)}")
            continue
        if not (is_int(ann.get("id")) and is_int(ann.get("image_id"))):
            problems.append(
                f"annotations[{n}]: needs integer 'id' and 'image_id', got id {shown(ann.get('id'))}, "
                f"image_id {shown(ann.get('image_id'))}"
            )
            continue
        ann_id, image_id = ann["id"], ann["image_id"]
        where = f"annotation id {ann_id} (image id {image_id})"
        if ann_id in seen_ann:
            problems.append(f"{where}: duplicate annotation id")
            continue
        seen_ann.add(ann_id)
        has_scores = has_scores or "score" in ann
        ann_category = ann.get("category_id", category_id)
        if not is_int(ann_category):
            problems.append(f"{where}: 'category_id' must be an integer, got {shown(ann_category)}")
            continue
        if ann_category != category_id:
            if ann_category not in category_ids:
                problems.append(
                    f"{where}: category_id {ann_category} is not in 'categories' "
                    f"(ids: {', '.join(map(str, sorted(category_ids)))})"
                )
            elif ann_category in other_keypoint_ids:
                problems.append(
                    f"{where}: category_id {ann_category} is a second keypoint category; only one is "
                    f"supported (id {category_id}, {shown(category.get('name'))})"
                )
            else:
                ignored[ann_category] = ignored.get(ann_category, 0) + 1
            continue
        if image_id not in frames:
            problems.append(f"{where}: refers to an unknown image id")
            continue
        count[image_id] = count.get(image_id, 0) + 1
        if count[image_id] > MAX_PEOPLE_PER_IMAGE:
            continue  # one problem per image, below
        raw = ann.get("keypoints")  # COCO's flat [x1, y1, v1, x2, ...]
        if not isinstance(raw, list) or len(raw) != 3 * k:
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            problems.append(
                f"{where}: keypoint count mismatch: {got} values, expected {3 * k} ({k} keypoints x 3)"
            )
            continue
        f = frames[image_id]
        person = [raw[i : i + 3] for i in range(0, 3 * k, 3)]
        kps, found = check_people([person], skeleton, f.width, f.height, where=[where], integer_flags=True)
        if found:
            problems += found
            continue
        people[image_id].append(kps[0])
        ann_ids[image_id].append(ann_id)

    problems += [
        f"image id {i}: {n} people, at most {MAX_PEOPLE_PER_IMAGE} per image"
        for i, n in count.items()
        if n > MAX_PEOPLE_PER_IMAGE
    ]
    if problems:
        raise CocoError(path, problems)
    if ignored:
        LOG.warning(
            "%s: ignoring %d annotation(s) of non-keypoint categories %s",
            path, sum(ignored.values()), sorted(ignored),
        )  # fmt: skip
    for image_id, f in frames.items():
        if people[image_id]:
            f.keypoints = np.stack(people[image_id]).astype(np.float32)
        f.annotation_ids = ann_ids[image_id]
    return CocoKeypoints(
        frames=list(frames.values()),
        skeleton=skeleton,
        root=root,
        path=path,
        category_id=category_id,
        info=dict(data.get("info") or {}),
        has_scores=has_scores,
    )


def outside_margin(width: float, height: float) -> float:
    """How far past the border (pixels) a labelled keypoint may lie and still be clipped onto it: 1 % of the
    longer image side (`OUTSIDE_TOLERANCE`), at least 1 px."""
    return max(1.0, OUTSIDE_TOLERANCE * max(width, height))


def check_people(
    people: Any,
    skeleton: Skeleton | int,
    width: float,
    height: float,
    *,
    where: str | Sequence[str] = "",
    integer_flags: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """The one keypoint rule: return (people as a cleaned (N, K, 3) float64 array, the problems found).

    Used by COCO validation (`parse_coco`), the store (`Project.add_labels` and the labelling page's saves)
    and the labelling desk, so the three accept and refuse the same keypoints. `people` is (N, K, 3) (x, y, v)
    as an array or nested lists; an empty array or list (N = 0) is an image with nobody in it. `skeleton`
    gives K and the keypoint names for the messages (or pass K alone). The rules:

    - the shape is (N, K, 3) with K the skeleton's keypoint count;
    - x / y are numbers: ints or floats, never bools, strings or None (Python ints must fit 64 bits);
      visibility flags are the numbers 0, 1 or 2 (1 = labelled but occluded, 2 = visible), never bools or
      strings; with `integer_flags` (a COCO file) they must be integers, 2.0 is refused;
    - every value is finite (no NaN or infinity);
    - labelled keypoints (v > 0) lie inside the `width` x `height` image up to `outside_margin` (1 % of the
      longer side, >= 1 px): those a little past the border (an exporter's rounding, a click on the edge) are
      clipped onto it; farther out is a problem.

    In the cleaned array the unlabelled keypoints (v = 0) have x = y = 0. `where` names the image in the
    messages ("image id 3" -> "image id 3: person 0 keypoint 'nose' at ..."), or is one name per person
    ("people[0]", or a COCO annotation id). A problem of the whole array (its type or shape) is listed once,
    otherwise each bad person's first problem is; the array is meaningful only when there is no problem.
    """
    if isinstance(skeleton, Skeleton):
        k, names, sk_text = skeleton.num_keypoints, skeleton.keypoints, f"the skeleton {skeleton.name!r}"
    else:
        k, names, sk_text = int(skeleton), None, "the skeleton"
    empty = np.zeros((0, k, 3))
    each = None if isinstance(where, str) else list(where)
    whole = f"{where}: " if isinstance(where, str) and where else ""

    def person(p: int) -> str:
        if each is not None:
            return each[p]
        return f"{where}: person {p}" if where else f"person {p}"

    def keypoint(p: int, j: int) -> str:
        name = repr(names[j]) if names is not None else str(j)
        return f"{person(p)}: keypoint {name}" if each is not None else f"{person(p)} keypoint {name}"

    numeric = isinstance(people, np.ndarray) and people.dtype.kind in "iuf"
    if isinstance(people, np.ndarray) and not numeric and people.dtype.kind != "O":
        return empty, [f"{whole}keypoints must be numbers, got an array of {people.dtype}"]
    if not isinstance(people, (list, tuple, np.ndarray)):
        return empty, [f"{whole}keypoints must be a list of people, got {shown(people)}"]
    try:  # a copy (the caller's array is left as it is); bools and numeric strings convert too: the
        # scan below refuses them
        kps = np.array(people, dtype=np.float64)
        shape = kps.shape
    except (TypeError, ValueError, OverflowError):  # ragged, or not numbers at all
        kps, shape = None, _shape(people)
    if shape is not None and len(shape) >= 1 and shape[0] == 0:
        return empty, []  # nobody in the image
    if each is not None and len(each) != len(people):
        raise ValueError(f"check_people: {len(each)} names in `where` for {len(people)} people")
    if shape is None or len(shape) != 3 or shape[1:] != (k, 3):
        return empty, _shape_problems(people, shape, k, sk_text, whole if each is None else None, person)

    problems: list[str] = []
    if not numeric:  # nested lists: no bools, strings or None posing as numbers
        for p, points in enumerate(people):
            for j, (x, y, v) in enumerate(points):
                if type(x) is float and type(y) is float and type(v) is int and 0 <= v <= 2:
                    continue  # the common case, checked quickly
                if not (_is_number(x) and _is_number(y)):
                    got = y if _is_number(x) else x
                    problems.append(f"{keypoint(p, j)}: x / y must be numbers, got {shown(got)}")
                    break
                if not _is_number(v, integer=integer_flags):
                    problems.append(f"{keypoint(p, j)}: {_FLAGS}, got {shown(v)}")
                    break
        if problems:
            return empty, problems
        if kps is None:
            kps = np.array(people, dtype=np.float64)

    finite = np.isfinite(kps).all(axis=2)
    flags = kps[..., 2]
    flag_ok = (flags == 0) | (flags == 1) | (flags == 2)
    lab = flag_ok & (flags > 0)
    x, y = kps[..., 0], kps[..., 1]
    t = outside_margin(width, height)
    outside = lab & ((x < -t) | (y < -t) | (x > width + t) | (y > height + t))
    bad = ~finite.all(axis=1) | ~flag_ok.all(axis=1) | outside.any(axis=1)
    for p in np.flatnonzero(bad) if bad.any() else ():
        p = int(p)
        if not finite[p].all():
            j = int(np.flatnonzero(~finite[p])[0])
            name = repr(names[j]) if names is not None else str(j)
            if each is None:  # "image id 4: keypoints contain NaN or infinity (person 0 keypoint 'nose')"
                problems.append(f"{whole}keypoints contain NaN or infinity (person {p} keypoint {name})")
            else:
                problems.append(f"{each[p]}: keypoints contain NaN or infinity (keypoint {name})")
        elif not flag_ok[p].all():
            j = int(np.flatnonzero(~flag_ok[p])[0])
            problems.append(f"{keypoint(p, j)}: {_FLAGS}, got {_number_text(flags[p, j])}")
        else:
            j = int(np.flatnonzero(outside[p])[0])
            problems.append(
                f"{keypoint(p, j)} at ({x[p, j]:.1f}, {y[p, j]:.1f}) lies outside the {width}x{height} image "
                f"({int(outside[p].sum())} such keypoint(s))"
            )
    kps[..., 0] = np.where(lab, np.minimum(np.maximum(x, 0.0), width), 0.0)
    kps[..., 1] = np.where(lab, np.minimum(np.maximum(y, 0.0), height), 0.0)
    return kps, problems


_FLAGS = "visibility flags must be the integers 0, 1 or 2"


def _is_number(value: Any, integer: bool = False) -> bool:
    """True for an int (fitting 64 bits) or, unless `integer`, a float, Python's or numpy's; never a bool."""
    if type(value) is int:
        return -_INT64 <= value < _INT64
    if isinstance(value, np.integer):
        return True
    return not integer and isinstance(value, (float, np.floating))


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of nested lists / arrays, or None where they are ragged (lists of different lengths)."""
    try:
        array = np.array(value, dtype=object)
    except (ValueError, TypeError):
        return None
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in array.reshape(-1)):
        return None
    return array.shape


def _shape_problems(people, shape, k: int, sk_text: str, whole: str | None, person) -> list[str]:
    """Why `people` is not (N, K, 3): for the whole array when it is one (`whole` not None), else per person."""
    if whole is not None and shape is not None:
        detail = (
            f": {shape[1]} keypoints per person, {sk_text} has {k}"
            if len(shape) == 3 and shape[2] == 3
            else f" for {sk_text}"
        )
        return [f"{whole}keypoint array of shape {shape}, expected (N, {k}, 3){detail}"]
    problems = []
    for p, kps in enumerate(people):
        s = _shape(kps)
        if s is not None and len(s) == 2 and s[1] == 3 and s[0] != k:
            problems.append(f"{person(p)} has {s[0]} keypoints, {sk_text} has {k}")
        elif s != (k, 3):
            problems.append(f"{person(p)}: keypoints must be {k} (x, y, v) triples, got shape {s}")
    return problems or [f"{whole or ''}keypoints must be (N, {k}, 3) numbers, one (x, y, v) per keypoint"]


def _file_name_ok(name: Any) -> bool:
    """True for a string that can be a file path: not empty, no control characters, no part too long."""
    return (
        isinstance(name, str)
        and bool(name)
        and not _CONTROL.search(name)
        and all(len(part.encode("utf-8", "replace")) <= _FILE_NAME_BYTES for part in Path(name).parts)
    )


def _size_mismatch(path: Path, width: int, height: int, json_width: int, json_height: int) -> str:
    """Return the problem text for an image whose (EXIF-oriented) size differs from the JSON's."""
    text = f"image file {path} is {width}x{height} but the JSON says {json_width}x{json_height}"
    try:
        orientation = exif_orientation(path)
    except ImageReadError:
        orientation = 1
    if orientation >= 5 and (height, width) == (json_width, json_height):
        text += (
            f" (its EXIF orientation {orientation} turns the stored {height}x{width} pixels by 90 degrees; "
            "the JSON has the unrotated size, so the keypoints would not line up)"
        )
    elif orientation != 1:
        text += f" (EXIF orientation {orientation} applied)"
    return text


def save_coco(dataset: CocoKeypoints, path: str | Path, indent: int | None = None) -> Path:
    """Write `dataset` as COCO keypoint JSON atomically; file names stay relative to `dataset.root`."""
    return atomic_write_json(path, dataset.to_dict(), indent=indent)


def results_to_coco(
    predictions: dict[int, tuple[np.ndarray, np.ndarray]], category_id: int = 1
) -> list[dict[str, Any]]:
    """Return a COCO results list from {image_id: (keypoints (N, K, 3), scores (N,))}."""
    out = []
    for image_id, (kps, scores) in predictions.items():
        for person, score in zip(kps, scores, strict=True):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_id,
                    "keypoints": [round(float(v), 2) for v in np.asarray(person, np.float64).reshape(-1)],
                    "score": round(float(score), 5),
                }
            )
    return out
