"""Evaluation: person count accuracy (the paper's metric), COCO OKS keypoint AP and PCK, per test-time augmentation.

Predictions are `{image_id: (keypoints (N, K, 3), scores (N,))}` in original image coordinates, the third
keypoint column being the confidence (0 = part not found). Ground truth is a `CocoKeypoints` data set whose
frames hold the people as they appear in the evaluated images (use `activepose.pose.predict.tta_ground_truth`
for an augmented set). A GT person counts only if at least one of its keypoints is labelled (v > 0).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import EvalConfig
from .coco import CocoKeypoints, annotation_dict, results_to_coco
from .skeleton import Skeleton

if TYPE_CHECKING:
    import rich.table

LOG = logging.getLogger(__name__)

Predictions = dict[int, tuple[np.ndarray, np.ndarray]]

# Report columns, in table order.
METRICS: tuple[str, ...] = (
    "count_acc", "count_exact", "count_mae", "AP", "AP50", "AP75", "AR", "PCK", "images", "people",
)  # fmt: skip


def evaluation_input_scale(cfg: EvalConfig):
    """Return (`predict.InputScale` for an evaluation's settings, a note to show or None)."""
    from .predict import InputScale

    return InputScale.resolve(cfg.scale, cfg.input_size, cfg.train_scale)


# --- person counting ------------------------------------------------------------------------------------
def person_count_accuracy(pred_counts: Sequence[int], gt_counts: Sequence[int]) -> dict[str, float]:
    """Return person-count metrics {"count_acc", "count_exact", "count_mae"} over images i.

    - count_acc = sum_i min(pred_i, gt_i) / sum_i gt_i — the paper's "percentage of correctly detected
      people out of the total number of people" as a fraction in [0, 1]: per image, at most gt_i detections
      count as correct. Over-counting is not penalised here (see count_exact and count_mae). Images without
      GT people add nothing to it; when sum_i gt_i = 0 it is undefined and reported as nan.
    - count_exact = (number of images with pred_i == gt_i) / number of images.
    - count_mae = mean_i |pred_i - gt_i|.
    With no images all three are nan.
    """
    pred = np.asarray(pred_counts, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt_counts, dtype=np.float64).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"{pred.size} predicted counts for {gt.size} ground-truth counts")
    if (pred < 0).any() or (gt < 0).any():
        raise ValueError("person counts must be non-negative")
    if pred.size == 0:
        return {"count_acc": math.nan, "count_exact": math.nan, "count_mae": math.nan}
    total = gt.sum()
    return {
        "count_acc": float(np.minimum(pred, gt).sum() / total) if total > 0 else math.nan,
        "count_exact": float((pred == gt).mean()),
        "count_mae": float(np.abs(pred - gt).mean()),
    }


def gt_person_count(people: np.ndarray, min_keypoints: int = 1) -> int:
    """Return the number of GT people with at least `min_keypoints` labelled keypoints."""
    people = np.asarray(people)
    if people.size == 0:
        return 0
    return int(((people[..., 2] > 0).sum(axis=1) >= min_keypoints).sum())


def predicted_person_count(scores: np.ndarray, min_score: float = 0.0) -> int:
    """Return the number of predicted people whose score is at least `min_score`."""
    return int((np.asarray(scores, dtype=np.float64).reshape(-1) >= min_score).sum())


# --- OKS AP ---------------------------------------------------------------------------------------------
def _coco_gt_dict(gt: CocoKeypoints) -> dict[str, Any]:
    """Return an in-memory COCO GT dict of `gt` with bbox/area recomputed from the frames' keypoints."""
    images, annotations = [], []
    ann_id = 1
    for f in gt.frames:
        images.append({"id": int(f.image_id), "file_name": f.file_name, "width": f.width, "height": f.height})
        for kps in f.keypoints:
            # num_keypoints == 0 (e.g. everything zoomed out of the image) makes COCOeval ignore the person.
            annotations.append(annotation_dict(ann_id, f.image_id, kps, gt.category_id))
            ann_id += 1
    return {
        "info": {},
        "images": images,
        "annotations": annotations,
        "categories": [gt.skeleton.to_coco_category(gt.category_id)],
    }


def oks_ap(
    gt: CocoKeypoints, predictions: Predictions, sigmas: Sequence[float] | None = None
) -> dict[str, float]:
    """Return COCO keypoint metrics {"AP", "AP50", "AP75", "AR"} of `predictions` against `gt`.

    Computed by pycocotools' COCOeval(iouType="keypoints") with OKS sigmas `sigmas` (default: the skeleton's,
    any number of keypoints) over all images of `gt` (maxDets 20, area range "all"). GT `area` is the
    padded keypoint box of `coco.keypoint_bbox`, as in the data files. GT people without labelled keypoints
    are ignored. AP is averaged over OKS thresholds 0.50:0.05:0.95, AR likewise. When there is no labelled
    GT person the metrics are undefined and reported as nan (COCOeval's -1); with GT but no predictions
    they are 0. Predictions for image ids not in `gt` are dropped with a warning.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sig = np.asarray(gt.skeleton.sigmas if sigmas is None else sigmas, dtype=np.float64)
    if sig.shape != (gt.skeleton.num_keypoints,):
        raise ValueError(f"{sig.size} OKS sigmas for {gt.skeleton.num_keypoints} keypoints")
    nan = {"AP": math.nan, "AP50": math.nan, "AP75": math.nan, "AR": math.nan}
    labelled = sum(gt_person_count(f.keypoints) for f in gt.frames)
    if labelled == 0:
        return nan
    known = set(gt.image_ids)
    unknown = [i for i in predictions if int(i) not in known]
    if unknown:
        LOG.warning("oks_ap: dropping predictions for %d image id(s) not in the ground truth", len(unknown))
    results = results_to_coco({int(i): p for i, p in predictions.items() if int(i) in known}, gt.category_id)
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = _coco_gt_dict(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = sig
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s >= 0 else math.nan for s in ev.stats]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "AR": stats[5]}


# --- PCK ------------------------------------------------------------------------------------------------
_TORSO = ("left_shoulder", "right_hip")
_MIN_REFERENCE_PX = 1.0
_DIST_CAP = 10.0  # normalised distances are capped here for tie-breaking only


def reference_sizes(people: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Return the PCK reference size (px) of each GT person in (N, K, 3); nan where undefined (see `pck`)."""
    people = np.asarray(people, dtype=np.float64)
    out = np.full(people.shape[0], math.nan)
    torso = [skeleton.index(n) for n in _TORSO] if all(n in skeleton.keypoints for n in _TORSO) else None
    for p, kps in enumerate(people):
        lab = kps[:, 2] > 0
        if torso is not None and lab[torso].all():
            ref = float(np.linalg.norm(kps[torso[0], :2] - kps[torso[1], :2]))
        elif lab.sum() >= 2:
            xy = kps[lab, :2]
            ref = float((xy.max(0) - xy.min(0)).max())
        else:
            ref = 0.0
        if ref >= _MIN_REFERENCE_PX:
            out[p] = ref
    return out


def _pck_image(gt_people: np.ndarray, refs: np.ndarray, pred_people: np.ndarray, alpha: float) -> np.ndarray:
    """Return the hit flags (G, K) of the GT people's labelled keypoints after one-to-one matching."""
    from scipy.optimize import linear_sum_assignment

    g = gt_people.shape[0]
    hits = np.zeros(gt_people.shape[:2], dtype=bool)
    if g == 0 or pred_people.shape[0] == 0:
        return hits
    lab = gt_people[:, :, 2] > 0  # (G, K)
    found = pred_people[:, :, 2] > 0  # (P, K)
    d = np.linalg.norm(gt_people[:, None, :, :2] - pred_people[None, :, :, :2], axis=-1)  # (G, P, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        dn = d / refs[:, None, None]
    dn = np.where(found[None] & np.isfinite(dn), dn, np.inf)
    ok = (dn <= alpha) & lab[:, None, :]  # (G, P, K)
    n_hits = ok.sum(-1)
    capped = (
        np.where(lab[:, None, :], np.minimum(dn, _DIST_CAP), 0.0).sum(-1)
        / np.maximum(lab.sum(-1), 1)[:, None]
    )
    # Maximise total hits; the distance term (< 0.5) only breaks ties.
    cost = -n_hits + 0.5 * capped / _DIST_CAP
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols, strict=True):
        hits[r] = ok[r, c]
    return hits


def pck_counts(
    gt: CocoKeypoints, predictions: Predictions, alpha: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-keypoint (hits (K,), totals (K,)) of PCK@alpha over the data set (see `pck`)."""
    k = gt.skeleton.num_keypoints
    hits = np.zeros(k, dtype=np.int64)
    totals = np.zeros(k, dtype=np.int64)
    for f in gt.frames:
        people = np.asarray(f.keypoints, dtype=np.float64).reshape(-1, k, 3)
        refs = reference_sizes(people, gt.skeleton)
        keep = np.isfinite(refs)
        people, refs = people[keep], refs[keep]
        if people.shape[0] == 0:
            continue
        pred = predictions.get(f.image_id)
        pred_people = (
            np.zeros((0, k, 3)) if pred is None else np.asarray(pred[0], dtype=np.float64).reshape(-1, k, 3)
        )
        lab = people[:, :, 2] > 0
        h = _pck_image(people, refs, pred_people, alpha)
        hits += (h & lab).sum(0)
        totals += lab.sum(0)
    return hits, totals


def per_image_pck(gt: CocoKeypoints, predictions: Predictions, alpha: float = 0.2) -> np.ndarray:
    """Return PCK@alpha of each image of `gt` (in its order), as `pck` scores the whole set; nan for an image
    with no evaluable person."""
    out = np.full(len(gt), math.nan)
    for n, f in enumerate(gt.frames):
        hits, totals = pck_counts(replace(gt, frames=[f]), predictions, alpha)
        if totals.sum() > 0:
            out[n] = hits.sum() / totals.sum()
    return out


def pck(gt: CocoKeypoints, predictions: Predictions, alpha: float = 0.2) -> float:
    """Return PCK@alpha: the fraction of labelled GT keypoints found within alpha x reference size.

    Per image, predicted people are matched one-to-one to GT people so that the total number of correct
    keypoints is largest (Hungarian algorithm; ties go to the smaller mean normalised distance). A labelled
    GT keypoint is correct when its matched prediction has that keypoint found (confidence v > 0) within
    alpha * reference of it (Euclidean, pixels). Reference size of a GT person: the torso diameter, i.e. the
    distance between `left_shoulder` and `right_hip` (LSP PCK convention), when the skeleton has both and
    both are labelled; otherwise the longer side of the tight box around its labelled keypoints. People
    whose reference is below 1 px (e.g. a single labelled keypoint, no torso) are left out. GT keypoints of
    unmatched GT people are misses; extra predicted people are ignored. nan when nothing is evaluable.
    """
    hits, totals = pck_counts(gt, predictions, alpha)
    return float(hits.sum() / totals.sum()) if totals.sum() > 0 else math.nan


# --- whole-model evaluation -----------------------------------------------------------------------------
def scale_summary(coco: CocoKeypoints, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Return what `evaluate_model` uses as input scale on `coco`: {"policy", "factor", "input_sizes":
    {"min", "median", "max"}, "capped"} (sizes from the annotated image sizes; a TTA keeps them), plus
    "note" when auto had to fall back to fixed."""
    scale, note = evaluation_input_scale(cfg or EvalConfig())
    info = scale.summary((f.width, f.height) for f in coco.frames)
    if note:
        info["note"] = note
    return info


def metrics_for(
    gt: CocoKeypoints, predictions: Predictions, cfg: EvalConfig | None = None
) -> dict[str, float]:
    """Return all metrics (see `METRICS`) of `predictions` against the (possibly augmented) `gt`."""
    cfg = cfg or EvalConfig()
    k = gt.skeleton.num_keypoints
    empty = (np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32))
    gt_counts = [gt_person_count(f.keypoints, cfg.count_min_keypoints) for f in gt.frames]
    pred_counts = [
        predicted_person_count(predictions.get(f.image_id, empty)[1], cfg.count_min_score) for f in gt.frames
    ]
    out: dict[str, float] = {}
    out.update(person_count_accuracy(pred_counts, gt_counts))
    out.update(oks_ap(gt, predictions))
    out["PCK"] = pck(gt, predictions, cfg.pck_alpha)
    out["images"] = float(len(gt))
    out["people"] = float(sum(gt_counts))
    return out


def evaluate_model(
    model,
    coco: CocoKeypoints,
    decoder,
    cfg: EvalConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Return {tta name: {metric: value}} (metrics as in `METRICS`) of `model` on `coco` for each TTA in `cfg`.

    Each image enters the network at the size `evaluation_input_scale(cfg)` gives (see `scale_summary` for what that
    was). `progress(n)` is called after each batch with the number of images just processed (len(coco) per
    TTA).
    """
    from .predict import predict_coco, tta_ground_truth

    cfg = cfg or EvalConfig()
    scale, note = evaluation_input_scale(cfg)
    if note:
        LOG.warning("%s", note)
    report: dict[str, dict[str, float]] = {}
    for name in cfg.ttas:
        preds = predict_coco(
            model, coco, decoder, input_size=cfg.input_size, batch_size=cfg.batch_size, device=cfg.device,
            tta=name, progress=progress, num_workers=cfg.num_workers, scale=scale,
        )  # fmt: skip
        report[name] = metrics_for(tta_ground_truth(coco, name), preds, cfg)
        LOG.debug("evaluate %s: %s", name, {k: round(v, 4) for k, v in report[name].items()})
    return report


SCALE_KEY = "scale"  # a report's input-scale summary (see `scale_summary`); not a TTA


def tta_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Return the {tta: {metric: value}} part of an evaluation report (without "scale" or other entries)."""
    return {k: v for k, v in report.items() if k != SCALE_KEY and isinstance(v, dict)}


_HEADERS = {
    "count_acc": "count",
    "count_exact": "exact",
    "count_mae": "MAE",
    "images": "imgs",
    "people": "ppl",
}


def _fmt(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if metric in ("images", "people"):
        return f"{int(value)}"
    if metric == "count_mae":
        return f"{value:.2f}"
    return f"{100.0 * value:.1f}"


def report_table(report: dict[str, dict[str, float]], title: str | None = "Evaluation") -> rich.table.Table:
    """Return a rich table of `report`: one row per TTA, one column per metric (fractions shown as %).

    Entries that are not {metric: value} dicts of a TTA (e.g. "scale", see `SCALE_KEY`) are left out.
    """
    from rich.table import Table

    report = tta_metrics(report)
    columns = [m for m in METRICS if any(m in r for r in report.values())]
    columns += sorted({m for r in report.values() for m in r} - set(columns))
    table = Table(
        title=title,
        caption="count = count_acc, exact = count_exact (in %); MAE = count_mae (people per image); "
        "AP/AR/PCK in %; – = undefined",
    )
    table.add_column("TTA", style="bold", no_wrap=True)
    for m in columns:
        table.add_column(_HEADERS.get(m, m), justify="right", no_wrap=True)
    for name, row in report.items():
        table.add_row(name, *(_fmt(m, row.get(m, math.nan)) for m in columns))
    return table
