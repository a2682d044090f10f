"""Synthetic multi-person scenes with exact keypoint labels, written as COCO keypoint JSON + PNG images.

Every figure is one articulated 2-D body (head, torso, arms, legs) built from a canonical template in
"body units" (head top to ankle ~ 1), posed with random joint angles, scaled, placed and drawn with
thick OpenCV primitives. The keypoints of any skeleton whose keypoint names the template knows (the
presets lsp14, coco17, coco18 and common aliases) are read off the same body, so the same generator
serves every skeleton. Generation is deterministic: image i of seed s depends only on (s, i).

Cues that make the labels learnable from pixels alone:
- the person's LEFT arm and leg are drawn in a lighter shade of the clothing colour, the RIGHT ones darker;
- front-facing people (left side on the image's right) have a face (eyes, nose) and a hair cap;
  back-facing people (mirrored: left side on the image's left) have the whole head in hair colour.

Labels (COCO visibility):
- v = 2: visible;
- v = 1: labelled but occluded: the keypoint's pixel is covered by a person drawn later (nearer) or by an
  occluder box. Occluded joints keep their true position, as in COCO, so training targets include them;
- v = 0 with coordinates 0: outside the image, or a face keypoint (nose, eyes) of a back-facing person.
People left with no labelled keypoint are not annotated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import SyntheticConfig
from ..errors import SyntheticError
from .coco import CocoKeypoints, Frame, save_coco
from .skeleton import Skeleton, get_skeleton

LOG = logging.getLogger(__name__)

# Body template, in body units (pelvis centre at the origin, y down, height head top -> ankle ~ 0.96).
_HEAD_R = 0.065
_NECK_Y = -0.35
_SHOULDER = (0.11, -0.32)
_HIP_X = 0.075
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.16, 0.15, 0.24, 0.23
# Limb thickness as a fraction of the person's height in pixels.
_THICK = {"upper_arm": 0.05, "forearm": 0.04, "thigh": 0.07, "shin": 0.055}

_SKIN = np.array(
    [[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [90, 56, 37]]
)
_FACE_POINTS = ("nose", "left_eye", "right_eye")
_OCCLUDER = 255  # label-map value of occluder boxes (people use 1..254)
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn in 1/16 pixel


# --- keypoint names -------------------------------------------------------------------------------
_ALIASES = {
    "head": "head_top", "headtop": "head_top", "top_head": "head_top", "head_end": "head_top",
    "thorax": "neck", "upper_neck": "neck", "chest": "neck",
    "pelvis": "mid_hip", "root": "mid_hip", "midhip": "mid_hip", "hip": "mid_hip",
}  # fmt: skip
_PARTS = ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")


def canonical_name(name: str) -> str:
    """Return the template name for a keypoint name (`l_knee`, `LeftKnee`, `knee_l` -> `left_knee`)."""
    n = name.strip().lower().replace("-", "_").replace(" ", "_")
    n = _ALIASES.get(n, n)
    for side, short in (("left", "l"), ("right", "r")):
        for part in _PARTS:
            if n in (
                f"{short}_{part}",
                f"{part}_{short}",
                f"{part}_{side}",
                f"{side}{part}",
                f"{short}{part}",
            ):
                return f"{side}_{part}"
    return n


def _template_names() -> set[str]:
    sides = {f"{s}_{p}" for s in ("left", "right") for p in _PARTS}
    return sides | {"nose", "neck", "head_top", "mid_hip"}


def keypoint_lookup(skeleton: Skeleton) -> list[str]:
    """Return the template name of every keypoint of `skeleton`; raise SyntheticError for unknown names."""
    names = [canonical_name(n) for n in skeleton.keypoints]
    known = _template_names()
    unknown = [orig for orig, n in zip(skeleton.keypoints, names, strict=True) if n not in known]
    if unknown:
        raise SyntheticError(
            f"skeleton {skeleton.name!r}: the synthetic body has no keypoint(s) {unknown}; "
            f"known names: {sorted(known)}"
        )
    return names


# --- pose -------------------------------------------------------------------------------------------
def _rot(points: np.ndarray, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return points @ np.array([[c, s], [-s, c]])


def _limb_dir(side: float, deg: float) -> np.ndarray:
    """Return the unit direction at `deg` from straight down, positive = away from the body on `side`."""
    a = math.radians(deg)
    return np.array([side * math.sin(a), math.cos(a)])


def _random_pose(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Return named body points in body units (pelvis origin) for a random front-facing pose."""
    # Side sign: the person's right is at negative x (image left) for a front-facing person.
    up: dict[str, np.ndarray] = {}
    up["neck"] = np.array([0.0, _NECK_Y])
    head_c = np.array([0.0, _NECK_Y - _HEAD_R - 0.012])
    up["head_c"] = head_c
    up["head_top"] = head_c + [0.0, -_HEAD_R]
    yaw = rng.uniform(-0.35, 0.35) * _HEAD_R
    up["nose"] = head_c + [yaw, 0.2 * _HEAD_R]
    for side, sx in (("right", -1.0), ("left", 1.0)):
        up[f"{side}_eye"] = head_c + [sx * 0.4 * _HEAD_R + 0.8 * yaw, -0.15 * _HEAD_R]
        up[f"{side}_ear"] = head_c + [sx * 0.97 * _HEAD_R, 0.05 * _HEAD_R]
        sh = np.array([sx * _SHOULDER[0], _SHOULDER[1]])
        up[f"{side}_shoulder"] = sh
        up[f"{side}_torso_top"] = sh + [sx * 0.015, -0.01]
        up[f"{side}_torso_bot"] = np.array([sx * (_HIP_X + 0.02), 0.02])
        # Arm: mostly down/sideways, sometimes raised; the elbow bends either way.
        a = rng.uniform(-15, 100) if rng.random() < 0.8 else rng.uniform(100, 170)
        b = rng.uniform(0, 130) * rng.choice((-1.0, 1.0))
        up[f"{side}_elbow"] = sh + _UPPER_ARM * _limb_dir(sx, a)
        up[f"{side}_wrist"] = up[f"{side}_elbow"] + _FOREARM * _limb_dir(sx, a + b)
    lean = rng.normal(0, 8)
    names = list(up)
    pts = _rot(np.stack([up[n] for n in names]), lean)
    out = dict(zip(names, pts, strict=True))
    out["mid_hip"] = np.zeros(2)
    for side, sx in (("right", -1.0), ("left", 1.0)):
        hip = np.array([sx * _HIP_X, 0.0])
        t = rng.uniform(-8, 35)
        k = (rng.uniform(0, 60) if rng.random() < 0.75 else rng.uniform(60, 110)) * rng.choice((-1.0, 1.0))
        out[f"{side}_hip"] = hip
        out[f"{side}_knee"] = hip + _THIGH * _limb_dir(sx, t)
        out[f"{side}_ankle"] = out[f"{side}_knee"] + _SHIN * _limb_dir(sx, t + k)
        out[f"{side}_toe"] = out[f"{side}_ankle"] + 0.06 * _limb_dir(sx, t + k + 60 * rng.choice((-1.0, 1.0)))
    names = list(out)
    pts = _rot(np.stack([out[n] for n in names]), rng.normal(0, 6))
    return dict(zip(names, pts, strict=True))


# --- drawing ----------------------------------------------------------------------------------------
def _fx(p: np.ndarray) -> tuple[int, int]:
    # COCO pixel i covers [i, i+1); cv2 draws pixel i centred on integer i, hence the -0.5.
    return (int(round((p[0] - 0.5) * (1 << _SHIFT))), int(round((p[1] - 0.5) * (1 << _SHIFT))))


def _col(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(c, 0, 255))


class _Canvas:
    """An RGB image and a label map (which person/occluder painted each pixel), drawn in lockstep."""

    def __init__(self, image: np.ndarray):
        import cv2

        self.cv2 = cv2
        self.img = image
        self.lab = np.zeros(image.shape[:2], np.uint8)

    def line(self, p, q, color, thick: float, label: int) -> None:
        t = max(1, int(round(thick)))
        for target, c in ((self.img, _col(color)), (self.lab, label)):
            self.cv2.line(target, _fx(p), _fx(q), c, t, self.cv2.LINE_AA if target is self.img else 8, _SHIFT)
            # Round caps so that joints look continuous.
            self.cv2.circle(target, _fx(p), (t << _SHIFT) // 2, c, -1, self.cv2.LINE_8, _SHIFT)
            self.cv2.circle(target, _fx(q), (t << _SHIFT) // 2, c, -1, self.cv2.LINE_8, _SHIFT)

    def circle(self, p, radius: float, color, label: int | None) -> None:
        r = max(1, int(round(radius * (1 << _SHIFT))))
        self.cv2.circle(self.img, _fx(p), r, _col(color), -1, self.cv2.LINE_AA, _SHIFT)
        if label is not None:
            self.cv2.circle(self.lab, _fx(p), r, label, -1, self.cv2.LINE_8, _SHIFT)

    def poly(self, pts, color, label: int) -> None:
        arr = np.array([_fx(p) for p in pts], np.int32)[None]
        self.cv2.fillPoly(self.img, arr, _col(color), self.cv2.LINE_AA, _SHIFT)
        self.cv2.fillPoly(self.lab, arr, label, self.cv2.LINE_8, _SHIFT)


def _background(rng: np.random.Generator, w: int, h: int, cfg: SyntheticConfig) -> np.ndarray:
    """Return a float32 RGB background: base colour, a smooth noise texture and random clutter shapes."""
    import cv2

    base = rng.uniform(40, 215, size=3).astype(np.float32)
    gh, gw = int(rng.integers(3, 12)), int(rng.integers(3, 12))
    tex = cv2.resize(rng.normal(0, 1, (gh, gw, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = base + tex * np.float32(rng.uniform(5, 35))
    img = np.clip(img, 0, 255).astype(np.uint8)
    s = min(w, h)
    for _ in range(int(rng.integers(0, cfg.clutter + 1))):
        c = _col(rng.uniform(0, 255, 3))
        kind = rng.integers(0, 4)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:  # rectangle, filled or outlined
            x1, y1 = x0 + int(rng.integers(-s // 3, s // 3)), y0 + int(rng.integers(-s // 3, s // 3))
            cv2.rectangle(img, (x0, y0), (x1, y1), c, -1 if rng.random() < 0.6 else int(rng.integers(1, 4)))
        elif kind == 1:  # circle / ellipse
            axes = (int(rng.integers(2, s // 6)), int(rng.integers(2, s // 6)))
            cv2.ellipse(img, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        elif kind == 2:  # thick straight line (a distractor that looks like a limb)
            x1, y1 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(img, (x0, y0), (x1, y1), c, int(rng.integers(1, max(2, s // 25))), cv2.LINE_AA)
        else:  # random polygon
            pts = np.stack([rng.integers(-s // 5, s // 5, 4) + x0, rng.integers(-s // 5, s // 5, 4) + y0], 1)
            cv2.fillPoly(img, pts.astype(np.int32)[None], c)
    return img


def _draw_person(
    cv: _Canvas, rng: np.random.Generator, pts: dict[str, np.ndarray], hpx: float, front: bool, label: int
) -> None:
    """Draw one posed body; `pts` are image coordinates, `hpx` its height in pixels."""
    shirt = rng.uniform(20, 235, 3)
    pants = rng.uniform(20, 235, 3)
    skin = _SKIN[rng.integers(0, len(_SKIN))] * rng.uniform(0.85, 1.1)
    hair = rng.uniform(0, 90, 3) if rng.random() < 0.8 else rng.uniform(150, 240, 3)
    sleeves = rng.random() < 0.5
    shade = {"left": lambda c: 0.6 * c + 0.4 * 255, "right": lambda c: 0.6 * c}
    th = {k: v * hpx * rng.uniform(0.85, 1.2) for k, v in _THICK.items()}
    # Back to front: legs, torso, head, arms.
    for side in ("left", "right") if front else ("right", "left"):
        c = shade[side](pants)
        cv.line(pts[f"{side}_hip"], pts[f"{side}_knee"], c, th["thigh"], label)
        cv.line(pts[f"{side}_knee"], pts[f"{side}_ankle"], c, th["shin"], label)
        cv.line(
            pts[f"{side}_ankle"],
            pts[f"{side}_toe"],
            shade[side](rng.uniform(0, 80, 3)),
            th["shin"] * 0.8,
            label,
        )
    torso = [pts["right_torso_top"], pts["left_torso_top"], pts["left_torso_bot"], pts["right_torso_bot"]]
    cv.poly(torso, shirt, label)
    cv.line(pts["neck"], pts["head_c"], skin, th["forearm"] * 1.2, label)
    cv.circle(pts["head_c"], _HEAD_R * hpx, skin if front else hair, label)
    r = _HEAD_R * hpx
    for side in ("left", "right"):
        cv.circle(pts[f"{side}_ear"], 0.28 * r, skin * 0.9, label)
    if front:
        # Hair cap above the eyes, then the face: dark eyes and a nose dot at their keypoints.
        up = pts["head_top"] - pts["head_c"]
        tilt = math.degrees(math.atan2(up[0], -up[1]))
        centre = _fx(pts["head_c"] + 0.3 * up / max(float(np.hypot(*up)), 1e-6) * r)
        axes = (int(1.02 * r * (1 << _SHIFT)), int(0.75 * r * (1 << _SHIFT)))
        cv.cv2.ellipse(cv.img, centre, axes, tilt, 180, 360, _col(hair), -1, cv.cv2.LINE_AA, _SHIFT)
        for side in ("left", "right"):
            cv.circle(pts[f"{side}_eye"], max(0.6, 0.16 * r), (20, 20, 30), None)
        cv.circle(pts["nose"], max(0.6, 0.14 * r), skin * 0.6, None)
    for side in ("left", "right"):
        up = shade[side](shirt)
        low = up if sleeves else shade[side](skin)
        cv.line(pts[f"{side}_shoulder"], pts[f"{side}_elbow"], up, th["upper_arm"], label)
        cv.line(pts[f"{side}_elbow"], pts[f"{side}_wrist"], low, th["forearm"], label)
        cv.circle(pts[f"{side}_wrist"], 0.6 * th["forearm"], shade[side](skin), label)


def render_scene(
    rng: np.random.Generator,
    skeleton: str | Skeleton = "lsp14",
    cfg: SyntheticConfig = SyntheticConfig(),
    t: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 image (H, W, 3), people (N, K, 3) float32 COCO keypoints) for one random scene.

    `t` in [0, 1] makes the scene a frame of footage: rendered again with the same `rng` seed, every frame shows
    the same background and people, each person drifting along its own straight path (up to a quarter of the
    width over the video) with its limbs swaying a little (4 % of its height) — a fixed camera. None: a still.
    """
    import cv2

    skeleton = get_skeleton(skeleton)
    names = keypoint_lookup(skeleton)
    w0, h0 = cfg.image_size
    j = cfg.size_jitter
    w = max(16, int(round(w0 * rng.uniform(1 - j, 1 + j)))) if j else int(w0)
    h = max(16, int(round(h0 * rng.uniform(1 - j, 1 + j)))) if j else int(h0)

    cv = _Canvas(_background(rng, w, h, cfg))
    n = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    heights = np.sort(rng.uniform(cfg.min_person_height, cfg.max_person_height, n) * h)  # far (small) first
    people, fronts = [], []
    for i, hpx in enumerate(heights):
        front = bool(rng.random() >= cfg.back_facing_prob)
        body = _random_pose(rng)
        if not front:
            body = {k: v * [-1.0, 1.0] for k, v in body.items()}  # seen from behind: mirrored
        lo, hi = 0.4 * hpx, h - 0.35 * hpx  # pelvis height keeping most of the body in frame
        pelvis = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(lo, hi) if lo < hi else h / 2])
        if (
            t is not None
        ):  # footage: drift and sway with the frame's time (the draws are the same every frame)
            velocity = rng.uniform(-0.25, 0.25, 2) * np.array([w, 0.2 * h])
            phases = rng.uniform(0.0, 2 * math.pi, (len(body), 2))
            pelvis = pelvis + velocity * (t - 0.5)
            sway = 0.04 * np.sin(2 * math.pi * t + phases)
            body = {k: v + sway[n] for n, (k, v) in enumerate(body.items())}
        pts = {k: pelvis + hpx * v for k, v in body.items()}
        _draw_person(cv, rng, pts, hpx, front, label=i + 1)
        people.append(np.array([[*pts[nm], 2.0] for nm in names], np.float32))
        fronts.append(front)

    for i, hpx in enumerate(heights):  # occluder boxes over part of a person
        if rng.random() >= cfg.occlusion_prob:
            continue
        c = people[i][int(rng.integers(0, len(names))), :2] + rng.normal(0, 0.1 * hpx, 2)
        half = rng.uniform(0.08, 0.22, 2) * hpx
        p0, p1 = _fx(c - half), _fx(c + half)
        color = _col(rng.uniform(0, 255, 3))
        cv2.rectangle(cv.img, p0, p1, color, -1, cv2.LINE_8, _SHIFT)
        cv2.rectangle(cv.lab, p0, p1, _OCCLUDER, -1, cv2.LINE_8, _SHIFT)
        if rng.random() < 0.5:  # stripes, so occluders are not flat patches only
            stripe = _col(rng.uniform(0, 255, 3))
            for y in np.arange(c[1] - half[1], c[1] + half[1], max(2.0, half[1] / 3)):
                cv2.line(
                    cv.img, _fx((c[0] - half[0], y)), _fx((c[0] + half[0], y)), stripe, 1, cv2.LINE_8, _SHIFT
                )

    image = _lighting(rng, cv.img, cfg)
    out = []
    for i, kps in enumerate(people):
        x, y = kps[:, 0], kps[:, 1]
        inside = (x >= 0) & (y >= 0) & (x < w) & (y < h)
        xi = np.clip(x.astype(np.int64), 0, w - 1)
        yi = np.clip(y.astype(np.int64), 0, h - 1)
        covered = cv.lab[yi, xi] > i + 1  # painted by a nearer person or an occluder
        kps[:, 2] = np.where(covered, 1.0, 2.0)
        keep = inside.copy()
        if not fronts[i]:
            keep &= ~np.isin(names, _FACE_POINTS)
        kps[~keep] = 0.0
        if keep.any():
            out.append(kps)
    k = skeleton.num_keypoints
    return image, (np.stack(out) if out else np.zeros((0, k, 3), np.float32))


def _lighting(rng: np.random.Generator, img: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Return the uint8 image after global contrast/brightness, an illumination gradient and noise."""
    import cv2

    h, w = img.shape[:2]
    contrast, bright = rng.uniform(0.6, 1.25), rng.uniform(-40, 40)
    ang = rng.uniform(0, 2 * math.pi)
    gx = (np.arange(w, dtype=np.float32) / w - 0.5) * math.cos(ang)
    gy = (np.arange(h, dtype=np.float32) / h - 0.5) * math.sin(ang)
    grad = 1.0 + np.float32(rng.uniform(0, 0.7)) * (gy[:, None] + gx[None, :])
    # ((img - 128) * contrast + 128 + bright) * grad, as one multiply-add per pixel.
    gain = (np.float32(contrast) * grad)[:, :, None]
    offset = (np.float32(128.0 * (1.0 - contrast) + bright) * grad)[:, :, None]
    if cfg.noise > 0:  # luminance noise (one channel) is cheaper and looks like sensor grain
        offset = offset + rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(
            rng.uniform(0, cfg.noise)
        )
    f = img * gain + offset
    out = np.clip(f, 0, 255).astype(np.uint8)
    if cfg.grayscale:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    return out


def make_synthetic_coco(
    out_dir: str | Path,
    skeleton: str | Skeleton = "lsp14",
    cfg: SyntheticConfig = SyntheticConfig(),
    seed: int = 0,
) -> Path:
    """Return the path of `out_dir/annotations.json` after writing `cfg.num_images` scenes and their labels.

    Images go to `out_dir/images/000001.png` ...; image ids are 1..n in that order and `file_name` is
    relative to the JSON's folder. Image i depends only on (seed, i), so a longer run extends a shorter
    one. With `cfg.frames_per_video` > 1 the images are footage: consecutive runs of that many frames of one
    scene (`render_scene(t=...)`), with `video` ("video001", ...) and `frame` in the COCO file. Existing files of the same names are overwritten; other files in `out_dir` are left alone.
    """
    import cv2

    skeleton = get_skeleton(skeleton)
    keypoint_lookup(skeleton)  # fail before writing anything
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    ext = cfg.image_format
    params = (
        [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        if ext == "png"
        else [cv2.IMWRITE_JPEG_QUALITY, 92]
    )
    frames, next_ann = [], 1
    per = cfg.frames_per_video
    for i in range(cfg.num_images):
        image_id = i + 1
        if per > 1:  # footage: video i // per, its frame i % per (the same scene, people moving)
            video, frame = divmod(i, per)
            rng = np.random.default_rng([seed, 1_000_003, video])
            image, people = render_scene(rng, skeleton, cfg, t=frame / (per - 1))
        else:
            image, people = render_scene(np.random.default_rng([seed, i]), skeleton, cfg)
        rel = f"images/{image_id:06d}.{ext}"
        data = image[:, :, 0] if cfg.grayscale else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(f".{ext}", data, params)
        if not ok:
            raise SyntheticError(f"{out_dir / rel}: OpenCV could not encode the image")
        buf.tofile(out_dir / rel)
        ann_ids = list(range(next_ann, next_ann + len(people)))
        next_ann += len(people)
        footage = {"video": f"video{i // per + 1:03d}", "frame": i % per} if per > 1 else {}
        frames.append(Frame(image_id, rel, image.shape[1], image.shape[0], people, ann_ids, **footage))
    info = {"description": "activepose synthetic scenes", "seed": seed, "config": asdict(cfg)}
    ds = CocoKeypoints(frames=frames, skeleton=skeleton, root=out_dir, info=info)
    path = save_coco(ds, out_dir / "annotations.json")
    LOG.info("wrote %d synthetic images (%d people) to %s", len(frames), ds.num_people, out_dir)
    return path
