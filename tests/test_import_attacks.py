"""Issue 17, item 7: label imports (COCO and Label Studio JSON exports) check types strictly.

Every bad file gives exactly one 'error:' message naming the file and the problem, exit code 2, no
traceback, and leaves project.db as it was (an SQL dump before and after). Annotator names from a Label
Studio export follow the labelling page's rule; nothing printed from an imported file reaches the terminal
with control characters, or unbounded. Each case imports into a copy of one small synthetic project (the
fixtures of test_bad_input) whose round 1 is open on ROUND.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from activepose.pose.coco import MAX_PEOPLE_PER_IMAGE
from activepose.project.schema import DB_NAME
from activepose.project.store import Project

from .test_bad_input import (  # noqa: F401  (data and base are fixtures)
    ROUND,
    _label_studio_file,
    base,
    cli,
    coco_of,
    copy_project,
    data,
    dump,
    open_round,
    refused,
)

IMAGE = ROUND[0]  # the image the good files label
BIG = 12345.678  # a coordinate the text of a case replaces (json.dumps cannot write 1e400)


@pytest.fixture(scope="module")
def opened(tmp_path_factory, base) -> Path:  # noqa: F811
    """The test_bad_input project with round 1 open on ROUND."""
    folder = copy_project(base, tmp_path_factory.mktemp("opened"))
    open_round(folder)
    return folder


@pytest.fixture(scope="module")
def good(tmp_path_factory, data, opened) -> dict:  # noqa: F811
    """A COCO file and a Label Studio export that label IMAGE (as parsed JSON)."""
    root, gt = data
    out = tmp_path_factory.mktemp("good")
    coco = coco_of(gt, [IMAGE], out / "good.json")
    tasks = _label_studio_file(opened, gt, IMAGE, out / "tasks.json")
    return {"coco": json.loads(coco.read_text()), "label-studio": json.loads(tasks.read_text())}


def task_of(tasks: list) -> dict:
    return next(t for t in tasks if t["data"]["activepose_image_id"] == IMAGE)


def label(proj: Path, path: Path, fmt: str) -> tuple[int, str]:
    return cli("label", proj, "--oracle", "file", "--labels", path, "--format", fmt)


def write(tmp_path: Path, content, name: str) -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text.replace(str(BIG), "1e400"))
    return path


def refused_import(tmp_path, opened, fmt: str, content, name: str, *needles: str) -> str:
    """Import `content` (JSON data or text) as file `name`: assert one clean refusal naming the file and
    every needle, and that the store is unchanged."""
    proj = copy_project(opened, tmp_path)
    before = dump(proj)
    path = write(tmp_path, content, name)
    code, out = label(proj, path, fmt)
    message = refused(code, out, str(path), *needles)
    assert "\x1b" not in out and "\x07" not in out, out
    assert len(out) < 5000, out[:5000]
    assert dump(proj) == before
    return message


# --- Label Studio -------------------------------------------------------------------------------------------------
def _region(task: dict) -> dict:
    return task["annotations"][0]["result"][0]


def _set_value(value):
    return lambda t: _region(t).update(value=value)


def _set_labels(labels):
    return lambda t: _region(t)["value"].update(keypointlabels=labels)


def _set_xy(x):
    return lambda t: _region(t)["value"].update(x=x)


def _choice(value):
    def mutate(task):
        region = _region(task)
        task["annotations"][0]["result"].append(
            {"id": region["id"], "from_name": "person", "to_name": "image", "type": "choices", "value": value}
        )

    return mutate


def _image_id(value):
    return lambda t: t["data"].update(activepose_image_id=value)


def _crowd(n: int):
    def mutate(task):
        region = _region(task)
        task["annotations"][0]["result"] = [dict(region, id=f"x{p}", meta={"person": p}) for p in range(n)]

    return mutate


def _annotator(who):
    return lambda t: t["annotations"][0].update(completed_by=who)


LS_CASES = {
    "value is a list": (
        _set_value([10, 20]),
        ["region 'hand0_0'", "'value' must be an object, got [10, 20]"],
    ),
    "value is a string": (
        _set_value("10,20"),
        ["region 'hand0_0'", "'value' must be an object, got '10,20'"],
    ),
    "keypointlabels nested": (_set_labels([["x"]]), ["has labels [['x']], expected one keypoint name"]),
    "keypointlabels a dict": (_set_labels({"x": 1}), ["has labels {'x': 1}, expected one keypoint name"]),
    "choice value a list": (_choice(["person 1"]), ["region 'hand0_0'", "'value' must be an object"]),
    "choice value a string": (_choice("person 1"), ["region 'hand0_0'", "'value' must be an object"]),
    "x a string": (_set_xy("12.5"), ["region 'hand0_0'", "x / y must be numbers, got '12.5'"]),
    "x a bool": (_set_xy(True), ["region 'hand0_0'", "x / y must be numbers, got True"]),
    "x 1e400": (_set_xy(BIG), ["number 1e400 is out of range"]),
    "image id 10**30": (
        _image_id(10**30),
        ["activepose_image_id must be a 64-bit integer, got 1" + "0" * 30],
    ),
    "image id a float": (
        _image_id(IMAGE + 0.5),
        [f"activepose_image_id must be a 64-bit integer, got {IMAGE}.5"],
    ),
    "image id a string": (
        _image_id(str(IMAGE)),
        [f"activepose_image_id must be a 64-bit integer, got '{IMAGE}'"],
    ),
    "image id a bool": (_image_id(True), ["activepose_image_id must be a 64-bit integer, got True"]),
    "3000 people": (
        _crowd(3000),
        [f"image id {IMAGE}: 3000 people, at most {MAX_PEOPLE_PER_IMAGE} per image"],
    ),
    "200 KB annotator": (_annotator("a" * 200_000), ["completed_by 'aaaa", "is not an annotator name"]),
    "annotator with escapes": (
        _annotator("\x1b[2J\x1b]0;title\x07"),
        ["completed_by '\\x1b[2J", "not an annotator"],
    ),
    "annotator a list": (_annotator(["ann"]), ["completed_by ['ann'] is not an annotator name"]),
    "lead_time 10**400": (lambda t: t["annotations"][0].update(lead_time=10**400), ["lead_time 1000"]),
    "was_cancelled a string": (
        lambda t: t["annotations"][0].update(was_cancelled="false"),
        ["was_cancelled must be true or false, got 'false'"],
    ),
    "annotations a string": (lambda t: t.update(annotations="x"), ["annotations must be a list, got 'x'"]),
}


@pytest.mark.parametrize("case", list(LS_CASES))
def test_label_studio_bad_values_are_refused(tmp_path, opened, good, case):
    mutate, needles = LS_CASES[case]
    tasks = json.loads(json.dumps(good["label-studio"]))
    mutate(task_of(tasks))
    refused_import(tmp_path, opened, "label-studio", tasks, "tasks.json", *needles)


def test_label_studio_task_id_is_printed_escaped_and_bounded(tmp_path, opened, good):
    tasks = json.loads(json.dumps(good["label-studio"]))
    task = task_of(tasks)
    task["id"] = "\x1b[2J\x1b]0;title\x07" + "t" * 200_000
    task["data"]["image"] = "\x1b[31m" + "i" * 200_000 + ".png"
    _region(task)["value"] = []
    message = refused_import(tmp_path, opened, "label-studio", tasks, "tasks.json", "task '\\x1b[2J")
    assert len(message) < 1000, message


@pytest.mark.parametrize("fmt", ["coco", "label-studio"])
def test_deeply_nested_json_is_refused(tmp_path, opened, fmt):
    refused_import(tmp_path, opened, fmt, "[" * 100_000, "deep.json", "nested too deeply")


def test_label_studio_user_maps_to_a_safe_annotator_name(tmp_path, opened, good):
    """A Label Studio user whose email breaks the page's rule is stored as its user id; nothing of the
    email reaches the store or the terminal."""
    tasks = json.loads(json.dumps(good["label-studio"]))
    _annotator({"id": 7, "email": "\x1b]0;title\x07@example.org"})(task_of(tasks))
    proj = copy_project(opened, tmp_path)
    code, out = label(proj, write(tmp_path, tasks, "tasks.json"), "label-studio")
    assert code == 0 and "Traceback" not in out, out
    assert "by label-studio user 7" in out and "\x1b" not in out and "\x07" not in out, out
    with Project.open(proj, readonly=True) as p:
        assert {r.annotator for r in p.labels_of(IMAGE)} == {"label-studio user 7"}


def test_status_prints_stored_names_without_control_characters(tmp_path, opened):
    """Names stored before the check (or by another tool) are printed escaped, without control characters
    and shortened."""
    proj = copy_project(opened, tmp_path)
    conn = sqlite3.connect(proj / DB_NAME)
    with conn:
        conn.execute(
            "UPDATE labels SET annotator = ? WHERE image_id = 1", ("\x1b[2J[bold]x[/]" + "n" * 200_000,)
        )
    conn.close()
    code, out = cli("status", proj)
    assert code == 0 and "Traceback" not in out, out
    assert "\x1b" not in out and "[bold]x[/]" in out and len(out) < 6000, out[:6000]


# --- COCO ---------------------------------------------------------------------------------------------------------
def _ann(d: dict) -> dict:
    return d["annotations"][0]


def _keypoint(index: int, value):
    return lambda d: _ann(d)["keypoints"].__setitem__(index, value)


def _first_labelled(d: dict) -> int:
    kps = _ann(d)["keypoints"]
    return next(j for j in range(0, len(kps), 3) if kps[j + 2] > 0)


def _coordinate(value):
    return lambda d: _ann(d)["keypoints"].__setitem__(_first_labelled(d), value)


def _visibility(value):
    return lambda d: _ann(d)["keypoints"].__setitem__(_first_labelled(d) + 2, value)


def _copies(n: int):
    return lambda d: d.update(annotations=[dict(_ann(d), id=100 + i) for i in range(n)])


COCO_CASES = {
    "keypoint 1e400": (_coordinate(BIG), ["number 1e400 is out of range"]),
    "image_id a float": (lambda d: _ann(d).update(image_id=IMAGE + 0.5), [f"image_id {IMAGE}.5"]),
    "image id 10**30": (lambda d: d["images"][0].update(id=10**30), ["images[0]", "1" + "0" * 30]),
    "width a bool": (lambda d: d["images"][0].update(width=True), ["images[0]", "width True"]),
    "coordinate a string": (_coordinate("12.5"), ["keypoint", "x / y must be numbers, got '12.5'"]),
    "visibility true": (_visibility(True), ["visibility flags must be the integers 0, 1 or 2, got True"]),
    "visibility false": (_visibility(False), ["visibility flags must be the integers 0, 1 or 2, got False"]),
    "visibility 2.0": (_visibility(2.0), ["visibility flags must be the integers 0, 1 or 2, got 2.0"]),
    "100000 people": (_copies(100_000), [f"image id {IMAGE}: 100000 people, at most {MAX_PEOPLE_PER_IMAGE}"]),
    "file_name with a NUL": (
        lambda d: d["images"][0].update(file_name="a\x00b.png"),
        ["file_name 'a\\x00b.png'"],
    ),
    "file_name too long": (lambda d: d["images"][0].update(file_name="f" * 300), ["file_name 'ffff"]),
}


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_bad_values_are_refused(tmp_path, opened, good, case):
    mutate, needles = COCO_CASES[case]
    raw = json.loads(json.dumps(good["coco"]))
    mutate(raw)
    refused_import(tmp_path, opened, "coco", raw, "labels.json", *needles)
