"""Selection seconds of every strategy at a pool size, given the per-image signals (the selection logic alone).

    python benchmarks/strategies.py [--sizes 8000,100000] [--budget 300] [--labelled 1000] [--dim 1280]
        [--strategies all] [--videos 32] [--out results.json]

Scoring a pool (pose forward for the uncertainty signals, the extractor for embeddings) is measured by
`benchmarks/scoring.py` and cached across rounds; what this times is what each strategy then does with them,
per round: k-means (kmeans, typiclust), ANN diversity (diversity, hybrid, ranked-hybrid, tta-hybrid,
adaptive), greedy k-center (coreset), sorting (uncertainty, mpe, tta-consistency), and with `--videos V` the same
with `--spread-videos` over V videos. Inputs are synthetic and seeded: clustered `--dim`-d L2-normalised
embeddings (one cluster per 200 images), uncertainty peaks drawn per image, signals uniform; `--labelled`
labelled images (their embeddings too). Every figure of a run is measured in that run on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _inputs(n: int, labelled: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = max(2, (n + labelled) // 200)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    which = rng.integers(0, k, n + labelled)
    x = centres[which] + 0.5 * rng.standard_normal((n + labelled, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    peaks = rng.beta(2, 3, (n, 14)).astype(np.float32)
    return x[:n], x[n:], peaks, rng.random(n), rng.random(n)


def _context(n: int, labelled: int, dim: int, videos: int | None):
    """A SelectionContext over a synthetic pool whose signals are given, not computed from images."""
    from activepose.config import SelectionConfig, UncertaintyConfig
    from activepose.pose.coco import CocoKeypoints, Frame
    from activepose.pose.skeleton import PRESETS
    from activepose.sampling.strategies import SelectionContext
    from activepose.sampling.uncertainty import PoolUncertainty, score_peaks

    emb, lab, peaks, mpe, flip = _inputs(n, labelled, dim)
    sk = PRESETS["lsp14"]
    empty = np.zeros((0, 14, 3), np.float32)

    def frame(i: int) -> Frame:
        v = f"v{i % videos}" if videos else None
        return Frame(i, f"{i}.jpg", 64, 64, empty, video=v, frame=i if videos else None)

    pool = CocoKeypoints([frame(i) for i in range(1, n + labelled + 1)], sk, Path("."))
    labelled_set = pool.subset(list(range(n + 1, n + labelled + 1)))
    cfg = SelectionConfig(spread_videos=bool(videos), uncertainty=UncertaintyConfig())
    ctx = SelectionContext(pool, labelled_set, model=object(), cfg=cfg)
    confident, uncertain, score = score_peaks(peaks, cfg.uncertainty)
    ctx._uncertainty = PoolUncertainty(np.arange(1, n + 1), peaks, confident, uncertain, score)
    ctx._embeddings = {"candidates": emb, "labelled": lab}
    ctx._signals = {"mpe": mpe, "flip": flip}
    ctx._extractor = object()
    return ctx


def main() -> None:
    from activepose.sampling.strategies import STRATEGIES, select_batch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="8000,100000")
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--labelled", type=int, default=1000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--strategies", default="all")
    p.add_argument("--videos", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    names = list(STRATEGIES) if args.strategies == "all" else args.strategies.split(",")
    names = [s for s in names if s != "adaptive"] + (["adaptive"] if "adaptive" in names else [])
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        for name in names:
            ctx = _context(n, args.labelled, args.dim, args.videos)
            if name == "adaptive":  # no held-out images: its typical mode (typiclust)
                ctx.holdout_ids = None
            t0 = time.perf_counter()
            result = select_batch(name, ctx, args.budget)
            seconds = time.perf_counter() - t0
            row = {"pool": n, "budget": args.budget, "labelled": args.labelled, "strategy": name,
                   "videos": args.videos, "seconds": round(seconds, 2),
                   "coverage_mean": round((result.stats.get("coverage") or {}).get("mean", float("nan")), 4)}  # fmt: skip
            rows.append(row)
            print(f"{n:7d} candidates  {name:16s} {seconds:8.2f} s", flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
