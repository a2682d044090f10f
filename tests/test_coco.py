import json

import numpy as np
import pytest

from activepose.pose.coco import CocoError, load_coco, parse_coco, results_to_coco, save_coco
from activepose.pose.skeleton import PRESETS

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


# --- annotations that used to be dropped silently ---------------------------------------------------------
def test_annotation_of_an_unknown_category_is_a_listed_problem(tmp_path):
    data = _make(tmp_path)
    data["annotations"][1]["category_id"] = 7
    p = _write(tmp_path, data)
    with pytest.raises(
        CocoError, match=r"annotation id 2 \(image id 20\): category_id 7 is not in 'categories' \(ids: 1\)"
    ) as info:
        load_coco(p)
    assert str(p) in str(info.value) and len(info.value.problems) == 1


def test_annotation_of_a_second_keypoint_category_and_a_non_integer_category_are_problems(tmp_path):
    data = _make(tmp_path)
    data["categories"].append({**data["categories"][0], "id": 2, "name": "person_b"})
    data["annotations"][0]["category_id"] = 2
    data["annotations"][1]["category_id"] = "person"
    with pytest.raises(CocoError) as info:
        parse_coco(data, root=tmp_path)
    assert info.value.problems == [
        "annotation id 1 (image id 10): category_id 2 is a second keypoint category; only one is supported "
        "(id 1, 'person')",
        "annotation id 2 (image id 20): 'category_id' must be an integer, got 'person'",
    ]


def test_category_without_an_id_is_a_problem(tmp_path):
    data = _make(tmp_path)
    data["categories"][0].pop("id")
    with pytest.raises(CocoError, match=r"categories\[0\]: needs an integer 'id'"):
        parse_coco(data, root=tmp_path)


def test_annotations_of_non_keypoint_categories_are_ignored_with_a_warning(tmp_path, caplog):
    data = _make(tmp_path)
    data["categories"].append({"id": 3, "name": "car", "supercategory": "vehicle"})
    data["annotations"].append({"id": 9, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5]})
    with caplog.at_level("WARNING"):
        ds = parse_coco(data, root=tmp_path)
    assert ds.num_people == 2 and ds.frame(10).annotation_ids == [1]
    assert "ignoring 1 annotation(s) of non-keypoint categories [3]" in caplog.text


def test_has_scores_tells_predictions_from_labels(tmp_path):
    data = _make(tmp_path)
    assert parse_coco(data, root=tmp_path).has_scores is False
    data["annotations"][1]["score"] = 0.83
    ds = parse_coco(data, root=tmp_path)
    assert ds.has_scores is True and ds.subset([10]).has_scores is True


def test_a_coco_results_list_is_named_as_such(tmp_path):
    p = tmp_path / "results.json"
    p.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [1, 2, 1] * 14, "score": 0.9}]))
    with pytest.raises(
        CocoError, match=r"(?s)results.json: .*a COCO results file \(a list of scored predictions\)"
    ):
        load_coco(p)


# --- EXIF orientation: the size training sees ---------------------------------------------------------------
def _exif_image(path, orientation: int, size=(60, 40)):
    """Write a random RGB image of `size` (stored width, height) with an EXIF Orientation tag; return pixels."""
    from PIL import Image

    pixels = np.random.default_rng(orientation).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return pixels


def test_exif_rotated_jpeg_size_is_the_size_read_image_returns(tmp_path):
    from activepose.fileio import exif_orientation, image_size, read_image

    p = tmp_path / "portrait.jpg"
    _exif_image(p, 6, size=(60, 40))  # stored 60 x 40, shown rotated 90 degrees: 40 x 60
    assert exif_orientation(p) == 6
    assert image_size(p) == (40, 60)
    assert image_size(p) == read_image(p).shape[1::-1] == read_image(p, grayscale=True).shape[1::-1]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_applies_every_exif_orientation_like_pil(tmp_path, orientation):
    from PIL import Image, ImageOps

    from activepose.fileio import image_size, read_image

    p = tmp_path / "o.png"  # lossless, so the pixels can be compared exactly
    _exif_image(p, orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    got = read_image(p)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert image_size(p) == got.shape[1::-1] == ((40, 60) if orientation >= 5 else (60, 40))


def test_headers_check_compares_the_json_size_with_the_oriented_size(tmp_path):
    data = _make(tmp_path, n_images=1)
    _exif_image(tmp_path / "img/1.jpg", 6, size=(50, 40))  # shown as 40 x 50
    data["images"][0]["file_name"] = "img/1.jpg"  # the JSON keeps the unrotated 50 x 40
    p = _write(tmp_path, data)
    load_coco(p)  # existence only by default
    with pytest.raises(CocoError) as info:
        load_coco(p, read_image_headers=True)
    (problem,) = info.value.problems
    assert problem.startswith(
        f"image id 10 ('img/1.jpg'): image file {tmp_path / 'img/1.jpg'} is 40x50 but the JSON says 50x40 "
        "(its EXIF orientation 6 turns the stored 50x40 pixels by 90 degrees"
    )
    data["images"][0].update(width=40, height=50)
    data["annotations"][0]["keypoints"] = [5.0, 6.0, 2] * 14
    assert load_coco(_write(tmp_path, data), read_image_headers=True).frame(10).width == 40


def test_probe_image_returns_oriented_size_and_content_hash(tmp_path):
    from activepose.fileio import file_sha1, probe_image

    p = tmp_path / "a.jpg"
    _exif_image(p, 8, size=(60, 40))
    assert probe_image(p) == (40, 60, file_sha1(p))
    assert probe_image(p, decode=False) == (40, 60, file_sha1(p))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not an image", r"bad\.png: not a readable image \(unknown format or corrupt header\)"),
        (b"", r"bad\.png: empty file, not an image"),
        (None, r"bad\.png: image file not found"),
        ("truncated", r"bad\.png: not a readable image \(corrupt or unsupported format\)"),
    ],
)
def test_probe_image_names_unreadable_files(tmp_path, content, message):
    import cv2

    from activepose.fileio import ImageReadError, probe_image

    p = tmp_path / "bad.png"
    if content == "truncated":  # a valid header, then the pixel data cut off
        ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        p.write_bytes(buf.tobytes()[:120])
    elif content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError, match=message):
        probe_image(p)


def test_frames_of_footage_keep_video_and_frame_and_bad_ones_are_named(tmp_path):
    data = _make(tmp_path, n_images=3)
    data["images"][0].update(video="cam-1", frame=12)
    data["images"][1].update(video="cam-1")  # a frame index is optional
    data["images"][2].update(video=42)  # a numeric video id: kept as its text
    ds = load_coco(_write(tmp_path, data))
    assert [(f.video, f.frame) for f in ds] == [("cam-1", 12), ("cam-1", None), ("42", None)]
    back = load_coco(save_coco(ds, tmp_path / "copy.json"))
    assert [(f.video, f.frame) for f in back] == [("cam-1", 12), ("cam-1", None), ("42", None)]
    data["images"][2].pop("video")
    data["images"][0].update(video="")
    data["images"][1].update(frame=-3)
    data["images"][2].update(frame=1.5)
    with pytest.raises(CocoError) as err:
        load_coco(_write(tmp_path, data))
    text = str(err.value)
    assert "image id 10" in text and "'video' must be a non-empty name" in text
    assert "image id 20" in text and "'frame' must be a frame index" in text and "image id 30" in text


def test_real_youtube_pose_frames_carry_their_video():
    pool = load_coco(shared_file("youtube_pose", "pool.json"), check_images=False)
    assert len({f.video for f in pool}) == 32 and all(f.frame is not None for f in pool)


def test_a_skewed_subset_of_footage_gives_a_few_videos_most_frames(tmp_path):
    from collections import Counter

    from activepose.errors import ConfigError
    from activepose.workflow.common import skewed_video_subset

    data = _make(tmp_path, n_images=200, write_images=False)
    for k, im in enumerate(data["images"]):
        im["video"] = f"v{k % 10}"  # 10 videos of 20 frames
    ds = load_coco(_write(tmp_path, data), check_images=False)
    even = Counter(ds.frame(i).video for i in skewed_video_subset(ds, 50, 0.0, seed=1).image_ids)
    assert sorted(even.values()) == [5] * 10
    sub = skewed_video_subset(ds, 50, 1.5, seed=1)
    per = sorted(Counter(ds.frame(i).video for i in sub.image_ids).values(), reverse=True)
    assert (
        sum(per) == 50 and len(per) == 10 and per[0] == 20 and per[-1] == 1
    )  # capped at a video's 20 frames
    assert sum(per[:3]) >= 35  # three videos give most frames
    assert sub.image_ids == skewed_video_subset(ds, 50, 1.5, seed=1).image_ids  # seeded
    assert sub.image_ids != skewed_video_subset(ds, 50, 1.5, seed=2).image_ids
    with pytest.raises(ConfigError, match="needs every image's video"):
        skewed_video_subset(
            load_coco(_write(tmp_path, _make(tmp_path, 3, write_images=False)), check_images=False), 2, 1.0
        )
