"""Oracles: the simulated oracle (ground truth + cost, idempotent) and the COCO file export with
pre-annotations. Label Studio's export / import: tests/test_label_studio.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from activepose.config import SyntheticConfig
from activepose.interop.coco import import_coco
from activepose.interop.export import export_round
from activepose.oracle.simulated import SimulatedOracle
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.project.schema import StoreError

from .conftest import project_with_round

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
    p = project_with_round(tmp_path / "proj", gt, ROUND)
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
        import_coco(project, out, round=1)
    assert project.dump() == before
    res = import_coco(project, out, round=1, accept_predictions=True, complete_round=True)
    assert res.new_labels == sum(len(k) for k, _ in preds.values()) and res.round_completed
    np.testing.assert_allclose(
        project.keypoints_of(2), as_labels(preds[2][0][(preds[2][0][..., 2] > 0).any(1)]), atol=0.01
    )
