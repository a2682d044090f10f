"""Oracles: the simulated oracle (ground truth + cost, idempotent) and the file oracles (COCO / Label Studio
export with pre-annotations, Label Studio import)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from activepose.coco import load_coco
from activepose.oracle import SimulatedOracle, export_round, import_label_studio, label_studio_config
from activepose.store import Project, StoreError
from activepose.synthetic import SyntheticConfig, make_synthetic_coco

ROUND = [2, 5, 7]


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_coco(out, "lsp14", SyntheticConfig(num_images=8, image_size=(64, 64)), seed=3)


@pytest.fixture
def gt(gt_path):
    return load_coco(gt_path)


@pytest.fixture
def project(tmp_path, gt):
    imgs = [(gt.image_path(f).resolve(), f.width, f.height, None, f.image_id) for f in gt]
    p = Project.create(tmp_path / "proj", gt.skeleton, imgs)
    r = p.open_round("test", {}, [(i, 1.0 / i) for i in ROUND])
    assert r == 1
    yield p
    p.close()


def people(gt, image_id):
    return gt.frame(image_id).keypoints.astype(np.float64)


def test_simulated_labels_round_with_cost_and_is_idempotent(project, gt):
    oracle = SimulatedOracle(gt, seed=1)
    assert oracle.label(project, 1) == 3
    assert sorted(project.labelled_ids()) == ROUND
    assert project.counts()["queued"] == 0 and project.counts()["unlabelled"] == 8 - 3
    for i in ROUND:
        np.testing.assert_array_equal(project.keypoints_of(i), people(gt, i))
        rows = project.labels_of(i)
        assert len(rows) == gt.frame(i).num_people
        assert all(r.source == "simulated" and r.round == 1 for r in rows)
        if rows:
            n = len(rows)
            assert 15 * n <= rows[0].seconds <= 20 * n
            assert rows[0].seconds == oracle.seconds(i, n)  # same cost on a re-run
    dump = project.dump()
    assert oracle.label(project, 1) == 0  # second call: nothing left to label
    # and the store itself ignores an identical re-submission (what a crash-and-rerun would send)
    again = {i: people(gt, i) for i in ROUND}
    assert project.add_labels(again, source="simulated", round=1, seconds=1.0) == 0
    assert project.dump() == dump
    assert (
        SimulatedOracle(gt, seed=1).seconds(5, 3)
        == oracle.seconds(5, 3)
        != SimulatedOracle(gt, seed=2).seconds(5, 3)
    )


def test_simulated_empty_image_is_labelled_with_nobody(project, gt, tmp_path):
    frames = [f for f in gt if f.image_id in ROUND]
    frames[0].keypoints = np.zeros((0, gt.skeleton.num_keypoints, 3), np.float32)
    assert SimulatedOracle(gt).label(project, 1) == 3
    assert project.image(frames[0].image_id).state == "labelled"
    assert project.keypoints_of(frames[0].image_id).shape == (0, gt.skeleton.num_keypoints, 3)


def test_simulated_missing_ground_truth_writes_nothing(project, gt):
    partial = gt.subset([i for i in gt.image_ids if i != 5])
    before = project.dump()
    with pytest.raises(StoreError, match="image id 5: not in the ground truth"):
        SimulatedOracle(partial).label(project, 1)
    assert project.dump() == before
    renamed = copy.deepcopy(gt)
    renamed.frame(7).file_name = "images/other.png"
    with pytest.raises(StoreError, match="image id 7: file name"):
        SimulatedOracle(renamed).label(project, 1)
    assert project.dump() == before


def predictions(gt, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    out = {}
    for i in ROUND:
        kps = people(gt, i).copy()
        lab = kps[..., 2] > 0
        kps[..., :2] = np.where(
            lab[..., None], np.clip(kps[..., :2] + rng.normal(0, 1.3, kps[..., :2].shape), 0, 64), 0
        )
        kps[..., 2] = np.where(lab, rng.uniform(0.05, 1.0, lab.shape), 0)  # a model's keypoint scores
        out[i] = (kps, rng.uniform(0.2, 0.9, len(kps)))
    return out


def as_labels(kps):
    """A prediction as the labels it becomes: found keypoints labelled and visible (2), the rest not labelled."""
    out = kps.copy()
    out[..., 2] = np.where(kps[..., 2] > 0, 2, 0)
    return out


@pytest.mark.parametrize("paths", ["relative", "absolute"])
def test_export_coco_round_trips(project, gt, tmp_path, paths):
    preds = predictions(gt)
    out = export_round(project, 1, tmp_path / "exp" / "round1.json", "coco", preds, paths=paths)
    back = load_coco(out)  # checks the image files exist where the file says
    assert back.image_ids == ROUND
    assert Path(back.frame(2).file_name).is_absolute() == (paths == "absolute")
    for i in ROUND:
        np.testing.assert_allclose(back.frame(i).keypoints, as_labels(preds[i][0]), atol=0.006)
    scores = [a["score"] for a in json.loads(out.read_text())["annotations"]]
    np.testing.assert_allclose(scores, np.concatenate([preds[i][1] for i in ROUND]), atol=1e-5)
    # no predictions: the images alone
    assert load_coco(export_round(project, 1, tmp_path / "bare.json")).num_people == 0


def test_export_refuses_predictions_outside_the_round(project, gt, tmp_path):
    with pytest.raises(StoreError, match="image id 1: has predictions but is not in round 1"):
        export_round(project, 1, tmp_path / "x.json", "label-studio", {1: predictions(gt)[2]})
    assert not (tmp_path / "x.json").exists()


def accept(tasks, strip=None, origin=None):
    """Simulate a human who accepts every pre-annotation in Label Studio: predictions become annotations.

    `origin` is what Label Studio writes on each region: "prediction" (submitted untouched),
    "prediction-changed" (moved by the annotator), "manual"; None leaves it out (older exports)."""
    tasks = copy.deepcopy(tasks)
    for n, t in enumerate(tasks):
        t["id"] = 100 + n
        result = copy.deepcopy(t.pop("predictions", [{"result": []}])[0]["result"])
        for item in result:
            for key in strip or ():
                item.pop(key, None)
            if origin is not None:
                item["origin"] = origin
        t["annotations"] = [{"id": n, "was_cancelled": False, "result": result}]
    return tasks


@pytest.mark.parametrize("strip", [(), ("meta",), ("meta", "id")])
def test_label_studio_round_trip(project, gt, tmp_path, strip):
    preds = predictions(gt)
    if "id" in strip:  # without any grouping Label Studio tasks hold one person: keep one per image
        preds = {i: (k[:1], s[:1]) for i, (k, s) in preds.items()}
    out = export_round(
        project, 1, tmp_path / "ls.json", "label-studio", preds, url_prefix="/data/local-files/?d="
    )
    tasks = json.loads(out.read_text())
    assert [t["data"]["activepose_image_id"] for t in tasks] == ROUND
    item = next(r for t in tasks for r in t.get("predictions", [{}])[0].get("result", []))
    assert item["type"] == "keypointlabels" and 0 <= item["value"]["x"] <= 100
    exported = accept(tasks, strip)
    if strip:  # rely on the file name alone
        for t in exported:
            del t["data"]["activepose_image_id"]
    (tmp_path / "export.json").write_text(json.dumps(exported))
    res = import_label_studio(project, tmp_path / "export.json", round_id=1)
    assert res.images == 3 and res.new_labels == sum(len(preds[i][0]) for i in ROUND)
    for i in ROUND:
        got, want = project.keypoints_of(i), preds[i][0]
        keep = (want[..., 2] > 0).any(axis=1)  # people with no keypoint are not a label
        want = want[keep]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got[..., 2] > 0, want[..., 2] > 0)
        np.testing.assert_allclose(got[..., :2], want[..., :2], atol=0.01)
        assert set(np.unique(got[..., 2])) <= {0.0, 2.0}
    again = import_label_studio(project, tmp_path / "export.json", round_id=1)
    assert again.new_labels == 0


def test_label_studio_import_errors_leave_store_unchanged(project, gt, tmp_path):
    out = export_round(project, 1, tmp_path / "ls.json", "label-studio", predictions(gt))
    tasks = accept(json.loads(out.read_text()))
    before = project.dump()
    bad = copy.deepcopy(tasks)
    bad[1]["data"] = {"image": "/somewhere/unknown.png"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(StoreError, match="task 101 .*no project image named 'unknown.png'"):
        import_label_studio(project, tmp_path / "bad.json")
    with pytest.raises(StoreError, match="image id 2 is not in round 2|no round 2"):
        import_label_studio(
            project, out.with_name("x.json") if False else _write(tmp_path, tasks), round_id=2
        )
    assert project.dump() == before
    # a task nobody annotated is skipped, not an error
    tasks[0]["annotations"] = []
    res = import_label_studio(project, _write(tmp_path, tasks))
    assert res.skipped_tasks == [100] and res.images == 2
    assert project.image(ROUND[0]).state == "queued"


def _write(tmp_path, tasks):
    p = tmp_path / "tasks.json"
    p.write_text(json.dumps(tasks))
    return p


def test_label_studio_config_names_every_keypoint(project):
    root = ET.fromstring(label_studio_config(project.skeleton))
    kpl = root.find("KeyPointLabels")
    assert kpl is not None and kpl.get("name") == "kp" and kpl.get("toName") == "image"
    assert [lab.get("value") for lab in kpl.findall("Label")] == list(project.skeleton.keypoints)
    assert root.find("Image").get("name") == "image" and root.find("Image").get("value") == "$image"


def test_simulated_oracle_completes_the_round_with_its_labels(project, gt):
    oracle = SimulatedOracle(gt)
    assert oracle.label(project, 1) == 3 and project.round(1).state == "open"  # default: labels only
    assert oracle.label(project, 1, complete_round=True) == 0  # nothing left to label: the round completes
    assert project.round(1).state == "labelled"


def test_coco_export_with_predictions_is_not_a_label_file(project, gt, tmp_path):
    preds = predictions(gt)
    out = export_round(project, 1, tmp_path / "round1.json", "coco", preds)
    before = project.dump()
    with pytest.raises(
        StoreError, match="carry a 'score': these are model predictions.*--accept-predictions"
    ):
        project.import_coco(out, round=1)
    assert project.dump() == before
    res = project.import_coco(out, round=1, accept_predictions=True, complete_round=True)
    assert res.new_labels == sum(len(k) for k, _ in preds.values()) and res.round_completed
    np.testing.assert_allclose(
        project.keypoints_of(2), as_labels(preds[2][0][(preds[2][0][..., 2] > 0).any(1)]), atol=0.01
    )


def test_label_studio_untouched_predictions_need_consent(project, gt, tmp_path):
    preds = predictions(gt)
    tasks = json.loads(export_round(project, 1, tmp_path / "ls.json", "label-studio", preds).read_text())
    before = project.dump()
    untouched = tmp_path / "untouched.json"
    untouched.write_text(json.dumps(accept(tasks, origin="prediction")))
    with pytest.raises(StoreError, match="3 task.*model predictions.*--accept-predictions") as err:
        import_label_studio(project, untouched, round_id=1)
    assert "task 100 (image id 2)" in str(err.value) and "origin 'prediction'" in str(err.value)
    mixed = accept(tasks, origin="prediction-changed")
    mixed[1]["annotations"][0]["result"][0]["origin"] = "prediction"  # one point left as predicted
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


def test_label_studio_same_labels_under_another_file_name(project, gt, tmp_path):
    preds = predictions(gt)
    tasks = accept(
        json.loads(export_round(project, 1, tmp_path / "ls.json", "label-studio", preds).read_text())
    )
    first = tmp_path / "export_monday.json"
    first.write_text(json.dumps(tasks))
    res = import_label_studio(project, first, round_id=1, complete_round=True)
    n = sum(len(k) for k, _ in preds.values())
    assert res.new_labels == n and res.round_completed and project.round(1).state == "labelled"
    before = project.dump()
    assert import_label_studio(project, first, round_id=1).already_imported  # the very same file
    again = copy.deepcopy(tasks)[::-1]  # a fresh export of the project: other order, ids, bytes
    for t in again:
        t["id"] += 1000
        t["annotations"][0]["result"] = t["annotations"][0]["result"][::-1]
        t["updated_at"] = "2030-01-01T00:00:00Z"
    second = tmp_path / "export_tuesday.json"
    second.write_text(json.dumps(again))
    res = import_label_studio(project, second, round_id=1)
    assert (res.new_labels, res.replaced, res.already_imported) == (0, 0, False)
    assert project.dump() == before
    # a correction in a later export replaces that image's labels, keeping the old ones as history
    fixed = copy.deepcopy(tasks)
    fixed[0]["annotations"][0]["result"][0]["value"]["x"] += 5.0
    third = tmp_path / "export_wednesday.json"
    third.write_text(json.dumps(fixed))
    res = import_label_studio(project, third, round_id=1)
    people_2 = len(project.keypoints_of(ROUND[0]))
    assert (res.new_labels, res.replaced) == (people_2, people_2)
    history = project.labels_of(ROUND[0], history=True)
    assert len(history) == 2 * people_2 and sum(r.superseded_at is None for r in history) == people_2
    assert {r.source for r in project.labels_of(ROUND[0])} == {"label-studio:export_wednesday.json"}
    assert project.round_summary()[1]["people"] == n
