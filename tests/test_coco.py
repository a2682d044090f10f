import json

import numpy as np
import pytest

from activepose.coco import CocoError, load_coco, parse_coco, results_to_coco, save_coco
from activepose.skeleton import PRESETS

from .conftest import shared_file


def _make(tmp_path, n_images=2, k=14, write_images=True):
    import cv2

    sk = PRESETS["lsp14"]
    images, anns = [], []
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(1, n_images + 1):
        name = f"img/{i}.png"
        if write_images:
            cv2.imwrite(str(tmp_path / name), np.zeros((40, 50, 3), np.uint8))
        images.append({"id": i * 10, "file_name": name, "width": 50, "height": 40})
        kps = []
        for j in range(k):
            kps += [5.0 + j, 6.0 + j, 2]
        anns.append({"id": i, "image_id": i * 10, "category_id": 1, "keypoints": kps})
    data = {"images": images, "annotations": anns, "categories": [sk.to_coco_category()]}
    return data


def _write(tmp_path, data):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


def test_load_keeps_ids_and_arrays(tmp_path):
    ds = load_coco(_write(tmp_path, _make(tmp_path)))
    assert ds.image_ids == [10, 20]
    assert ds.skeleton is PRESETS["lsp14"]
    f = ds.frame(20)
    assert f.keypoints.shape == (1, 14, 3) and f.keypoints.dtype == np.float32
    assert f.keypoints[0, 3, 0] == pytest.approx(8.0)
    assert ds.image_path(f) == tmp_path / "img/2.png"


def test_save_round_trip(tmp_path):
    ds = load_coco(_write(tmp_path, _make(tmp_path)))
    out = tmp_path / "copy.json"
    save_coco(ds, out)
    back = load_coco(out)
    assert back.image_ids == ds.image_ids
    for a, b in zip(ds, back, strict=True):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=0.01)
        assert a.annotation_ids == b.annotation_ids


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (
            lambda d: d["annotations"][0].update(keypoints=[1.0, 2.0, 2] * 13),
            r"annotation id 1 \(image id 10\): keypoint count mismatch: 39 values, expected 42",
        ),
        (
            lambda d: d["annotations"][1]["keypoints"].__setitem__(0, 80.0),
            r"annotation id 2 \(image id 20\): keypoint 'right_ankle' at \(80.0, 6.0\) lies outside the 50x40 image",
        ),
        (
            lambda d: d["images"].append(dict(d["images"][0])),
            r"image id 10 \('img/1.png'\): duplicate image id",
        ),
        (
            lambda d: d["annotations"].append(dict(d["annotations"][0])),
            r"annotation id 1 \(image id 10\): duplicate annotation id",
        ),
        (
            lambda d: d["annotations"][0].update(image_id=99),
            r"annotation id 1 \(image id 99\): refers to an unknown image id",
        ),
        (
            lambda d: d["images"][1].update(file_name="img/missing.png"),
            r"image id 20 \('img/missing.png'\): image file missing",
        ),
        (lambda d: d.pop("images"), r"missing or non-list 'images'"),
        (lambda d: d["categories"][0].pop("keypoints"), r"no category with a 'keypoints' list"),
    ],
)
def test_validation_errors_name_file_id_and_problem(tmp_path, mutate, expected):
    data = _make(tmp_path)
    mutate(data)
    p = _write(tmp_path, data)
    with pytest.raises(CocoError, match=expected) as info:
        load_coco(p)
    assert str(p) in str(info.value)


def test_all_problems_are_listed(tmp_path):
    data = _make(tmp_path, n_images=3)
    data["annotations"][0]["keypoints"] = [1, 2, 2]
    data["annotations"][2]["image_id"] = 5
    with pytest.raises(CocoError) as info:
        load_coco(_write(tmp_path, data))
    assert len(info.value.problems) == 2


def test_malformed_json_names_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [')
    with pytest.raises(CocoError, match=r"broken.json: 1 problem\(s\):\n  - not valid JSON"):
        load_coco(p)


def test_unreadable_image_detected_with_headers(tmp_path):
    data = _make(tmp_path)
    (tmp_path / "img/2.png").write_bytes(b"not an image")
    p = _write(tmp_path, data)
    load_coco(p)  # existence only by default
    with pytest.raises(CocoError, match=r"image id 20 .*unreadable image"):
        load_coco(p, read_image_headers=True)


def test_wrong_skeleton_is_rejected(tmp_path):
    with pytest.raises(CocoError, match="do not match skeleton 'coco17'"):
        parse_coco(_make(tmp_path), root=tmp_path, skeleton=PRESETS["coco17"])


def test_unlabelled_coordinates_are_zeroed(tmp_path):
    data = _make(tmp_path)
    data["annotations"][0]["keypoints"][0:3] = [500.0, -3.0, 0]  # v = 0: position meaningless, not an error
    ds = parse_coco(data, root=tmp_path)
    assert ds.frame(10).keypoints[0, 0].tolist() == [0.0, 0.0, 0.0]


def test_keypoints_just_past_the_border_are_clipped(tmp_path):
    data = _make(tmp_path)
    data["annotations"][0]["keypoints"][0:2] = [50.4, -0.3]  # within 1 px of the 50x40 image
    ds = parse_coco(data, root=tmp_path)
    assert ds.frame(10).keypoints[0, 0, :2].tolist() == [50.0, 0.0]


def test_results_to_coco():
    kps = np.zeros((2, 14, 3), np.float32)
    kps[1, :, 0] = 3.0
    res = results_to_coco({7: (kps, np.array([0.9, 0.5]))})
    assert [r["image_id"] for r in res] == [7, 7]
    assert len(res[0]["keypoints"]) == 42 and res[1]["keypoints"][0] == 3.0 and res[0]["score"] == 0.9


def test_real_lspet_and_sports_files_validate():
    pool = load_coco(shared_file("lspet", "test.json"))
    assert len(pool) == 1000 and pool.num_people == 1000
    multi = load_coco(shared_file("sports_multi", "annotations.json"))
    assert multi.skeleton is PRESETS["coco17"] and multi.num_people == 165
