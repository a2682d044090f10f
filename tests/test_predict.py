"""Inference: coordinate mapping through letterbox + decode, TTA samples, evaluate_model, overlays.

The network is replaced by `GroundTruthOracle`, a test double whose forward returns the targets encoded
from the ground truth of whichever registered (letterboxed) image it is given. The rest of the pipeline —
letterbox, decoder, mapping back to image coordinates, TTA ground truth, metrics — is the real code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from activepose.pose.coco import CocoKeypoints, Frame
from activepose.pose.skeleton import PRESETS, Skeleton

SK = PRESETS["lsp14"]
INPUT = 192

# A canonical upright LSP-14 pose: (x, y) in units of the person's height, origin between the hips.
_POSE = {
    "head_top": (0.0, -1.0), "neck": (0.0, -0.75), "right_shoulder": (-0.2, -0.7), "left_shoulder": (0.2, -0.7),
    "right_elbow": (-0.28, -0.42), "left_elbow": (0.28, -0.42), "right_wrist": (-0.32, -0.15),
    "left_wrist": (0.32, -0.15), "right_hip": (-0.12, 0.0), "left_hip": (0.12, 0.0),
    "right_knee": (-0.14, 0.45), "left_knee": (0.14, 0.45), "right_ankle": (-0.15, 0.9), "left_ankle": (0.15, 0.9),
}  # fmt: skip


def make_person(cx: float, hip_y: float, height: float, rng: np.random.Generator) -> np.ndarray:
    """Return (K, 3) keypoints of an upright person with a little jitter, all visible."""
    xy = np.array([_POSE[n] for n in SK.keypoints], np.float32) * height
    xy += rng.normal(0, 0.02 * height, xy.shape).astype(np.float32)
    out = np.zeros((SK.num_keypoints, 3), np.float32)
    out[:, 0] = xy[:, 0] + cx
    out[:, 1] = xy[:, 1] + hip_y
    out[:, 2] = 2
    return out


def make_coco(tmp_path: Path, seed: int = 0) -> CocoKeypoints:
    """Return a tiny data set of noise images (non-square, different sizes) with 1-3 separated people.

    People keep 2.5 output cells (20 input px) from the image borders: near a border the decoder's
    smoothing sees a truncated Gaussian, which is a decoder matter, not one of coordinate mapping.
    """
    import cv2

    rng = np.random.default_rng(seed)
    specs = [(160, 120, 1), (120, 150, 2), (200, 140, 3), (140, 140, 2)]  # (width, height, people)
    frames = []
    for i, (w, h, n) in enumerate(specs, start=1):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img[:, :, ::-1])
        margin = 20 * max(w, h) / INPUT
        slot = (w - 2 * margin) / n
        # Pose spans y in [-1.0, 0.9] and x in [-0.32, 0.32] person heights (+ jitter).
        height = min((h - 2 * margin) / 1.95, slot / 0.8)
        hip_y = margin + 1.0 * height
        people = np.stack([make_person(margin + (p + 0.5) * slot, hip_y, height, rng) for p in range(n)])
        frames.append(
            Frame(i, f"im{i}.png", w, h, people.astype(np.float32), list(range(10 * i, 10 * i + n)))
        )
    return CocoKeypoints(frames=frames, skeleton=SK, root=tmp_path)


class GroundTruthOracle(torch.nn.Module):
    """Test double for PoseNet: returns the encoded GT targets of each registered input image (one stage).

    Register (image, people in image coordinates) pairs; forward looks each input up by its exact pixels
    after letterboxing, so it tests everything around the network but not the network.
    """

    def __init__(self, skeleton: Skeleton, input_size: int):
        super().__init__()
        self.skeleton, self.input_size = skeleton, input_size
        self._targets: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.batches: list[tuple[int, ...]] = []  # input shapes seen by forward
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def register(self, image: np.ndarray, people: np.ndarray, size: int | None = None) -> None:
        """Register `image` as letterboxed to `size` (default: the oracle's input size)."""
        from activepose.pose.data import letterbox
        from activepose.pose.fields import encode_targets

        size = size or self.input_size
        padded, scale = letterbox(image, size)
        scaled = np.array(people, np.float32).reshape(-1, self.skeleton.num_keypoints, 3)
        scaled[..., :2] *= scale
        hm, paf = encode_targets(scaled, self.skeleton, (size, size))
        self._targets[padded.tobytes()] = (torch.from_numpy(hm), torch.from_numpy(paf))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # Inputs are uint8 / 255, so rounding recovers the letterboxed image exactly.
        keys = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self.batches.append(tuple(x.shape))
        found = [self._targets.get(k.tobytes()) for k in keys]
        assert all(t is not None for t in found), "GroundTruthOracle: input image was not registered"
        hms, pafs = zip(*found, strict=True)
        return [(torch.stack(hms).to(x.device), torch.stack(pafs).to(x.device))]


def make_decoder(skeleton: Skeleton):
    from activepose.config import DecoderConfig
    from activepose.pose.decode import Decoder

    return Decoder(skeleton, DecoderConfig(), stride=8)


def test_predict_images_maps_back_to_image_coordinates(tmp_path):
    from activepose.fileio import read_image
    from activepose.pose.predict import predict_images

    coco = make_coco(tmp_path)
    oracle = GroundTruthOracle(SK, INPUT)
    images = [read_image(coco.image_path(f)) for f in coco.frames]
    for img, f in zip(images, coco.frames, strict=True):
        oracle.register(img, f.keypoints)
    oracle.train()
    preds = predict_images(oracle, images, make_decoder(SK), input_size=INPUT)
    assert oracle.training  # mode restored
    assert len(preds) == len(images)
    for (kps, scores), f in zip(preds, coco.frames, strict=True):
        assert kps.shape == (f.num_people, SK.num_keypoints, 3) and scores.shape == (f.num_people,)
        assert (kps[..., 2] > 0).all()
        # Match by hip x (people are separated horizontally); all keypoints within ~1/3 of a cell.
        order = np.argsort(kps[:, SK.index("left_hip"), 0])
        gt = f.keypoints[np.argsort(f.keypoints[:, SK.index("left_hip"), 0])]
        scale = INPUT / max(f.width, f.height)
        err = np.abs(kps[order, :, :2] - gt[:, :, :2])
        # Within 1 input px (the decoder itself is good to ~0.25 px here); half a cell would be 4 px.
        assert err.max() < 1.0 / scale, (f.image_id, err.max() * scale)
    assert predict_images(oracle, [], make_decoder(SK), input_size=INPUT) == []


def test_tta_samples_and_ground_truth_agree(tmp_path):
    from activepose.pose.predict import iter_tta_samples, tta_ground_truth

    coco = make_coco(tmp_path)
    for name in ("clean", "zoom_in", "zoom_out"):
        gt = tta_ground_truth(coco, name)
        samples = list(iter_tta_samples(coco, name, num_workers=2, prefetch=2))
        assert [f.image_id for f, _ in samples] == coco.image_ids
        for (frame, img), g in zip(samples, gt.frames, strict=True):
            assert img.shape == (g.height, g.width, 3)
            assert np.array_equal(frame.keypoints, g.keypoints)
    inline = list(iter_tta_samples(coco, "blur", num_workers=0))
    threaded = list(iter_tta_samples(coco, "blur", num_workers=2, prefetch=1))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(inline, threaded, strict=True))
    assert not np.array_equal(tta_ground_truth(coco, "zoom_in").frames[0].keypoints, coco.frames[0].keypoints)
    assert np.array_equal(
        coco.frames[0].keypoints[..., 2], 2 * np.ones_like(coco.frames[0].keypoints[..., 2])
    )


def test_evaluate_model_oracle_vs_untrained(tmp_path):
    from activepose.config import EvalConfig
    from activepose.pose.evaluate import evaluate_model
    from activepose.pose.models import create_model
    from activepose.pose.predict import iter_tta_samples

    coco = make_coco(tmp_path)
    ttas = ("clean", "dark", "zoom_out")
    oracle = GroundTruthOracle(SK, INPUT)
    for name in ttas:
        for frame, img in iter_tta_samples(coco, name):
            oracle.register(img, frame.keypoints)
    cfg = EvalConfig(input_size=INPUT, batch_size=3, ttas=ttas)
    seen = []
    report = evaluate_model(oracle, coco, make_decoder(SK), cfg, progress=seen.append)
    assert sum(seen) == len(coco) * len(ttas)
    assert list(report) == list(ttas)
    for name, m in report.items():
        assert m["count_acc"] == 1.0 and m["count_exact"] == 1.0, name
        assert m["AP"] > 0.9 and m["PCK"] > 0.95, (name, m)
        assert m["images"] == len(coco) and m["people"] == coco.num_people

    torch.manual_seed(0)
    net = create_model("vgg_tiny", num_keypoints=SK.num_keypoints, num_limbs=SK.num_limbs, pretrained=False)
    untrained = evaluate_model(
        net, coco, make_decoder(SK), EvalConfig(input_size=INPUT, batch_size=4, ttas=("clean",))
    )
    m = untrained["clean"]
    assert m["AP"] < 0.2 and m["PCK"] < 0.5
    assert not (m["count_acc"] == 1.0 and m["count_exact"] == 1.0)


def _shade_of(pixels: np.ndarray, colour) -> tuple[np.ndarray, np.ndarray]:
    """Return (alpha, residual) of RGB `pixels` (..., 3) read as alpha * `colour`, alpha in [0, 1].

    Anti-aliased drawing on black blends each pixel towards the drawing colour, and a black outline over
    it blends back towards black: either way the pixel stays on the line from black to the colour, whatever
    the renderer's coverage values. Residual: the largest channel distance from that line (rounding: a
    few units of 255).
    """
    c = np.asarray(colour, np.float64)
    p = np.asarray(pixels, np.float64)
    alpha = p @ c / (c @ c)
    return alpha, np.abs(p - alpha[..., None] * c).max(axis=-1)


def test_draw_overlay_colours_people():
    from activepose.pose.predict import draw_overlay, person_colour

    # Renderer-independent checks (OpenCV 4 and 5 anti-alias differently: exact-colour pixel counts differ).
    rng = np.random.default_rng(0)
    people = np.stack([make_person(40, 62, 40, rng), make_person(110, 62, 40, rng)])  # x 27-53 and 97-123
    hidden = SK.index("left_wrist")
    people[1, hidden, 2] = 0  # not found: neither it nor its limb is drawn
    img = np.zeros((110, 150, 3), np.uint8)
    out = draw_overlay(img, people, SK, scores=np.array([0.9, 0.5]))
    plain = draw_overlay(img, people, SK)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not img.any()  # input untouched
    colours = [person_colour(0), person_colour(1)]
    assert _shade_of(colours[1], colours[0])[1] > 50  # distinct hues, not shades of each other

    def window(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """3x3 pixels around COCO point `xy` (pixel centres at +0.5)."""
        x, y = (int(round(v - 0.5)) for v in xy)
        return image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)

    for i, (kps, colour) in enumerate(zip(people, colours, strict=True)):
        # Each person is drawn in its own colour only: every pixel on its side is a shade of that colour.
        half = out[:, :75] if i == 0 else out[:, 75:]
        alpha, residual = _shade_of(half, colour)
        assert residual.max() <= 6, (i, residual.max())
        assert (alpha > 0.95).any()  # the colour itself appears, not only dim blends
        # Every drawn limb passes through its midpoint in the person's colour (>= half coverage within 1 px).
        for a, b in SK.limbs:
            mid = (kps[a, :2] + kps[b, :2]) / 2
            alpha, residual = _shade_of(window(plain, mid), colour)
            if kps[a, 2] > 0 and kps[b, 2] > 0:
                assert alpha.max() > 0.5 and residual.max() <= 6, (i, SK.keypoints[a], SK.keypoints[b])
            else:  # at most a faint anti-aliasing fringe of the neighbouring dot
                assert alpha.max() < 0.1, (i, SK.keypoints[a], SK.keypoints[b])
        # Found keypoints get a dot in the person's colour, the hidden one none.
        for j, xy in enumerate(kps[:, :2]):
            alpha = _shade_of(window(plain, xy), colour)[0].max()
            assert alpha > 0.5 if kps[j, 2] > 0 else alpha < 0.1, (i, SK.keypoints[j], alpha)
        # The score is written above the topmost keypoint (its pixels are on this side, shades of the colour).
        top_y = int(kps[:, 1].min())
        rows = np.nonzero((half != (plain[:, :75] if i == 0 else plain[:, 75:])).any(axis=2))[0]
        assert rows.size > 0 and rows.max() < top_y, (i, top_y, rows.max(initial=-1))


def test_predict_coco_names_unreadable_image(tmp_path):
    from activepose.fileio import ImageReadError
    from activepose.pose.predict import predict_coco

    coco = make_coco(tmp_path)
    (tmp_path / "im1.png").write_bytes(b"not an image")
    oracle = GroundTruthOracle(SK, INPUT)
    with pytest.raises(ImageReadError, match="im1.png"):
        predict_coco(oracle, coco, make_decoder(SK), input_size=INPUT, batch_size=2)


def test_oracle_on_real_lspet_images():
    from activepose.config import EvalConfig
    from activepose.pose.coco import load_coco
    from activepose.pose.evaluate import evaluate_model
    from activepose.pose.predict import iter_tta_samples

    from .conftest import shared_file

    coco = load_coco(shared_file("lspet", "test.json"))
    # People with every joint labelled: with the neck (root of the LSP tree) unlabelled even perfect
    # targets fall apart into fragments below the decoder's min_parts — a data/skeleton property.
    complete = [f.image_id for f in coco.frames if (f.keypoints[..., 2] > 0).all()]
    coco = coco.subset(complete[:4])
    ttas = ("clean", "zoom_in")
    oracle = GroundTruthOracle(coco.skeleton, INPUT)
    for name in ttas:
        for frame, img in iter_tta_samples(coco, name):
            oracle.register(img, frame.keypoints)
    report = evaluate_model(
        oracle, coco, make_decoder(coco.skeleton), EvalConfig(input_size=INPUT, ttas=ttas)
    )
    for name, m in report.items():
        assert m["count_acc"] == 1.0 and m["PCK"] > 0.9, (name, m)


# --- input scale ------------------------------------------------------------------------------------------
def test_input_scale_sizes_policies_and_parsing():
    from activepose.config import parse_scale
    from activepose.errors import ConfigError
    from activepose.pose.predict import InputScale, describe_scale, median_train_scale

    auto = InputScale(128, 0.5, "auto")
    assert auto.size_for(256, 200) == 128 and auto.size_for(200, 256) == 128
    assert auto.size_for(1024, 256) == 512 and not auto.capped(1024, 256)  # 4 x 128: the cap itself
    assert auto.size_for(250, 100) == 128  # 125 rounded up to a multiple of 8
    assert auto.size_for(1081, 256) == 512 and auto.capped(1081, 256)  # 541 -> capped at 4 x 128
    assert auto.size_for(5, 3) == 8  # at least one output cell
    assert InputScale(128).size_for(1024, 256) == 128  # fixed
    info = auto.summary([(256, 200), (512, 256), (1081, 256)])
    assert info == {"policy": "auto", "factor": 0.5, "input_sizes": {"min": 128, "median": 256.0, "max": 512},
                    "capped": 1}  # fmt: skip
    assert describe_scale(info) == "auto (x0.50 of each image, network input 128-512 px; 1 image(s) capped)"
    assert describe_scale(InputScale(128).summary([(5, 5)])) == "fixed (every image letterboxed to 128 px)"

    assert InputScale.resolve(None, 128, None) == (InputScale(128), None)
    assert InputScale.resolve(None, 128, 0.5) == (auto, None)
    assert InputScale.resolve("fixed", 128, 0.5) == (InputScale(128), None)
    assert InputScale.resolve("0.25", 128, 0.5) == (InputScale(128, 0.25, "factor"), None)
    fallback, note = InputScale.resolve("auto", 128, None)
    assert fallback == InputScale(128) and "does not record the scale" in note and "fixed" in note
    assert parse_scale(" AUTO ") == "auto" and parse_scale(2) == 2.0 and parse_scale(None) is None
    for bad in ("big", "0", "-1", "nan", 0.0):
        with pytest.raises(ConfigError, match="--scale must be auto, fixed or a factor"):
            parse_scale(bad)
    assert median_train_scale([(256, 200), (128, 256), (100, 256), (200, 100)], 128) == 0.5
    assert median_train_scale([], 128) is None


def _scenes(tmp_path: Path, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return ([a scene 320x240 with two people, that scene twice side by side 640x240], [their people]).

    People keep 40 image px (20 network px at the factor 0.5 used below) from the borders.
    """
    rng = np.random.default_rng(seed)
    w, h = 320, 240
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    people = np.stack([make_person(110, 120, 80, rng), make_person(210, 120, 80, rng)])
    wide = np.concatenate([img, img], axis=1)
    shifted = people.copy()
    shifted[..., 0] += w
    return [img, wide], [people, np.concatenate([people, shifted])]


def _check_mapped_back(pred, gt: np.ndarray, scale: float) -> None:
    kps, _ = pred
    assert kps.shape == gt.shape and (kps[..., 2] > 0).all()
    order = np.lexsort((kps[:, SK.index("neck"), 1], kps[:, SK.index("neck"), 0]))
    gorder = np.lexsort((gt[:, SK.index("neck"), 1], gt[:, SK.index("neck"), 0]))
    err = np.abs(kps[order, :, :2] - gt[gorder, :, :2])
    assert err.max() < 1.0 / scale, err.max() * scale  # within 1 network-input pixel


def test_auto_scale_keeps_people_at_the_training_pixel_scale(tmp_path):
    from activepose.pose.predict import InputScale, predict_images

    images, people = _scenes(tmp_path)
    factor, size = 0.5, 160  # a model trained at 160 px on 320-px images
    auto = InputScale(size, factor, "auto")
    sides = [auto.size_for(im.shape[1], im.shape[0]) for im in images]
    assert sides == [160, 320]  # long side x 0.5, a multiple of 8: the wide scene gets twice the input
    oracle = GroundTruthOracle(SK, size)
    for im, ppl, side in zip(images, people, sides, strict=True):
        oracle.register(im, ppl, side)  # the oracle only answers for exactly these inputs
    preds = predict_images(oracle, images, make_decoder(SK), scale=auto)
    assert sorted(oracle.batches) == [(1, 3, 160, 160), (1, 3, 320, 320)]  # one forward pass per side
    for pred, ppl, im, side in zip(preds, people, images, sides, strict=True):
        letterbox_scale = side / max(im.shape[:2])
        assert letterbox_scale == factor  # the people are as many pixels tall in both inputs
        _check_mapped_back(pred, ppl, letterbox_scale)

    # fixed: the wide scene is letterboxed to 160 px, its people shrunk to half the training scale
    fixed = GroundTruthOracle(SK, size)
    fixed.register(images[1], people[1])
    (pred,) = predict_images(fixed, images[1:], make_decoder(SK), input_size=size)
    assert fixed.batches == [(1, 3, 160, 160)]
    _check_mapped_back(pred, people[1], size / 640)


def test_predict_coco_batches_by_input_side_and_keeps_the_order(tmp_path):
    import cv2

    from activepose.pose.predict import InputScale, predict_coco

    images, people = _scenes(tmp_path)
    frames = []
    for i in range(6):  # narrow, wide, narrow, wide, ...
        im, ppl = images[i % 2], people[i % 2]
        cv2.imwrite(str(tmp_path / f"s{i}.png"), im[:, :, ::-1])
        ids = list(range(10 * i, 10 * i + len(ppl)))
        frames.append(Frame(100 - i, f"s{i}.png", im.shape[1], im.shape[0], ppl.astype(np.float32), ids))
    coco = CocoKeypoints(frames=frames, skeleton=SK, root=tmp_path)
    auto = InputScale(160, 0.5, "auto")
    oracle = GroundTruthOracle(SK, 160)
    for im, ppl in zip(images, people, strict=True):
        oracle.register(im, ppl, auto.size_for(im.shape[1], im.shape[0]))
    seen = []
    preds = predict_coco(oracle, coco, make_decoder(SK), batch_size=2, scale=auto, progress=seen.append)
    assert list(preds) == coco.image_ids and sum(seen) == 6
    # 3 images per input side in batches of 2: 2 passes per side (the fewest), each of one side only
    assert oracle.batches == [(2, 3, 160, 160), (2, 3, 320, 320), (1, 3, 160, 160), (1, 3, 320, 320)]
    for f in coco.frames:
        _check_mapped_back(preds[f.image_id], f.keypoints, 0.5)


def test_fixed_scale_reproduces_the_single_letterbox_forward_pass(tmp_path):
    """`fixed` (and no scale) = every image letterboxed to input_size, one pass per batch, as before."""
    from activepose.config import EvalConfig
    from activepose.fileio import read_image
    from activepose.pose.data import letterbox
    from activepose.pose.evaluate import evaluate_model
    from activepose.pose.predict import InputScale, predict_coco, predict_images

    from .conftest import tiny_model

    coco = make_coco(tmp_path)
    net = tiny_model(SK).eval()
    decoder = make_decoder(SK)

    images = [read_image(coco.image_path(f)) for f in coco.frames]
    boxed = [letterbox(im, INPUT) for im in images]
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([b for b, _ in boxed])).permute(0, 3, 1, 2).float().div_(255.0)
        ref = decoder(*net(x)[-1])
    by_default = predict_images(net, images, decoder, input_size=INPUT)
    fixed = predict_images(net, images, decoder, scale=InputScale(INPUT))
    coco_fixed = predict_coco(
        net, coco, decoder, input_size=INPUT, batch_size=len(coco), scale=InputScale(INPUT)
    )
    for (kps, scores), (_, s), im, a, b, f in zip(
        ref, boxed, images, by_default, fixed, coco.frames, strict=True
    ):
        kps = np.array(kps, np.float32)
        if kps.size:
            kps[..., :2] /= s
            kps[..., 0] = np.clip(kps[..., 0], 0, im.shape[1])
            kps[..., 1] = np.clip(kps[..., 1], 0, im.shape[0])
            kps[kps[..., 2] <= 0] = 0
        for got in (a, b, coco_fixed[f.image_id]):
            assert np.array_equal(got[0], kps) and np.array_equal(got[1], np.asarray(scores, np.float32))
    cfg = dict(input_size=INPUT, batch_size=4, ttas=("clean",), num_workers=0)
    assert evaluate_model(net, coco, decoder, EvalConfig(**cfg)) == evaluate_model(
        net, coco, decoder, EvalConfig(scale="fixed", train_scale=0.5, **cfg)
    )
