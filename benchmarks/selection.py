"""Diverse-batch selection at pool scale: ANN selector (``select_diverse``) vs exact greedy k-center.

    python benchmarks/selection.py [--sizes 10000 100000 1000000] [--dim 2048] [--frac 0.2]
                                   [--backend annoy] [--exact-max-s 900] [--cover-sample 10000]

Data: clustered synthetic embeddings (a mixture of ``--clusters`` clusters with Zipf-like sizes and
log-uniform spreads; each cluster lies near its own random 16-d subspace plus isotropic noise, then rows
are L2-normalised like the feature extractors' output), generated in float32 chunks into a memory-mapped
file under ``--tmp`` (1M x 2048 = 8 GB), so the pool is never copied into RAM.

Per size it prints: ANN time, exact time (measured, or **estimated** from a timed run of the first
``--exact-probe`` picks when the full run would exceed ``--exact-max-s``: exact farthest-first costs the
same mat-vec per pick, so time = setup + k x time per pick), the speed ratio, coverage (max / mean distance
from any candidate to its nearest selected point, exact brute force in the original space; on a seeded
random subset of ``--cover-sample`` candidates when N x k is too large: mean unbiased, max a lower bound)
and peak RSS after each phase (ru_maxrss is a high-water mark for the whole process, so each method's
figure includes the pool itself).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def make_clustered(
    path: Path | None, n: int, dim: int, clusters: int = 300, sub: int = 16, seed: int = 0, chunk: int = 32768
) -> np.ndarray:
    """Clustered synthetic embeddings (see module docstring), into a memmap at ``path`` (or RAM)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) / np.sqrt(dim)
    spread = np.exp(rng.uniform(np.log(0.15), np.log(0.6), clusters)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    weights = rng.permutation(weights / weights.sum())
    bases = rng.standard_normal((clusters, sub, dim), dtype=np.float32) / np.sqrt(sub * dim)
    out = (
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        if path is not None
        else np.empty((n, dim), dtype=np.float32)
    )
    noise = 0.05 / np.sqrt(dim)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        lab = rng.choice(clusters, size=m, p=weights)
        block = rng.standard_normal((m, dim), dtype=np.float32)
        block *= noise
        for c in np.unique(lab):
            rows = np.nonzero(lab == c)[0]
            zc = rng.standard_normal((len(rows), sub), dtype=np.float32)
            block[rows] += centres[c] + spread[c] * (zc @ bases[c])
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + m] = block
    if path is not None:
        out.flush()
    return out


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--frac", type=float, default=0.2)
    ap.add_argument("--clusters", type=int, default=300)
    ap.add_argument("--backend", default="annoy")
    ap.add_argument("--exact-max-s", type=float, default=900.0, help="estimate exact time above this")
    ap.add_argument("--exact-probe", type=int, default=300, help="picks timed for the estimate")
    ap.add_argument("--cover-max-flops", type=float, default=1e13, help="subsample coverage above this")
    ap.add_argument("--cover-sample", type=int, default=10_000)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "activepose_sel_cache"),
        help="exact selections + their measured time are cached here (the reference takes minutes)",
    )
    args = ap.parse_args()

    import torch

    from activepose.sampling.diversity import _kcenter, coverage, select_diverse

    print(f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}; backend {args.backend}")
    rows = []
    for n in args.sizes:
        k = int(round(args.frac * n))
        path = Path(args.tmp) / f"activepose_sel_{n}_{args.dim}.npy"
        t0 = time.perf_counter()
        x = make_clustered(
            path if n * args.dim * 4 > 2**31 else None, n, args.dim, args.clusters, seed=args.seed
        )
        if n * args.dim * 4 > 2**31:
            x = np.load(path, mmap_mode="r")
        print(f"\n== N={n:,} D={args.dim} k={k:,}  (data {time.perf_counter() - t0:.1f}s)", flush=True)
        sub = args.cover_sample if float(n) * k * args.dim * 2 > args.cover_max_flops else None

        t0 = time.perf_counter()
        ann = select_diverse(x, k, backend=args.backend, seed=args.seed)
        t_ann = time.perf_counter() - t0
        rss_ann = _rss_gb()
        assert len(np.unique(ann)) == k
        cov_ann = coverage(x, ann, sample=sub, seed=args.seed)
        print(
            f"ANN  {t_ann:8.1f}s  cover max {cov_ann['max']:.4f} mean {cov_ann['mean']:.4f}  rss {rss_ann:.2f} GB",
            flush=True,
        )

        # exact: reuse a cached run, else probe first and decide whether the full run fits the budget
        cache = Path(args.cache) / f"exact_n{n}_d{args.dim}_c{args.clusters}_k{k}_s{args.seed}.npz"
        cov_ex = None
        if cache.exists():
            hit = np.load(cache)
            ex, t_ex, ex_label = hit["picked"], float(hit["seconds"]), "measured (cached run)"
        else:
            t0 = time.perf_counter()
            _kcenter(x, k, None, 65536, stop_after=1)
            t_setup = time.perf_counter() - t0
            probe = min(args.exact_probe, k)
            t0 = time.perf_counter()
            _kcenter(x, k, None, 65536, stop_after=probe)
            per_pick = max(time.perf_counter() - t0 - t_setup, 0.0) / max(probe - 1, 1)
            t_ex, ex_label, ex = t_setup + per_pick * (k - 1), f"ESTIMATE ({probe} picks timed)", None
            if t_ex <= args.exact_max_s:
                t0 = time.perf_counter()
                ex, _ = _kcenter(x, k, None, 65536)
                t_ex, ex_label = time.perf_counter() - t0, "measured"
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cache, picked=ex, seconds=t_ex)
        if ex is not None:
            cov_ex = coverage(x, ex, sample=sub, seed=args.seed)
        rss_ex = _rss_gb()
        line = f"EXACT {t_ex:8.1f}s [{ex_label}]"
        if cov_ex:
            line += f"  cover max {cov_ex['max']:.4f} mean {cov_ex['mean']:.4f}"
        print(line + f"  rss {rss_ex:.2f} GB", flush=True)
        rows.append((n, k, t_ann, t_ex, ex_label, cov_ann, cov_ex, rss_ann, rss_ex, sub))
        del x
        if path.exists():
            path.unlink()

    print(
        "\n| N | k | ANN s | exact s | speed-up | ANN cover max/mean | exact cover max/mean "
        "| mean ratio | max ratio | peak RSS GB (after ANN / after exact) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, k, t_ann, t_ex, lab, ca, ce, ra, re_, sub in rows:
        est = "" if lab.startswith("measured") else " (est.)"
        ce_s = f"{ce['max']:.4f} / {ce['mean']:.4f}" if ce else "n/a (not run)"
        mr = f"{ca['mean'] / ce['mean']:.3f}" if ce else "n/a"
        xr = f"{ca['max'] / ce['max']:.3f}" if ce else "n/a"
        sub_s = f" (sample {sub:,})" if sub else ""
        print(
            f"| {n:,} | {k:,} | {t_ann:.1f} | {t_ex:.1f}{est} | {t_ex / t_ann:.1f}x | "
            f"{ca['max']:.4f} / {ca['mean']:.4f}{sub_s} | {ce_s} | {mr} | {xr} | {ra:.2f} / {re_:.2f} |"
        )


if __name__ == "__main__":
    main()
