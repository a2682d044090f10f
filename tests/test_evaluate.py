"""Metrics (person count accuracy, OKS AP, PCK), the report table and the test-time augmentations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from activepose.config import TTA_NAMES, EvalConfig, parse_ttas
from activepose.errors import ConfigError
from activepose.pose.coco import CocoKeypoints, Frame, annotation_dict
from activepose.pose.evaluate import (
    METRICS,
    metrics_for,
    oks_ap,
    pck,
    person_count_accuracy,
    reference_sizes,
    report_table,
    tta_metrics,
)
from activepose.pose.skeleton import PRESETS, Skeleton
from activepose.pose.tta import TTAS, apply_tta, get_tta


# --- fixtures -------------------------------------------------------------------------------------------
def make_dataset(
    skeleton: Skeleton, people_per_image=(1, 3, 2, 0), seed: int = 0, unlabelled: int = 2
) -> CocoKeypoints:
    """Return a synthetic data set: people in separate vertical strips of a 320 x 200 image.

    Each person has `unlabelled` random keypoints not labelled, never the torso (left_shoulder, right_hip).
    """
    rng = np.random.default_rng(seed)
    k = skeleton.num_keypoints
    torso = [skeleton.index(n) for n in ("left_shoulder", "right_hip") if n in skeleton.keypoints]
    w, h = 320, 200
    frames = []
    for image_id, n in enumerate(people_per_image, start=10):
        people = np.zeros((n, k, 3), np.float32)
        for p in range(n):
            x0 = p * (w / max(n, 1)) + 10
            people[p, :, 0] = rng.uniform(x0, x0 + w / max(n, 1) - 20, k)
            people[p, :, 1] = rng.uniform(20, h - 20, k)
            people[p, :, 2] = 2
            choices = [j for j in range(k) if j not in torso]
            drop = rng.choice(choices, size=unlabelled, replace=False)
            people[p, drop] = 0
        frames.append(
            Frame(
                image_id, f"img{image_id}.jpg", w, h, people, list(range(100 * image_id, 100 * image_id + n))
            )
        )
    return CocoKeypoints(frames=frames, skeleton=skeleton, root=Path("."))


def perfect_predictions(ds: CocoKeypoints) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Return predictions equal to the GT: found parts at the GT position with confidence 0.9."""
    out = {}
    for f in ds.frames:
        kps = f.keypoints.copy()
        kps[..., 2] = np.where(kps[..., 2] > 0, 0.9, 0.0)
        out[f.image_id] = (kps, np.linspace(1.0, 0.5, len(kps)).astype(np.float32))
    return out


# --- person count accuracy --------------------------------------------------------------------------------
def test_person_count_accuracy_known_values():
    pred, gt = [1, 3, 0], [2, 2, 1]
    # Hand computation: correct people per image min(1,2) + min(3,2) + min(0,1) = 1 + 2 + 0 of 2 + 2 + 1 = 5.
    m = person_count_accuracy(pred, gt)
    assert m["count_acc"] == pytest.approx(3 / 5)
    assert m["count_exact"] == pytest.approx(0 / 3)
    assert m["count_mae"] == pytest.approx((1 + 1 + 1) / 3)

    m = person_count_accuracy([2, 0, 4, 1], [2, 0, 1, 1])
    assert m["count_acc"] == pytest.approx(
        (2 + 0 + 1 + 1) / (2 + 0 + 1 + 1)
    )  # over-counting is not penalised
    assert m["count_exact"] == pytest.approx(3 / 4)
    assert m["count_mae"] == pytest.approx(3 / 4)


def test_person_count_accuracy_edge_cases():
    m = person_count_accuracy([1, 0], [0, 0])  # no GT people: count_acc undefined
    assert math.isnan(m["count_acc"]) and m["count_exact"] == 0.5 and m["count_mae"] == 0.5
    assert all(math.isnan(v) for v in person_count_accuracy([], []).values())
    with pytest.raises(ValueError):
        person_count_accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        person_count_accuracy([-1], [1])


# --- OKS AP ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["lsp14", "coco17"])
def test_oks_ap_perfect_shifted_and_empty(preset):
    ds = make_dataset(PRESETS[preset])
    # A person with no labelled keypoint must be ignored by COCOeval, not count as a miss.
    f = ds.frames[0]
    f.keypoints = np.concatenate([f.keypoints, np.zeros((1, *f.keypoints.shape[1:]), np.float32)])
    preds = perfect_predictions(ds)
    m = oks_ap(ds, preds)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AR"] == pytest.approx(1.0)

    # Shift every keypoint so that each of its OKS terms is exactly 0.62: AP at thresholds 0.50, 0.55, 0.60
    # is 1 and at 0.65 ... 0.95 is 0, so AP = AR = 3/10, AP50 = 1, AP75 = 0.
    target = 0.62
    var = (2 * ds.skeleton.sigma_array) ** 2
    shifted = {}
    for fr in ds.frames:
        kps, scores = preds[fr.image_id]
        kps = kps.copy()
        for p, person in enumerate(fr.keypoints):
            area = annotation_dict(1, fr.image_id, person)["area"]
            d = np.sqrt(-2.0 * np.log(target) * area * var)
            kps[p, :, 0] += np.where(person[:, 2] > 0, d, 0.0)
        shifted[fr.image_id] = (kps, scores)
    m = oks_ap(ds, shifted)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.3, abs=1e-6) and m["AR"] == pytest.approx(0.3, abs=1e-6)

    m = oks_ap(ds, {})
    assert m == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}


def test_oks_ap_without_labelled_gt_is_nan_and_unknown_ids_dropped():
    ds = make_dataset(PRESETS["lsp14"], people_per_image=(0, 0))
    assert all(math.isnan(v) for v in oks_ap(ds, {}).values())
    ds = make_dataset(PRESETS["lsp14"], people_per_image=(1,))
    preds = perfect_predictions(ds)
    preds[999] = preds[ds.frames[0].image_id]
    assert oks_ap(ds, preds)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sigmas"):
        oks_ap(ds, preds, sigmas=[0.05] * 3)


def test_oks_ap_missing_person_lowers_recall():
    ds = make_dataset(PRESETS["coco17"], people_per_image=(2, 2))
    preds = perfect_predictions(ds)
    first = ds.frames[0].image_id
    preds[first] = (preds[first][0][:1], preds[first][1][:1])
    m = oks_ap(ds, preds)
    assert m["AR"] == pytest.approx(3 / 4)  # 3 of 4 people found at every threshold
    assert m["AP"] < 1.0


# --- PCK ------------------------------------------------------------------------------------------------
def test_pck_perfect_and_moved_keypoints():
    ds = make_dataset(PRESETS["lsp14"], people_per_image=(1, 3, 2))
    preds = perfect_predictions(ds)
    assert pck(ds, preds) == pytest.approx(1.0)

    total = sum(int((f.keypoints[..., 2] > 0).sum()) for f in ds.frames)
    fr = ds.frames[1]
    ref = reference_sizes(fr.keypoints, ds.skeleton)
    kps = preds[fr.image_id][0].copy()
    lab0 = np.flatnonzero(fr.keypoints[0, :, 2] > 0)
    far, near = lab0[:3], lab0[3:5]
    kps[0, far, 1] += 1.5 * 0.2 * ref[0]  # beyond alpha * torso
    kps[0, near, 1] += 0.5 * 0.2 * ref[0]  # within
    preds[fr.image_id] = (kps, preds[fr.image_id][1])
    assert pck(ds, preds, alpha=0.2) == pytest.approx((total - len(far)) / total)
    # At alpha = 0.1 the "near" ones (0.5 * 0.2 = 0.1 x torso) are borderline: use 0.09 to miss them too.
    assert pck(ds, preds, alpha=0.09) == pytest.approx((total - len(far) - len(near)) / total)


def test_pck_extra_missing_reordered_people_and_unfound_parts():
    ds = make_dataset(PRESETS["lsp14"], people_per_image=(3, 2))
    preds = perfect_predictions(ds)
    total = sum(int((f.keypoints[..., 2] > 0).sum()) for f in ds.frames)
    a, b = (f.image_id for f in ds.frames)
    # Reverse the order of predicted people and add a far-away extra person: no change.
    kps, sc = preds[a]
    extra = kps[:1].copy()
    extra[..., :2] += 1000
    preds[a] = (np.concatenate([kps[::-1], extra]), np.concatenate([sc[::-1], sc[:1]]))
    assert pck(ds, preds) == pytest.approx(1.0)
    # Drop one predicted person of image b: its labelled keypoints become misses.
    kps_b, sc_b = preds[b]
    preds[b] = (kps_b[1:], sc_b[1:])
    missed = int((ds.frames[1].keypoints[0, :, 2] > 0).sum())
    assert pck(ds, preds) == pytest.approx((total - missed) / total)
    # Parts at the right place but not found (v = 0) are misses too.
    kps_b = preds[b][0].copy()
    kps_b[0, 0, 2] = 0.0
    lost = int(ds.frames[1].keypoints[1, 0, 2] > 0)
    preds[b] = (kps_b, preds[b][1])
    assert pck(ds, preds) == pytest.approx((total - missed - lost) / total)
    # No predictions at all.
    assert pck(ds, {}) == 0.0


def test_pck_reference_fallback_and_undefined():
    sk = Skeleton("tri", ("a", "b", "c"), ((0, 1), (1, 2)))
    people = np.array(
        [
            [[10, 10, 2], [40, 20, 2], [0, 0, 0]],  # box 30 x 10 -> 30
            [[5, 5, 2], [0, 0, 0], [0, 0, 0]],  # one labelled point: undefined
        ],
        np.float32,
    )
    ref = reference_sizes(people, sk)
    assert ref[0] == pytest.approx(30.0) and math.isnan(ref[1])
    lsp = PRESETS["lsp14"]
    p = np.zeros((1, 14, 3), np.float32)
    p[0, lsp.index("left_shoulder")] = (10, 10, 2)
    p[0, lsp.index("right_hip")] = (13, 14, 2)
    p[0, lsp.index("head_top")] = (100, 0, 2)
    assert reference_sizes(p, lsp)[0] == pytest.approx(5.0)  # torso wins over the box
    p[0, lsp.index("right_hip")] = 0
    assert reference_sizes(p, lsp)[0] == pytest.approx(90.0)  # no torso: longer box side


# --- combined metrics and report --------------------------------------------------------------------------
def test_metrics_for_and_report_table():
    from rich.console import Console

    ds = make_dataset(PRESETS["coco17"])
    m = metrics_for(ds, perfect_predictions(ds))
    assert set(METRICS) <= set(m)
    assert m["count_acc"] == 1.0 and m["count_exact"] == 1.0 and m["PCK"] == pytest.approx(1.0)
    assert m["AP"] == pytest.approx(1.0)
    assert m["images"] == len(ds) and m["people"] == ds.num_people
    scale = {"policy": "auto", "factor": 0.5, "input_sizes": {"min": 8, "median": 8.0, "max": 8}, "capped": 0}
    report = {"clean": m, "dark": {**m, "AP": math.nan}, "scale": scale}
    console = Console(width=200, record=True)
    console.print(report_table(report))
    text = console.export_text()
    assert "clean" in text and "dark" in text and "count_acc" in text and "–" in text and "100.0" in text
    assert "scale" not in text and "policy" not in text and "auto" not in text  # not a TTA row or column
    assert list(tta_metrics(report)) == ["clean", "dark"]


def test_eval_config_scale_and_scale_summary():
    from activepose.pose.evaluate import scale_summary

    ds = make_dataset(PRESETS["coco17"])
    assert {(f.width, f.height) for f in ds.frames} == {(320, 200)}
    assert EvalConfig(scale="AUTO").scale == "auto" and EvalConfig(scale="0.5").scale == 0.5
    fixed = scale_summary(ds, EvalConfig(input_size=64))  # default without a training scale: fixed
    assert fixed == {"policy": "fixed", "factor": None, "capped": 0,
                     "input_sizes": {"min": 64, "median": 64.0, "max": 64}}  # fmt: skip
    auto = scale_summary(ds, EvalConfig(input_size=64, train_scale=0.25))  # default with one: auto
    assert auto["policy"] == "auto" and auto["factor"] == 0.25
    assert auto["input_sizes"] == {"min": 80, "median": 80.0, "max": 80}  # 320 x 0.25
    fallback = scale_summary(ds, EvalConfig(input_size=64, scale="auto"))
    assert fallback["policy"] == "fixed" and "falls back to fixed" in fallback["note"]


# --- test-time augmentations ----------------------------------------------------------------------------
def _dot_image(w: int, h: int, x: float, y: float, half: int = 2) -> np.ndarray:
    """Return a black image with a white (2*half+1)^2 square centred on the pixel containing (x, y)."""
    img = np.zeros((h, w, 3), np.uint8)
    cx, cy = int(x), int(y)
    img[max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1] = 255
    return img


def _centroid(img: np.ndarray) -> np.ndarray:
    """Return the intensity centroid in COCO continuous coordinates (pixel i centre = i + 0.5)."""
    g = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(g * (xs + 0.5)).sum(), (g * (ys + 0.5)).sum()]) / g.sum()


def test_tta_registry_order_and_shapes():
    assert TTA_NAMES == ("clean", "blur", "bright", "dark", "zoom_in", "zoom_out")
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    people = np.array([[[5.5, 6.5, 2], [0, 0, 0]]], np.float32)
    for name in TTA_NAMES:
        out, pts = apply_tta(name, img, people)
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert pts.shape == people.shape and pts[0, 1, 2] == 0, name
    assert np.array_equal(apply_tta("clean", img, people)[0], img)
    with pytest.raises(ValueError, match="zoom_in"):
        get_tta("sharpen")


def test_tta_blur_kernel_5_and_intensity():
    img = np.zeros((21, 21, 3), np.uint8)
    img[10, 10] = 250
    out, _ = apply_tta("blur", img, np.zeros((0, 14, 3), np.float32))
    ys, xs = np.nonzero(out[..., 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 12, 8, 12)  # 5 x 5 box
    assert out[10, 10, 0] == pytest.approx(250 / 25, abs=1)

    rng = np.random.default_rng(2)
    grey = rng.integers(50, 150, (40, 60, 3), dtype=np.uint8)
    for name, factor in (("bright", 1.3), ("dark", 0.7)):
        out, _ = apply_tta(name, grey, np.zeros((0, 14, 3), np.float32))
        assert out.mean() / grey.mean() == pytest.approx(factor, rel=0.01), name
    white = np.full((4, 4, 3), 250, np.uint8)
    assert apply_tta("bright", white, np.zeros((0, 1, 3)))[0].max() == 255  # clipped, no wrap-around


@pytest.mark.parametrize("name", ["zoom_in", "zoom_out"])
def test_tta_zoom_moves_keypoints_with_the_image(name):
    w, h = 96, 64
    for x, y in [(20.5, 15.5), (70.5, 40.5), (48.5, 32.5), (30.5, 50.5)]:
        img = _dot_image(w, h, x, y, half=3)
        before = _centroid(img)
        out, pts = apply_tta(name, img, np.array([[[before[0], before[1], 2]]], np.float32))
        assert pts[0, 0, 2] == 2
        px, py = pts[0, 0, :2]
        assert out[int(py), int(px), 0] > 128  # the dot is under the moved keypoint
        assert np.allclose(_centroid(out), (px, py), atol=0.25)
    # Relative to the centre the keypoint scales by the TTA's factor.
    s = {"zoom_in": 1.4, "zoom_out": 0.6}[name]
    _, pts = apply_tta(name, np.zeros((h, w, 3), np.uint8), np.array([[[10.0, 60.0, 1]]], np.float32))
    if name == "zoom_out":
        assert np.allclose(pts[0, 0, :2], ((10 - w / 2) * s + w / 2, (60 - h / 2) * s + h / 2))
        assert pts[0, 0, 2] == 1
    else:  # leaves the image -> not labelled, coordinates 0
        assert np.array_equal(pts[0, 0], [0, 0, 0])


def test_tta_zoom_borders():
    white = np.full((50, 80, 3), 200, np.uint8)
    zin = TTAS["zoom_in"](white, np.zeros((0, 3, 3)))[0]
    assert (zin == 200).all()
    zout = TTAS["zoom_out"](white, np.zeros((0, 3, 3)))[0]
    assert (zout[:5, :5] == 0).all() and (zout[-5:, -5:] == 0).all() and (zout[25, 40] == 200).all()


# --- option validation ---------------------------------------------------------------------------------------
def test_parse_ttas_reads_the_tta_option():
    assert parse_ttas("all") == TTA_NAMES and parse_ttas(" ALL ") == TTA_NAMES
    assert parse_ttas("none") == ("clean",)
    assert parse_ttas(" blur, clean ,blur") == ("blur", "clean")
    with pytest.raises(ConfigError) as info:
        parse_ttas("clean,foo")
    assert str(info.value) == f"unknown TTA 'foo'; choose from {', '.join(TTA_NAMES)}, 'all' or 'none'"
    with pytest.raises(ConfigError, match="^--tta names no TTA"):
        parse_ttas(" , ")


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(ttas=("clean", "sharpen")), r"^unknown TTA 'sharpen'; choose from clean, blur, "),
        (dict(ttas="clean,sharpen"), r"^unknown TTA 'sharpen'; choose from clean, blur, "),
        (dict(ttas=()), r"^--tta names no TTA"),
        (dict(batch_size=0), r"^--batch-size must be >= 1, got 0$"),
        (dict(input_size=100), r"^--input-size must be a positive multiple of 8, got 100$"),
        (dict(device="gpu"), r"^--device 'gpu' is not a device: use one of auto, cpu, cuda, cuda:N"),
        (dict(num_workers=-1), r"^--workers must be >= 0, got -1$"),
        (dict(scale="big"), r"^--scale must be auto, fixed or a factor > 0 \(e.g. 0.5\), got 'big'$"),
        (dict(scale=-1.0), r"^--scale must be auto, fixed or a factor > 0"),
        (dict(train_scale=0.0), r"^train_scale must be > 0, got 0.0$"),
    ],
)
def test_eval_config_errors_name_the_option(kw, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**kw)


def test_eval_config_accepts_the_tta_option_text_and_unknown_get_tta_is_a_config_error():
    assert EvalConfig(ttas="zoom_in,clean").ttas == ("zoom_in", "clean")
    assert EvalConfig(ttas=["blur"], device="cuda:0").ttas == ("blur",)
    with pytest.raises(ConfigError, match=r"^unknown TTA 'sharpen'; choose from clean, blur"):
        get_tta("sharpen")
