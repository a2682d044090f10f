"""Is the uncertainty informative? The score of a model against that model's per-image error, where labels are
known: the test set, and a round's batch once it is labelled.

A strategy built on uncertainty can only beat random where the score predicts which images the model gets
wrong. `informativeness` measures that on images with labels: Spearman's rank correlation between the score
(higher = more uncertain) and the per-image error (1 - PCK@0.2), and the ROC AUC of the score for telling the
worse half of the images (error above the median; at the median too when half or more share the largest
error, as with a weak model that finds nobody in most images) from the rest — 0.5 is no information, 1 is perfect, below
0.5 is misleading. `uncertainty_diagnostics` runs the model on labelled images and returns both, with the
paper's filter's pass rate (the share of images it calls uncertain) and the mean per-image PCK.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import UncertaintyConfig
from ..pose.coco import CocoKeypoints


def informativeness(score: Sequence[float], pck: Sequence[float]) -> dict[str, Any]:
    """Return {"n", "spearman", "auroc"} of `score` against the per-image error 1 - `pck` (nan pck: left out;
    nan statistics where undefined: fewer than 3 images, or a constant score or error)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score, dtype=np.float64)
    err = 1.0 - np.asarray(pck, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(err)
    s, err = s[keep], err[keep]
    out: dict[str, Any] = {"n": int(len(s)), "spearman": math.nan, "auroc": math.nan}
    if len(s) < 3 or np.ptp(s) == 0 or np.ptp(err) == 0:
        return out
    out["spearman"] = float(spearmanr(s, err).statistic)
    worse = err > np.median(err)
    if not worse.any():  # half or more share the largest error (a weak model finds nobody there): they are it
        worse = err >= np.median(err)
    if 0 < worse.sum() < len(worse):
        out["auroc"] = float(roc_auc_score(worse, s))
    return out


def uncertainty_diagnostics(
    net,
    data: CocoKeypoints,
    cfg: UncertaintyConfig,
    *,
    decoder=None,
    device=None,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Return `informativeness` of the model's uncertainty score on the labelled images of `data`, with
    "pass_rate" (share uncertain by the filter) and "mean_pck" (mean per-image PCK@0.2 of its predictions).

    The pose network `net` scores (at `cfg`'s thresholds and input size) and predicts (clean, at the same input
    size; `decoder` default: the default Decoder of the data's skeleton)."""
    from ..config import DecoderConfig
    from ..pose.decode import Decoder
    from ..pose.evaluate import per_image_pck
    from ..pose.predict import predict_coco
    from .uncertainty import score_pool

    if not len(data):
        return {"n": 0, "spearman": math.nan, "auroc": math.nan, "pass_rate": math.nan, "mean_pck": math.nan}
    decoder = decoder or Decoder(data.skeleton, DecoderConfig())
    unc = score_pool(net, data, cfg, device=device, cache=cache, num_workers=0)
    preds = predict_coco(net, data, decoder, input_size=cfg.input_size, device=device, num_workers=0)
    pck = per_image_pck(data, preds)
    out = informativeness(unc.score, pck)
    out["pass_rate"] = float(unc.uncertain.mean())
    out["mean_pck"] = float(np.nanmean(pck)) if np.isfinite(pck).any() else math.nan
    return out
