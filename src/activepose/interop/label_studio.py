"""Label Studio: export a round as pre-annotated tasks, import Label Studio's JSON export back.

Labelling config (`label_studio_config`, written by `activepose export --format label-studio` next to the
tasks as <stem>.config.xml): one `KeyPointLabels` label per keypoint name (`from_name="kp"`) on the image
(`to_name="image"`), and a per-region person choice (`<Choices name="person" perRegion="true"
required="true">` with choices "person 1" ... "person N"). Label Studio points carry no person of their own:
the person choice says which person a point belongs to. How an annotator uses it: click a point (on the
image or in the Regions list) and pick its person number under the image; a point added by hand starts
without one. Label Studio refuses to submit while a point has no person (it selects that point and says so),
so each person's points carry the same number, and a second person gets a number of its own. Label Studio
stores the choice as a result item of type "choices" with the point's `id` (`value.choices: ["person 2"]`).
Checked on Label Studio 1.23.2's own page (tests/test_label_studio_live.py drives it in headless Chromium):
pre-annotated points load with their person, keep their `p<n>k<j>` id, `meta` and person when dragged
(origin "prediction-changed"), and Submit is refused until every hand-placed point has a person.

Export (`export_round(..., fmt="label-studio")`): one task per image of the round, in rank order,
`{"data": {"image": URL, "activepose_image_id": ID}, "predictions": [{"model_version", "score", "result"}]}`.
Every predicted keypoint (v > 0) of person n (0-based) is a `keypointlabels` region with id `p<n>k<j>`
(`value.x` / `value.y` in percent of the image width / height, `score` the keypoint's own confidence,
`meta.person` = n and `meta.person_score` the person's score) plus its person choice "person <n+1>" under the
same id, so an accepted or dragged pre-annotated point keeps its person. Image URLs: `ls_root=DIR` writes
`/data/local-files/?d=<path relative to DIR>`, which Label Studio serves with
`LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=DIR` and a Local Files
storage (`local_files_setup` says what to set); otherwise `url_prefix` + the path (`paths`: relative to the
tasks file's folder, or absolute).

Import (`import_label_studio`) reads Label Studio's full JSON export ("JSON" in its Export dialog or
`/api/projects/<id>/export?exportType=JSON`). JSON_MIN, CSV / TSV and COCO exports are refused with a message
that says to export "JSON": JSON_MIN and CSV flatten the regions and lose their ids and person choices, and
Label Studio's COCO export merges all people of an image into one. Each task's latest annotation decides:
- skipped in Label Studio (`was_cancelled`): with `round_id` the image becomes 'skipped' (when still queued);
- otherwise its regions are the image's labels; `lead_time` is stored as the image's labelling seconds and
  `completed_by` (a user id, or a user with an `email`) as its annotator: its email or name when the labelling
  page's rule (`coco.ANNOTATOR_NAME`) allows it, else "label-studio user <id>"; anything else is refused.
A point's person is its person choice; else `meta.person` (or `meta.instance`); else the person of an id
`p<N>k<J>`. In a task where some point has a person, a point without one is refused (naming the task, the
region and the keypoint) rather than guessed; a task where no point has one (a config without the person
choice) is one person. A keypoint name twice for one person is refused. Imported points get v = 2 (Label
Studio has no occluded flag); keypoints not placed get v = 0. Types are checked strictly (ids are 64-bit
integers, x / y finite numbers, never strings or bools; no NaN, infinity or nesting too deep to parse), and an
image holds at most `coco.MAX_PEOPLE_PER_IMAGE` people.

Model output is not a human label: Label Studio marks each region with `origin` ("prediction": a
pre-annotation submitted untouched, "prediction-changed": one the annotator edited, "manual": drawn by hand).
Regions with origin "prediction" are refused unless `accept_predictions`; a task's `predictions` themselves
are never imported. Labels are stored as `Project.add_labels` stores them (changed labels replace an image's
current ones, kept as history; the same labels under another file name add nothing), and each file is
recorded once (`Project.import_labels`).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from ..pose.coco import ANNOTATOR_NAME, MAX_PEOPLE_PER_IMAGE, is_int, is_real, read_json, shown
from ..pose.skeleton import Skeleton
from ..project.matching import ImageMatcher
from ..project.schema import StoreError
from ..project.store import Project
from .paths import image_ref

FROM_NAME = "kp"
TO_NAME = "image"
PERSON_NAME = "person"
DEFAULT_PEOPLE = 10  # person choices in the labelling config (more when a prediction has more people)
POINT_WIDTH = 0.75  # Label Studio point size, percent of the image width
LOCAL_FILES_URL = "/data/local-files/?d="
_ID = re.compile(r"^p(\d+)k(\d+)$")
_PERSON = re.compile(r"^person (\d+)$")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio renames uploaded files to <hash8>-<name>
_COLOURS = {"left": "#1f77b4", "right": "#d62728"}
_OTHER = "#2ca02c"
_SHOWN_NAMES = 5  # annotators named in an import's summary line
_USE_JSON = "export 'JSON' in Label Studio (Export > JSON, or /api/projects/<id>/export?exportType=JSON) and import that"


def person_choice(n: int) -> str:
    """Return the person choice of person `n` (0-based), e.g. 'person 1'."""
    return f"person {n + 1}"


def label_studio_config(skeleton: Skeleton, people: int = DEFAULT_PEOPLE) -> str:
    """Return the Label Studio labelling config (XML): one KeyPointLabels label per keypoint name and a
    required per-point person choice with `people` choices."""
    if people < 1:
        raise ValueError(f"people must be at least 1, got {people}")
    labels = "\n".join(  # model_index: the keypoint order Label Studio's own COCO export needs
        f'    <Label value={quoteattr(name)} model_index="{j}" background='
        f"{quoteattr(_COLOURS.get(name.split('_')[0], _OTHER))}/>"
        for j, name in enumerate(skeleton.keypoints)
    )
    choices = "\n".join(f"    <Choice value={quoteattr(person_choice(n))}/>" for n in range(people))
    return (
        "<View>\n"
        f'  <KeyPointLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" opacity="0.9">\n'
        f"{labels}\n"
        "  </KeyPointLabels>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        f'  <Choices name="{PERSON_NAME}" toName="{TO_NAME}" perRegion="true" required="true" '
        'choice="single-radio" showInline="true"\n'
        '           requiredMessage="Every point needs its person: select the point, then pick its person number">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def config_people(predictions: Any) -> int:
    """Return the number of person choices a config needs for `predictions` (at least DEFAULT_PEOPLE)."""
    most = max((len(np.asarray(s).reshape(-1)) for _, s in (predictions or {}).values()), default=0)
    return max(DEFAULT_PEOPLE, most)


# --- export ------------------------------------------------------------------------------------------------
def _local_files_ref(project: Project, image_id: int, root: Path) -> str | None:
    """Return image `image_id`'s path relative to `root` (POSIX), or None when it is not under `root`."""
    fp = project.image_path(image_id)
    for a, b in ((Path(os.path.abspath(fp)), Path(os.path.abspath(root))), (fp.resolve(), root.resolve())):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            continue
    return None


def image_urls(
    project: Project, ids: list[int], out: Path, paths: str, url_prefix: str, ls_root: str | Path | None
) -> dict[int, str]:
    """Return {image_id: the task's image URL}; with `ls_root` refuse (StoreError) images not under it."""
    if ls_root is None:
        return {i: url_prefix + image_ref(project, i, out, paths) for i in ids}
    root = Path(ls_root)
    if not root.is_dir():
        raise StoreError(f"--ls-root {root}: not a folder")
    urls, outside = {}, []
    for i in ids:
        rel = _local_files_ref(project, i, root)
        if rel is None:
            outside.append(f"image id {i} ({os.path.abspath(project.image_path(i))}): not under {root}")
        else:
            urls[i] = LOCAL_FILES_URL + quote(rel, safe="/")
    if outside:
        raise StoreError(
            f"{project.folder}: {len(outside)} image(s) are not under the Label Studio document root {root}; "
            "give an --ls-root that holds every image of the round",
            outside,
        )
    return urls


def local_files_setup(project: Project, ids: list[int], ls_root: str | Path) -> list[str]:
    """Return the lines that say how to set up Label Studio for tasks exported with `ls_root`."""
    root = Path(os.path.abspath(ls_root))
    folders = [str(Path(os.path.abspath(project.image_path(i))).parent) for i in ids]
    storage = os.path.commonpath(folders) if folders else str(root)
    return [
        f"start Label Studio with: LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
        f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root} label-studio start",
        "create a project whose labelling config is the .config.xml written here (Settings > Labeling Interface > Code)",
        f"add a Local Files storage to it (Settings > Cloud Storage > Add Source Storage > Local files) with the "
        f"absolute local path {storage} ('Treat every bucket object as a source file' on; do not sync it)",
        "import the tasks file (Import), label, then Export > JSON",
    ]


def label_studio_tasks(
    project: Project,
    ids: list[int],
    urls: dict[int, str],
    preds: dict[int, tuple[np.ndarray, np.ndarray]],
    model_version: str,
) -> list[dict[str, Any]]:
    """Return the Label Studio tasks of `ids` with `preds` as pre-annotations (see the module docstring)."""
    return [_task(project, i, urls[i], preds, model_version) for i in ids]


def _task(
    project: Project,
    image_id: int,
    url: str,
    preds: dict[int, tuple[np.ndarray, np.ndarray]],
    model_version: str,
) -> dict[str, Any]:
    img = project.image(image_id)
    task: dict[str, Any] = {"data": {"image": url, "activepose_image_id": image_id}}
    if img.video is not None:  # footage: carried in the task data, matched on import
        task["data"].update(video=img.video, frame=img.frame)
    if image_id not in preds:
        return task
    kps, scores = preds[image_id]
    result = []
    for n, person in enumerate(kps):
        for j, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            common = {
                "id": f"p{n}k{j}",
                "to_name": TO_NAME,
                "original_width": img.width,
                "original_height": img.height,
                "image_rotation": 0,
            }
            where = {
                "x": 100.0 * float(x) / img.width,
                "y": 100.0 * float(y) / img.height,
                "width": POINT_WIDTH,
            }
            result.append(
                {
                    **common,
                    "from_name": FROM_NAME,
                    "type": "keypointlabels",
                    "value": {**where, "keypointlabels": [project.skeleton.keypoints[j]]},
                    "score": round(float(v), 5),  # the keypoint's own confidence
                    "meta": {"person": n, "person_score": round(float(scores[n]), 5)},
                }
            )
            result.append(
                {
                    **common,
                    "from_name": PERSON_NAME,
                    "type": "choices",
                    "value": {**where, "choices": [person_choice(n)]},
                }
            )
    score = float(np.mean(scores)) if len(scores) else 0.0
    task["predictions"] = [{"model_version": model_version, "score": round(score, 5), "result": result}]
    return task


# --- import ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelStudioImport:
    images: int  # tasks with an annotation, mapped to project images
    people: int
    new_labels: int  # label rows the store added (0 when the same labels were imported before)
    skipped_tasks: list[Any] = field(default_factory=list)  # task ids nobody annotated (left as they are)
    replaced: int = 0  # current label rows the import superseded (kept as history)
    already_imported: bool = False  # this very file (same bytes) was imported before
    round_completed: bool = False  # with complete_round: the round became 'labelled' in the same transaction
    skipped_images: list[int] = field(default_factory=list)  # image ids skipped in Label Studio
    marked_skipped: int = 0  # of those, queued images of the round this import marked 'skipped'
    seconds: float | None = None  # total labelling time (lead_time) of the imported images, when known
    annotators: list[str] = field(default_factory=list)  # who labelled them

    @property
    def message(self) -> str:
        """A one-line summary of the import."""
        parts = [f"{self.images} image(s), {self.people} people, {self.new_labels} new label(s)"]
        if self.replaced:
            parts.append(f"replacing {self.replaced} earlier label(s) (kept as history)")
        if self.skipped_images:
            parts.append(
                f"{len(self.skipped_images)} image(s) skipped in Label Studio"
                + (f" ({self.marked_skipped} marked skipped)" if self.marked_skipped else "")
            )
        if self.skipped_tasks:
            parts.append(f"{len(self.skipped_tasks)} task(s) without an annotation left as they are")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.0f} s of labelling")
        if self.annotators:
            more = len(self.annotators) - _SHOWN_NAMES
            parts.append(
                "by " + ", ".join(self.annotators[:_SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")
            )
        if self.already_imported:
            parts.append("already imported")
        if self.round_completed:
            parts.append("round completed")
        return "; ".join(parts)


def _file_name(ref: str) -> str:
    """Return the file name of a Label Studio image reference (a path, URL or `?d=` local-files URL)."""
    parsed = urlparse(ref)
    d = parse_qs(parsed.query).get("d")
    p = d[0] if d else unquote(parsed.path or ref)
    return PurePosixPath(p.replace("\\", "/")).name


def _read_tasks(path: Path) -> tuple[bytes, list[Any]]:
    """Read a Label Studio full JSON export; refuse the other export formats, saying which one to use."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot import: {exc}") from exc
    if raw.startswith(b"PK\x03\x04"):
        raise StoreError(
            f"{path}: cannot import: a ZIP archive (Label Studio's COCO and YOLO exports are ZIP files; its COCO "
            f"export merges all people of an image into one), not Label Studio's JSON export; {_USE_JSON}"
        )
    try:
        data = read_json(raw)
    except ValueError as exc:
        first = raw.lstrip()[:4096].decode("utf-8", "replace").splitlines()
        head = first[0] if first else ""
        if head and head[0] not in "[{" and ("," in head or "\t" in head):
            kind = "TSV" if "\t" in head else "CSV"
            raise StoreError(
                f"{path}: cannot import: a {kind} file (Label Studio's {kind} export?), not Label Studio's JSON "
                f"export: {kind} flattens the regions and loses which person each point belongs to; {_USE_JSON}"
            ) from None
        raise StoreError(f"{path}: cannot import: not JSON ({exc}); {_USE_JSON}") from None
    if isinstance(data, dict):
        if "images" in data or ("annotations" in data and "categories" in data):
            raise StoreError(
                f"{path}: cannot import: a COCO file, not Label Studio's JSON export (Label Studio's COCO export "
                f"merges all people of an image into one); {_USE_JSON}. A COCO file from activepose or CVAT "
                "imports with --format coco"
            )
        if "data" not in data:
            raise StoreError(
                f"{path}: cannot import: a JSON object that is not a Label Studio task; {_USE_JSON}"
            )
        data = [data]
    if not isinstance(data, list):
        raise StoreError(f"{path}: cannot import: expected a JSON list of Label Studio tasks; {_USE_JSON}")
    flat = [t for t in data if isinstance(t, dict) and "data" not in t]
    if flat:
        keys = set().union(*(t.keys() for t in flat))
        minimal = keys & {"annotation_id", "annotator", "lead_time", "created_at", "updated_at", "image"}
        what = "Label Studio's JSON_MIN export" if minimal else "tasks without 'data'"
        raise StoreError(
            f"{path}: cannot import: {len(flat)} of {len(data)} item(s) have no 'data': this is {what}, which "
            f"flattens the regions and loses which person each point belongs to; {_USE_JSON}"
        )
    return raw, data


def _latest(task: dict[str, Any]) -> dict[str, Any] | None:
    """Return the task's latest annotation (by id when all ids are numbers, else the last listed)."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    if not anns:
        return None
    if all(isinstance(a.get("id"), int) for a in anns):
        anns.sort(key=lambda a: a["id"])
    return anns[-1]


def _annotator(ann: dict[str, Any], where: str, problems: list[str]) -> str | None:
    """Return who made the annotation as a name the labelling page allows (`ANNOTATOR_NAME`), or None.

    `completed_by` is a Label Studio user id ("label-studio user <id>"), a user object (its email or username
    when the rule allows it, else its id) or a name; anything else, or a name the rule refuses, is a problem.
    """
    who = ann.get("completed_by")
    if who is None or who == "":
        return None
    user = who.get("id") if isinstance(who, dict) else who
    names = [who.get("email"), who.get("username")] if isinstance(who, dict) else [who]
    names.append(f"label-studio user {user}" if is_int(user) else None)
    name = next((n for n in names if isinstance(n, str) and ANNOTATOR_NAME.fullmatch(n)), None)
    if name is None:
        problems.append(
            f"{where}: completed_by {shown(who)} is not an annotator name (a Label Studio user id, or 1-64 "
            "letters, digits, spaces, '.', '_', '@' or '-')"
        )
    return name


def _lead_time(ann: dict[str, Any], where: str, problems: list[str]) -> float | None:
    t = ann.get("lead_time")
    if t is None:
        return None
    if not is_real(t) or t < 0:
        problems.append(f"{where}: lead_time {shown(t)} is not a number of seconds")
        return None
    return float(t)


def _region_person(item: dict[str, Any]) -> int | None:
    """Return a keypoint region's person from its `meta.person` / `meta.instance` or its `p<N>k<J>` id."""
    meta = item.get("meta")
    if isinstance(meta, dict):
        for key in ("person", "instance"):
            value = meta.get(key)
            if is_int(value) and value >= 0:
                return value
    m = _ID.match(str(item.get("id", "")))
    return int(m.group(1)) if m else None


def _value(item: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any] | None:
    """Return a result region's `value` object; a missing or non-object one is a listed problem."""
    value = item.get("value")
    if not isinstance(value, dict):
        problems.append(
            f"{where}: region {shown(item.get('id'))}: 'value' must be an object, got {shown(value)}"
        )
        return None
    return value


def _task_people(
    result: list[Any], project: Project, width: int, height: int, where: str
) -> tuple[np.ndarray, list[str]]:
    names = {n: j for j, n in enumerate(project.skeleton.keypoints)}
    k = len(names)
    problems: list[str] = []
    chosen: dict[str, int] = {}  # region id -> person, from the per-region person choice
    for item in result:
        if (
            not isinstance(item, dict)
            or item.get("type") != "choices"
            or item.get("from_name") != PERSON_NAME
        ):
            continue
        value = _value(item, where, problems)
        if value is None:
            continue
        picked = value.get("choices")
        m = (
            _PERSON.fullmatch(picked[0])
            if isinstance(picked, list) and len(picked) == 1 and isinstance(picked[0], str)
            else None
        )
        if m is None or int(m.group(1)) < 1:
            problems.append(
                f"{where}: region {shown(item.get('id'))} has person choice {shown(picked)}, "
                "expected one 'person N'"
            )
            continue
        if item.get("id") not in (None, ""):  # a choice belongs to the region with its id
            chosen[str(item["id"])] = int(m.group(1)) - 1
    points: list[tuple[str, int, float, float, int | None]] = []  # (region id, keypoint, x, y, person)
    for item in result:
        if not isinstance(item, dict) or item.get("type") != "keypointlabels":
            continue  # other controls (text areas, relations) are not keypoints
        rid = "" if item.get("id") is None else str(item["id"])
        value = _value(item, where, problems)
        if value is None:
            continue
        labels = value.get("keypointlabels")
        if not (
            isinstance(labels, list)
            and len(labels) == 1
            and isinstance(labels[0], str)
            and labels[0] in names
        ):
            problems.append(
                f"{where}: keypoint region {shown(rid)} has labels {shown(labels)}, expected one keypoint name"
            )
            continue
        x, y = value.get("x"), value.get("y")
        if not (is_real(x) and is_real(y)):
            problems.append(
                f"{where}: keypoint region {shown(rid)}: x / y must be numbers, got {shown(x)} / {shown(y)}"
            )
            continue
        person = chosen[rid] if rid and rid in chosen else _region_person(item)
        points.append((rid, names[labels[0]], x / 100.0 * width, y / 100.0 * height, person))
    grouped = any(p is not None for *_, p in points)
    groups: dict[int, np.ndarray] = {}
    first: dict[tuple[int, int], str] = {}  # (person, keypoint) -> region id that placed it
    for rid, j, x, y, person in points:
        name = project.skeleton.keypoints[j]
        if person is None:
            if grouped:
                problems.append(
                    f"{where}: region {shown(rid)} (keypoint {name!r}) has no person: select the point in Label "
                    "Studio and pick its person"
                )
                continue
            person = 0  # no point of the task has a person: the task is one person
        kps = groups.setdefault(person, np.zeros((k, 3)))
        if kps[j, 2] > 0:
            problems.append(
                f"{where}: region {shown(rid)}: {person_choice(person)} has keypoint {name!r} twice "
                f"(also region {shown(first[(person, j)])})"
                + ("" if grouped else "; pick each point's person in Label Studio")
            )
            continue
        first[(person, j)] = rid
        kps[j] = (x, y, 2)
    people = [groups[p] for p in sorted(groups) if (groups[p][:, 2] > 0).any()]
    return (np.stack(people) if people else np.zeros((0, k, 3))), problems


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
    tolerated). Each task's latest annotation is used: skipped in Label Studio (`was_cancelled`), the image
    becomes 'skipped' (with `round_id`, when still queued); else its regions become the image's labels (an
    annotation with no keypoints: labelled with nobody), with its `lead_time` as the image's seconds and its
    `completed_by` as the annotator. Tasks without an annotation are left alone and listed. With `round_id`,
    every image must belong to that round. `source` defaults to 'label-studio:<file name>'. Importing the same
    file again, or the same labels from another file, adds nothing; changed labels replace an image's current
    ones (kept as history). Regions Label Studio marks `origin: "prediction"` (pre-annotations submitted
    untouched) are refused unless `accept_predictions`. `complete_round` (needs `round_id`) moves the round
    to 'labelled' in the same transaction once all its images are labelled or skipped.
    """
    path = Path(path)
    project.check_not_own_database(path)
    raw, tasks = _read_tasks(path)
    source = source or f"label-studio:{path.name}"
    matcher = ImageMatcher((i, (r := project.image(i)).path, r.video, r.frame) for i in project.image_ids())
    in_round = None if round_id is None else {i for i, _, _ in project.round(round_id).items}
    labels: dict[int, np.ndarray] = {}
    seconds: dict[int, float] = {}
    annotators: dict[int, str] = {}
    cancelled: list[int] = []
    seen: set[int] = set()
    problems: list[str] = []
    predicted: list[str] = []
    unannotated: list[Any] = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            problems.append(f"tasks[{n}]: not a JSON object")
            continue
        tid = task.get("id", f"#{n}")
        where = f"task {tid}" if is_int(tid) or "id" not in task else f"task {shown(tid)}"
        if not isinstance(task.get("annotations") or [], list):
            problems.append(f"{where}: annotations must be a list, got {shown(task['annotations'])}")
            continue
        ann = _latest(task)
        if ann is None:
            unannotated.append(tid)
            continue
        data = task.get("data") or {}
        image_id, why = _map_task(matcher, data if isinstance(data, dict) else {})
        if image_id is None:
            problems.append(
                f"{where} (image {shown(data.get('image') if isinstance(data, dict) else data)}): {why}"
            )
            continue
        if in_round is not None and image_id not in in_round:
            problems.append(f"{where}: image id {image_id} is not in round {round_id}")
            continue
        if image_id in seen:
            problems.append(f"{where}: image id {image_id} appears in more than one task")
            continue
        seen.add(image_id)
        skipped = ann.get("was_cancelled")
        if skipped is not None and not isinstance(skipped, bool):
            problems.append(f"{where}: was_cancelled must be true or false, got {shown(skipped)}")
            continue
        if skipped:
            cancelled.append(image_id)
            continue
        result = ann.get("result") or []
        if not isinstance(result, list):
            problems.append(f"{where}: annotation result is not a list")
            continue
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
        kps, found = _task_people(result, project, img.width, img.height, where)
        problems += found
        if len(kps) > MAX_PEOPLE_PER_IMAGE:
            problems.append(
                f"{where}: image id {image_id}: {len(kps)} people, at most {MAX_PEOPLE_PER_IMAGE} per image"
            )
        labels[image_id] = kps
        t = _lead_time(ann, where, problems)
        if t is not None:
            seconds[image_id] = t
        who = _annotator(ann, where, problems)
        if who is not None:
            annotators[image_id] = who
    if predicted:
        raise StoreError(
            f"{path}: {len(predicted)} task(s) hold model predictions, not human labels; nothing imported "
            "(pass --accept-predictions to import them as labels)",
            predicted + problems,
        )
    if problems:
        raise StoreError(f"{path}: cannot import, nothing stored", problems)
    res = project.import_labels(
        path,
        labels,
        source=source,
        round=round_id,
        complete_round=complete_round,
        content_hash=hashlib.sha1(raw).hexdigest(),
        seconds=seconds,
        annotators=annotators,
        skip=cancelled if round_id is not None else (),
    )
    return LabelStudioImport(
        images=len(labels),
        people=sum(len(v) for v in labels.values()),
        new_labels=res.new_labels,
        skipped_tasks=unannotated,
        replaced=res.replaced,
        already_imported=res.already_imported,
        round_completed=res.round_completed,
        skipped_images=cancelled,
        marked_skipped=res.skipped,
        seconds=sum(seconds.values()) if seconds else None,
        annotators=sorted(set(annotators.values())),
    )


def _map_task(matcher: ImageMatcher, data: dict[str, Any]) -> tuple[int | None, str]:
    """Return (the project image a task shows, why not when None) by `ImageMatcher`'s rule."""
    name = _file_name(str(data.get("image", "")))
    given = data.get("activepose_image_id")
    if given is not None and not is_int(given):
        return None, f"activepose_image_id must be a 64-bit integer, got {shown(given)}"
    video, frame = data.get("video"), data.get("frame")
    footage = (str(video), int(frame)) if video is not None and is_int(frame) else None
    found = matcher.match(given, [name, _UPLOAD_PREFIX.sub("", name, count=1)], footage=footage)
    if found.image_id is not None:
        return found.image_id, ""
    if found.ambiguous:
        return None, f"{found.ambiguous} project images are named {shown(found.name)}"
    return None, f"no project image named {shown(name)}"
