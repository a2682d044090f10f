"""Label Studio export / import (`activepose.interop.label_studio`) on synthetic data, without Label Studio.

`tests/test_label_studio_live.py` runs the same round trip through a real Label Studio."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.config import SyntheticConfig
from activepose.interop.export import export_round
from activepose.interop.label_studio import (
    LabelStudioImport,
    config_people,
    import_label_studio,
    label_studio_config,
    local_files_setup,
)
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.project.schema import StoreError
from activepose.project.store import Project

from .conftest import project_with_round

ROUND = [2, 5, 7]


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    cfg = SyntheticConfig(num_images=8, image_size=(64, 64), min_people=2, max_people=2)
    return make_synthetic_coco(out, "lsp14", cfg, seed=3)


@pytest.fixture
def gt(gt_path):
    return load_coco(gt_path)


@pytest.fixture
def project(tmp_path, gt):
    p = project_with_round(tmp_path / "proj", gt, ROUND)
    yield p
    p.close()


def predictions(gt, rng_seed=0):
    """Noisy ground truth as a model's output: (N, K, 3) with each found keypoint's own confidence, N scores."""
    rng = np.random.default_rng(rng_seed)
    out = {}
    for i in ROUND:
        kps = gt.frame(i).keypoints.astype(np.float64).copy()
        lab = kps[..., 2] > 0
        kps[..., :2] = np.where(
            lab[..., None], np.clip(kps[..., :2] + rng.normal(0, 1.3, kps[..., :2].shape), 0, 64), 0
        )
        kps[..., 2] = np.where(lab, rng.uniform(0.05, 1.0, lab.shape), 0)
        out[i] = (kps, rng.uniform(0.2, 0.9, len(kps)))
    return out


def accept(tasks, strip=(), origin=None):
    """Simulate an annotator who accepts every pre-annotation: predictions become the annotation (as Label
    Studio exports it: a task id, one annotation with an id, its result regions with `origin`)."""
    tasks = copy.deepcopy(tasks)
    for n, t in enumerate(tasks):
        t["id"] = 100 + n
        result = copy.deepcopy(t.pop("predictions", [{"result": []}])[0]["result"])
        for item in result:
            for key in strip:
                item.pop(key, None)
            if origin is not None:
                item["origin"] = origin
        t["annotations"] = [{"id": 10 + n, "was_cancelled": False, "result": result}]
    return tasks


def _write(tmp_path, tasks, name="tasks.json"):
    p = tmp_path / name
    p.write_text(json.dumps(tasks))
    return p


def _exported(project, gt, tmp_path, **kw):
    out = export_round(project, 1, tmp_path / "ls.json", "label-studio", predictions(gt), **kw)
    return json.loads(out.read_text())


def _point(rid, name, x, y, person=None, origin="manual"):
    """The result items Label Studio writes for a point placed by hand (and its person choice)."""
    where = {"x": x, "y": y, "width": 0.75}
    common = {"id": rid, "to_name": "image", "original_width": 64, "original_height": 64, "origin": origin}
    items = [
        {**common, "from_name": "kp", "type": "keypointlabels", "value": {**where, "keypointlabels": [name]}}
    ]
    if person is not None:
        items.append(
            {**common, "from_name": "person", "type": "choices", "value": {**where, "choices": [person]}}
        )
    return items


# --- config and export ------------------------------------------------------------------------------------
def test_config_has_keypoints_and_a_required_per_point_person_choice(project):
    root = ET.fromstring(label_studio_config(project.skeleton, people=3))
    kpl = root.find("KeyPointLabels")
    assert kpl is not None and kpl.get("name") == "kp" and kpl.get("toName") == "image"
    assert [lab.get("value") for lab in kpl.findall("Label")] == list(project.skeleton.keypoints)
    assert [lab.get("model_index") for lab in kpl.findall("Label")] == [str(j) for j in range(14)]
    assert root.find("Image").get("name") == "image" and root.find("Image").get("value") == "$image"
    person = root.find("Choices")
    assert person.get("name") == "person" and person.get("toName") == "image"
    assert person.get("perRegion") == "true" and person.get("required") == "true"
    assert [c.get("value") for c in person.findall("Choice")] == ["person 1", "person 2", "person 3"]
    assert len(ET.fromstring(label_studio_config(project.skeleton)).findall("Choices/Choice")) == 10
    assert config_people({1: (np.zeros((12, 14, 3)), np.zeros(12))}) == 12 and config_people(None) == 10
    with pytest.raises(ValueError, match="people"):
        label_studio_config(project.skeleton, people=0)


def test_export_regions_carry_keypoint_confidence_and_person_choice(project, gt, tmp_path):
    preds = predictions(gt)
    tasks = _exported(project, gt, tmp_path)
    assert [t["data"]["activepose_image_id"] for t in tasks] == ROUND
    for t in tasks:
        kps, scores = preds[t["data"]["activepose_image_id"]]
        result = t["predictions"][0]["result"]
        points = [r for r in result if r["type"] == "keypointlabels"]
        choices = {r["id"]: r for r in result if r["type"] == "choices"}
        assert len(points) == int((kps[..., 2] > 0).sum()) == len(choices)
        for r in points:
            n, j = (int(v) for v in r["id"][1:].split("k"))
            assert r["score"] == pytest.approx(kps[n, j, 2], abs=1e-5)  # the keypoint's own confidence
            assert r["meta"] == {"person": n, "person_score": pytest.approx(scores[n], abs=1e-5)}
            assert r["value"]["keypointlabels"] == [project.skeleton.keypoints[j]]
            c = choices[r["id"]]  # the person choice shares the region's id
            assert c["from_name"] == "person" and c["value"]["choices"] == [f"person {n + 1}"]
            assert (c["value"]["x"], c["value"]["y"]) == (r["value"]["x"], r["value"]["y"])
        assert len({r["score"] for r in points}) > 2  # not one person score repeated


# --- round trips ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strip", [(), ("meta",), ("meta", "id")], ids=["full", "choice+id", "no-grouping"])
def test_round_trip(project, gt, tmp_path, strip):
    preds = predictions(gt)
    if "id" in strip:  # without any grouping a task is one person: keep one per image
        preds = {i: (k[:1], s[:1]) for i, (k, s) in preds.items()}
    out = export_round(
        project, 1, tmp_path / "ls.json", "label-studio", preds, url_prefix="/data/local-files/?d="
    )
    exported = accept(json.loads(out.read_text()), strip)
    if strip:  # rely on the file name alone
        for t in exported:
            del t["data"]["activepose_image_id"]
    res = import_label_studio(project, _write(tmp_path, exported), round_id=1)
    assert res.images == 3 and res.new_labels == sum(len(preds[i][0]) for i in ROUND)
    for i in ROUND:
        got, want = project.keypoints_of(i), preds[i][0]
        want = want[(want[..., 2] > 0).any(axis=1)]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got[..., 2] > 0, want[..., 2] > 0)
        np.testing.assert_allclose(got[..., :2], want[..., :2], atol=1e-9)
        assert set(np.unique(got[..., 2])) <= {0.0, 2.0}
    assert import_label_studio(project, _write(tmp_path, exported), round_id=1).new_labels == 0


def test_second_person_added_by_hand_is_grouped_by_its_choice(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    result = tasks[0]["annotations"][0]["result"]
    result[:] = [r for r in result if r["id"].startswith("p0")]  # the annotator deleted person 2 ...
    # ... and placed a new person from scratch (random region ids, as Label Studio makes them)
    names = project.skeleton.keypoints
    for j, name in enumerate(names[:5]):
        result += _point(f"manual{j}", name, 10.0 + j, 20.0 + 2 * j, "person 3")
    # one pre-annotated point dragged and given to the new person: the choice wins over its p0k<j> id
    moved = next(r for r in result if r["type"] == "keypointlabels" and r["id"] == "p0k13")
    moved["value"]["x"], moved["value"]["y"] = 50.0, 60.0
    next(r for r in result if r["type"] == "choices" and r["id"] == "p0k13")["value"]["choices"] = [
        "person 3"
    ]
    import_label_studio(project, _write(tmp_path, tasks), round_id=1)
    got = project.keypoints_of(ROUND[0])
    assert len(got) == 2
    first, second = got
    want = predictions(gt)[ROUND[0]][0][0]
    np.testing.assert_allclose(first[:13, :2], want[:13, :2], atol=1e-9)
    assert first[13, 2] == 0  # moved away from person 1
    np.testing.assert_allclose(second[:5, :2], [[(10 + j) * 0.64, (20 + 2 * j) * 0.64] for j in range(5)])
    np.testing.assert_allclose(second[13], [32.0, 38.4, 2.0])
    assert (second[5:13, 2] == 0).all()


def test_people_labelled_from_scratch_with_choices(project, gt, tmp_path):
    names = project.skeleton.keypoints
    result = []
    for person, dx in (("person 2", 0.0), ("person 1", 30.0)):
        for j, name in enumerate(names):
            result += _point(f"{person[-1]}_{j}", name, 5.0 + dx + j, 40.0 + j, person)
    tasks = [{"id": 1, "data": {"image": "x/000002.png"}, "annotations": [{"id": 1, "result": result}]}]
    res = import_label_studio(project, _write(tmp_path, tasks), round_id=1)
    assert (res.images, res.people) == (1, 2)
    got = project.keypoints_of(2)  # people in person-number order
    np.testing.assert_allclose(got[0, :, 0], (35.0 + np.arange(14)) * 0.64)
    np.testing.assert_allclose(got[1, :, 0], (5.0 + np.arange(14)) * 0.64)


# --- grouping errors --------------------------------------------------------------------------------------
def test_point_without_person_is_refused_not_merged(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    result = tasks[1]["annotations"][0]["result"]
    # person 1 lacks 'head_top' now; a hand-placed head_top without a person used to be merged into it
    result[:] = [r for r in result if r["id"] != "p0k13"]
    result += _point("Xy12", "head_top", 40.0, 10.0)
    before = project.dump()
    with pytest.raises(StoreError, match="cannot import") as err:
        import_label_studio(project, _write(tmp_path, tasks), round_id=1)
    assert "task 101: region 'Xy12' (keypoint 'head_top') has no person" in str(err.value)
    assert project.dump() == before


def test_keypoint_twice_for_one_person_is_refused(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    tasks[2]["annotations"][0]["result"] += _point("dup", "neck", 30.0, 30.0, "person 2")
    with pytest.raises(StoreError) as err:
        import_label_studio(project, _write(tmp_path, tasks), round_id=1)
    assert "task 102: region 'dup': person 2 has keypoint 'neck' twice (also region 'p1k12')" in str(
        err.value
    )
    # without any person on the task's points (an older config), a name placed twice is refused too
    names = project.skeleton.keypoints
    loose = [{"id": 1, "data": {"image": "000002.png"}, "annotations": [{"id": 1, "result": [
        *_point("a", names[0], 10, 10), *_point("b", names[1], 11, 11), *_point("c", names[0], 40, 40)]}]}]  # fmt: skip
    with pytest.raises(StoreError, match="region 'c': person 1 has keypoint 'right_ankle' twice"):
        import_label_studio(project, _write(tmp_path, loose), round_id=1)
    assert project.labels_of(2) == []


def test_bad_person_choice_is_refused(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path))
    choice = next(r for r in tasks[0]["annotations"][0]["result"] if r["type"] == "choices")
    choice["value"]["choices"] = ["somebody"]
    with pytest.raises(StoreError, match=r"task 100: region 'p0k\d+' has person choice \['somebody'\]"):
        import_label_studio(project, _write(tmp_path, tasks), round_id=1, accept_predictions=True)


# --- other export formats ---------------------------------------------------------------------------------
def test_json_min_export_is_refused(project, tmp_path):
    json_min = [{"image": "/data/local-files/?d=a/000002.png", "id": 1, "kp": [{"x": 1, "y": 2, "width": 0.75,
                 "keypointlabels": ["neck"], "original_width": 64, "original_height": 64}],
                 "annotator": "a@b.c", "annotation_id": 1, "created_at": "x", "updated_at": "y", "lead_time": 3.2}]  # fmt: skip
    before = project.dump()
    with pytest.raises(StoreError, match="JSON_MIN export.*export 'JSON' in Label Studio"):
        import_label_studio(project, _write(tmp_path, json_min), round_id=1)
    assert project.dump() == before


@pytest.mark.parametrize("sep,kind", [(",", "CSV"), ("\t", "TSV")])
def test_csv_and_tsv_exports_are_refused(project, tmp_path, sep, kind):
    head = sep.join(["image", "id", "kp", "annotator", "annotation_id", "created_at", "lead_time"])
    row = sep.join(["/data/local-files/?d=000002.png", "1", '"[{""x"": 1}]"', "a@b.c", "1", "x", "3.2"])
    p = tmp_path / "export.csv"
    p.write_text(head + "\n" + row + "\n")
    with pytest.raises(StoreError, match=f"a {kind} file.*export 'JSON' in Label Studio"):
        import_label_studio(project, p, round_id=1)


def test_coco_files_are_refused(project, gt, tmp_path):
    ls_coco = {"images": [{"width": 64, "height": 64, "id": 0, "file_name": "000002.png"}],
               "categories": [{"id": 0, "name": "neck"}],
               "annotations": [{"id": 0, "image_id": 0, "category_id": 0, "keypoints": [1, 2, 2], "num_keypoints": 1}],
               "info": {"contributor": "Label Studio"}}  # fmt: skip
    with pytest.raises(StoreError, match="a COCO file.*merges all people.*export 'JSON' in Label Studio"):
        import_label_studio(project, _write(tmp_path, ls_coco), round_id=1)
    ours = export_round(project, 1, tmp_path / "round1.json", "coco", predictions(gt))
    with pytest.raises(StoreError, match="a COCO file.*--format coco"):
        import_label_studio(project, ours, round_id=1)


def test_zip_exports_are_refused(project, tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "project-1-coco.zip", "w") as z:  # Label Studio's COCO export
        z.writestr("result.json", json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(StoreError, match="a ZIP archive.*COCO.*export 'JSON' in Label Studio"):
        import_label_studio(project, tmp_path / "project-1-coco.zip", round_id=1)


def test_one_task_object_and_bad_json(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    assert import_label_studio(project, _write(tmp_path, tasks[0]), round_id=1).images == 1
    with pytest.raises(StoreError, match="not a Label Studio task"):
        import_label_studio(project, _write(tmp_path, {"foo": 1}))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(StoreError, match="not JSON"):
        import_label_studio(project, tmp_path / "broken.json")


# --- time, annotator, skips -------------------------------------------------------------------------------
def test_lead_time_and_annotator_are_stored(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    tasks[0]["annotations"][0].update(lead_time=12.5, completed_by=1)
    tasks[1]["annotations"][0].update(lead_time=7, completed_by={"id": 2, "email": "ann@example.com"})
    res = import_label_studio(project, _write(tmp_path, tasks), round_id=1)
    assert res.seconds == pytest.approx(19.5) and res.annotators == ["ann@example.com", "label-studio user 1"]
    rows = {i: project.labels_of(i) for i in ROUND}
    assert {(r.seconds, r.annotator) for r in rows[2]} == {(12.5, "label-studio user 1")}
    assert {(r.seconds, r.annotator) for r in rows[5]} == {(7.0, "ann@example.com")}
    assert {(r.seconds, r.annotator) for r in rows[7]} == {(None, None)}
    assert len(rows[2]) == 2  # the image's time is on each of its person rows
    assert "19 s of labelling" in res.message or "20 s of labelling" in res.message
    bad = copy.deepcopy(tasks)
    bad[2]["annotations"][0]["lead_time"] = "soon"
    with pytest.raises(StoreError, match="task 102: lead_time 'soon' is not a number"):
        import_label_studio(project, _write(tmp_path, bad, "bad.json"), round_id=1)


def test_skipped_task_skips_its_image(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    # task 101: skipped in Label Studio (its latest annotation is cancelled; an older one is not)
    tasks[1]["annotations"].append({"id": 99, "was_cancelled": True, "result": [], "lead_time": 2.0})
    # task 102: skipped first, labelled later: labelled
    tasks[2]["annotations"].insert(0, {"id": 1, "was_cancelled": True, "result": []})
    res = import_label_studio(project, _write(tmp_path, tasks), round_id=1, complete_round=True)
    assert res.skipped_images == [5] and res.marked_skipped == 1 and res.images == 2
    assert project.image(5).state == "skipped" and project.labels_of(5) == []
    assert project.image(7).state == "labelled" and project.image(2).state == "labelled"
    assert res.round_completed and project.round(1).state == "labelled"
    assert "1 image(s) skipped in Label Studio (1 marked skipped)" in res.message
    assert "round completed" in res.message


def test_skip_without_round_marks_nothing_and_unannotated_tasks_are_left(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    tasks[0]["annotations"] = []
    tasks[1]["annotations"][0]["was_cancelled"] = True
    res = import_label_studio(project, _write(tmp_path, tasks))
    assert res.skipped_tasks == [100] and res.skipped_images == [5] and res.marked_skipped == 0
    assert project.image(2).state == "queued" and project.image(5).state == "queued"
    assert project.image(7).state == "labelled"
    assert "1 task(s) without an annotation left as they are" in res.message


# --- older behaviour kept ---------------------------------------------------------------------------------
def test_import_errors_leave_store_unchanged(project, gt, tmp_path):
    tasks = accept(_exported(project, gt, tmp_path))
    before = project.dump()
    bad = copy.deepcopy(tasks)
    bad[1]["data"] = {"image": "/somewhere/unknown.png"}
    with pytest.raises(StoreError, match="task 101 .*no project image named 'unknown.png'"):
        import_label_studio(project, _write(tmp_path, bad, "bad.json"), accept_predictions=True)
    with pytest.raises(StoreError, match="image id 2 is not in round 2|no round 2"):
        import_label_studio(project, _write(tmp_path, tasks), round_id=2, accept_predictions=True)
    assert project.dump() == before


def test_untouched_predictions_need_consent(project, gt, tmp_path):
    preds = predictions(gt)
    tasks = _exported(project, gt, tmp_path)
    before = project.dump()
    untouched = _write(tmp_path, accept(tasks, origin="prediction"), "untouched.json")
    with pytest.raises(StoreError, match="3 task.*model predictions.*--accept-predictions") as err:
        import_label_studio(project, untouched, round_id=1)
    assert "task 100 (image id 2)" in str(err.value) and "origin 'prediction'" in str(err.value)
    mixed = accept(tasks, origin="prediction-changed")
    next(r for r in mixed[1]["annotations"][0]["result"] if r["type"] == "keypointlabels")["origin"] = (
        "prediction"
    )
    with pytest.raises(StoreError, match="1 task.*model predictions") as err:
        import_label_studio(project, _write(tmp_path, mixed), round_id=1)
    assert "task 101 (image id 5): 1 keypoint region" in str(err.value)
    assert project.dump() == before
    edited = import_label_studio(
        project, _write(tmp_path, accept(tasks, origin="prediction-changed")), round_id=1
    )
    assert edited.new_labels == sum(len(k) for k, _ in preds.values())
    res = import_label_studio(project, untouched, round_id=1, accept_predictions=True)
    assert res.new_labels == 0 and not res.already_imported  # same content as the edited import


def test_same_labels_under_another_file_name(project, gt, tmp_path):
    preds = predictions(gt)
    tasks = accept(_exported(project, gt, tmp_path), origin="prediction-changed")
    first = _write(tmp_path, tasks, "export_monday.json")
    res = import_label_studio(project, first, round_id=1, complete_round=True)
    n = sum(len(k) for k, _ in preds.values())
    assert res.new_labels == n and res.round_completed and project.round(1).state == "labelled"
    before = project.dump()
    assert import_label_studio(project, first, round_id=1).already_imported  # the very same file
    again = copy.deepcopy(tasks)[::-1]  # a fresh export of the project: other order, ids, bytes
    for t in again:
        t["id"] += 1000
        t["annotations"][0]["result"] = t["annotations"][0]["result"][::-1]
    res = import_label_studio(project, _write(tmp_path, again, "export_tuesday.json"), round_id=1)
    assert (res.new_labels, res.replaced, res.already_imported) == (0, 0, False)
    assert project.dump() == before
    fixed = copy.deepcopy(tasks)  # a correction replaces the image's labels, keeping the old ones as history
    next(r for r in fixed[0]["annotations"][0]["result"] if r["type"] == "keypointlabels")["value"]["x"] += (
        5.0
    )
    res = import_label_studio(project, _write(tmp_path, fixed, "export_wednesday.json"), round_id=1)
    people_2 = len(project.keypoints_of(ROUND[0]))
    assert (res.new_labels, res.replaced) == (people_2, people_2)
    assert len(project.labels_of(ROUND[0], history=True)) == 2 * people_2


# --- image URLs for Label Studio's local files -----------------------------------------------------------
def test_ls_root_writes_local_files_urls(project, gt, tmp_path, gt_path):
    root = gt_path.parent
    tasks = _exported(project, gt, tmp_path, ls_root=root)
    for t in tasks:
        rel = Path(gt.frame(t["data"]["activepose_image_id"]).file_name).as_posix()
        assert t["data"]["image"] == f"/data/local-files/?d={rel}"
    # the URLs still map back to the images
    res = import_label_studio(
        project, _write(tmp_path, accept(tasks, origin="prediction-changed")), round_id=1
    )
    assert res.images == 3
    setup = " ".join(local_files_setup(project, ROUND, root))
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}" in setup
    assert "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true" in setup
    assert f"absolute local path {gt.image_path(gt.frame(2)).parent.resolve()}" in setup


def test_ls_root_quotes_paths_and_refuses_images_outside(project, gt, tmp_path, gt_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(StoreError, match="3 image.*not under the Label Studio document root") as err:
        export_round(project, 1, tmp_path / "x.json", "label-studio", ls_root=other)
    assert f"image id 2 ({project.image_path(2)}): not under {other}" in str(err.value)
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match="ls_root"):
        export_round(project, 1, tmp_path / "x.json", "coco", ls_root=other)
    odd = tmp_path / "my images" / "a&b"
    odd.mkdir(parents=True)
    src = project.image_path(2)
    imgs = [(odd / f"{i} #1.png", 64, 64, None, i) for i in (1, 2)]
    for p, *_ in imgs:
        p.write_bytes(src.read_bytes())
    p2 = Project.create(tmp_path / "proj2", project.skeleton, imgs)
    p2.open_round("test", {}, [(1, 1.0), (2, 0.5)])
    url = json.loads(export_round(p2, 1, tmp_path / "y.json", "label-studio", ls_root=tmp_path).read_text())
    assert url[0]["data"]["image"] == "/data/local-files/?d=my%20images/a%26b/1%20%231.png"
    p2.close()


def test_cli_export_ls_root_prints_setup(tmp_path, gt_path, gt):
    proj = tmp_path / "p"
    runner = CliRunner()
    res = runner.invoke(app, ["init", str(proj), "--pool", str(gt_path)])
    assert res.exit_code == 0, res.output
    with Project.open(proj) as p:
        p.open_round("random", {}, [(3, None), (4, None)])
    out = tmp_path / "r1.json"
    args = ["export", str(proj), "--round", "1", "--format", "label-studio", "--out", str(out)]
    root = gt_path.parent  # the pool's folder: the project refers to its images there
    res = runner.invoke(app, [*args, "--ls-root", str(root)])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}" in flat and "Local Files storage" in flat
    urls = [t["data"]["image"] for t in json.loads(out.read_text())]
    assert urls == ["/data/local-files/?d=images/000003.png", "/data/local-files/?d=images/000004.png"]
    assert ET.fromstring((tmp_path / "r1.config.xml").read_text()).find("Choices").get("perRegion") == "true"
    res = runner.invoke(app, [*args, "--ls-root", str(gt_path.parent / "nowhere")])
    assert res.exit_code == 2 and "no such folder" in res.output
    res = runner.invoke(app, [*args, "--ls-root", str(root), "--url-prefix", "/x/"])
    assert res.exit_code == 2 and "leave out --url-prefix" in res.output
    res = runner.invoke(app, [*args, "--ls-root", str(tmp_path)])  # the images are not under it
    flat = " ".join(res.output.split())
    assert (
        res.exit_code == 2 and f"image id 3 ({root / 'images' / '000003.png'}): not under {tmp_path}" in flat
    )


def test_summary_message_is_plain():
    res = LabelStudioImport(
        images=2, people=3, new_labels=3, skipped_images=[4], marked_skipped=1, seconds=9.6
    )
    assert (
        res.message
        == "2 image(s), 3 people, 3 new label(s); 1 image(s) skipped in Label Studio (1 marked skipped); 10 s of labelling"
    )
