"""Diverse-batch selection at pool scale: every method on the same pool and budget, all timed in this run.

    python benchmarks/selection.py [--sizes 10000 100000] [--dim 2048] [--frac 0.2] [--backends annoy]
                                   [--exact-max-s 900] [--exact-probe 300] [--cover-sample 10000]
                                   [--paper-space full] [--reuse-cache]

Methods (same pool, same budget k = round(frac x N)):

* ``random``: k distinct uniform picks (the baseline every method must beat).
* ``exact k-center (full D)``: greedy farthest-first in the original space (``kcenter_greedy``): the
  reference. When a probe of the first ``--exact-probe`` picks predicts more than ``--exact-max-s``, its time
  is **estimated** (setup + k x time per pick: every pick costs the same mat-vec) and it has no coverage;
  a probe shorter than ``--probe-min-s`` doubles its picks first (short probes are noisy under contention).
  The same cap and probe apply to the sketch exact run.
* ``exact k-center (sketch)``: the same greedy farthest-first on the 64-d PCA sketch ``select_diverse``
  builds (same seed, same rows, same basis); its time includes fitting and projecting the sketch. Full vs
  sketch exact is what the dimension reduction buys; sketch exact vs the ANN selector is what the ANN buys.
* ``ANN selector (<backend>)``: ``select_diverse`` (sketch + cells + ANN neighbourhoods), per backend.
* ``paper-style drop (annoy)``: ``select_neighbour_drop``: an Annoy index over the candidates (original
  space by default, ``--paper-space sketch`` for the sketch), visit candidates in random order, pick one and
  drop its ceil(N / k) - 1 nearest neighbours from the candidates, repeat until k are picked.

Reported per method: MAX coverage (largest distance from any pool point to its nearest selected point, in
the original space; the k-center objective, and the primary figure), mean coverage (random is close to every
method on it), wall time and the peak RSS while the method ran (VmHWM reset before it via
/proc/self/clear_refs; where that is not possible, the process high-water mark, labelled so; either way it
includes what was resident before, printed per size). Every code path is warmed up untimed on a 1,000-row
slice first, so one-off import and initialisation costs do not land on the first method timed. Coverage is
exact brute force; on a seeded random subset of ``--cover-sample`` pool points when N x k x D is too large
(mean unbiased, max a lower bound; labelled "sample").

Nothing is reused by default. ``--reuse-cache`` reuses a full exact run saved by an earlier run in
``--cache`` (its time is then printed as "cached from <date>", not measured in this run).

Data: clustered synthetic embeddings (a mixture of ``--clusters`` clusters with Zipf-like sizes and
log-uniform spreads; each cluster lies near its own random 16-d subspace plus isotropic noise, then rows
are L2-normalised like the feature extractors' output), generated in float32 chunks, into a memory-mapped
file under ``--tmp`` above 2 GB (1M x 2048 = 8 GB), so the pool is never copied into RAM.
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


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRss:
    """Peak resident memory of one phase: resets VmHWM (Linux clear_refs "5") before it, reads it after.
    Falls back to ru_maxrss (the process high-water mark since it started), flagged by ``per_phase``."""

    def __init__(self) -> None:
        self.per_phase = self._reset() and _read_status_kb("VmHWM") is not None

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        if self.per_phase:
            self._reset()

    def gb(self) -> float:
        kb = _read_status_kb("VmHWM") if self.per_phase else None
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kb / 1024**2


def timed_kcenter(z, k: int, max_s: float, probe: int, min_probe_s: float = 5.0, chunk: int = 65536):
    """Exact farthest-first on z: (picks or None, seconds, label). Times the first ``probe`` picks; when
    the estimate (setup + k x time per pick) exceeds ``max_s`` and the probe took under ``min_probe_s``
    (short probes are noisy when other jobs share the cores), the probe doubles and runs again. Runs the
    whole selection (timed on its own) only when the estimate fits ``max_s``; probe time is not counted."""
    from activepose.sampling.diversity import _kcenter

    probe = max(2, min(probe, k))
    t0 = time.perf_counter()
    _kcenter(z, k, None, chunk, stop_after=1)
    t_setup = time.perf_counter() - t0
    while probe < k:
        t0 = time.perf_counter()
        _kcenter(z, k, None, chunk, stop_after=probe)
        t_probe = time.perf_counter() - t0
        est = t_setup + max(t_probe - t_setup, 0.0) / (probe - 1) * (k - 1)
        if est <= max_s:
            break
        if t_probe >= min_probe_s:
            return None, est, f"estimated from {probe:,} timed picks ({t_probe:.1f}s)"
        probe = min(2 * probe, k)
    t0 = time.perf_counter()
    picked, _ = _kcenter(z, k, None, chunk)
    return picked, time.perf_counter() - t0, "measured"


def bench_size(args, n: int, backends: list[str], rss: PeakRss):
    """All methods on one pool of n rows: (n, k, coverage sample or None, {method: result}, sketch seconds)."""
    from activepose.sampling.diversity import (
        _fit_sketch,
        _project,
        coverage,
        select_diverse,
        select_neighbour_drop,
    )

    k = int(round(args.frac * n))
    big = n * args.dim * 4 > 2**31
    path = Path(args.tmp) / f"activepose_sel_{n}_{args.dim}.npy"
    t0 = time.perf_counter()
    x = make_clustered(path if big else None, n, args.dim, args.clusters, seed=args.seed)
    if big:
        x = np.load(path, mmap_mode="r")
    print(f"\n== N={n:,} D={args.dim} k={k:,}  (data {time.perf_counter() - t0:.1f}s)", flush=True)
    sub = args.cover_sample if float(n) * k * args.dim * 2 > args.cover_max_flops else None
    rows: dict[str, dict] = {}

    def record(name: str, picked, seconds: float, label: str, peak: float, extra: str = "") -> None:
        cov = None
        if picked is not None:
            assert len(np.unique(picked)) == k, name
            cov = coverage(x, picked, sample=sub, seed=args.seed)
        rows[name] = {"s": seconds, "label": label, "cov": cov, "rss": peak}
        cs = f"cover max {cov['max']:.4f} mean {cov['mean']:.4f}" if cov else "cover n/a (not run)"
        print(f"{name:32s} {seconds:9.2f}s [{label}]  {cs}  peak RSS {peak:.2f} GB{extra}", flush=True)

    def run(fn):
        rss.start()
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, rss.gb()

    # one-off costs (library imports, thread pools, first BLAS calls) must not land on whichever method
    # happens to run first: warm every code path on a small slice, untimed
    w = np.ascontiguousarray(x[: min(n, 1000)], dtype=np.float32)
    for b in backends:
        select_diverse(w, max(1, len(w) // 10), backend=b, seed=args.seed, dim=args.sketch_dim)
    select_neighbour_drop(w, max(1, len(w) // 10), backend="annoy", seed=args.seed)
    timed_kcenter(w, max(1, len(w) // 10), float("inf"), args.exact_probe)
    coverage(w, np.arange(min(len(w), 10)))
    del w
    base = _read_status_kb("VmRSS")
    if base is not None:
        print(f"resident before the methods (interpreter, torch, pool if in RAM): {base / 1024**2:.2f} GB")

    # (a) random
    pick, t, peak = run(lambda: np.random.default_rng(args.seed).choice(n, size=k, replace=False))
    record("random", pick, t, "measured", peak)

    # (d) the ANN selector, per backend
    for b in backends:
        pick, t, peak = run(lambda b=b: select_diverse(x, k, backend=b, seed=args.seed, dim=args.sketch_dim))
        record(f"ANN selector ({b})", pick, t, "measured", peak)

    # (c) exact k-center on select_diverse's own sketch: same rng stream and sample size as its step 1
    def sketch():
        sk = _fit_sketch(x, args.sketch_dim, min(50_000, 20_000), np.random.default_rng(args.seed))
        return _project(x, sk, 65536)

    rss.start()
    t0 = time.perf_counter()
    z = sketch()
    t_sketch = time.perf_counter() - t0
    zk, t_zk, zk_label = timed_kcenter(z, k, args.exact_max_s, args.exact_probe, args.probe_min_s)
    peak = rss.gb()
    record(
        f"exact k-center (sketch {z.shape[1]}-d)",
        zk,
        t_sketch + t_zk,
        zk_label,
        peak,
        f"  (sketch fit+project {t_sketch:.2f}s)",
    )

    # (e) paper-style: Annoy index over the candidates, pick, drop its neighbours, repeat
    space = z if args.paper_space == "sketch" else x
    pick, t, peak = run(lambda: select_neighbour_drop(space, k, backend="annoy", seed=args.seed))
    if args.paper_space == "sketch":
        t += t_sketch
    record(f"paper-style drop (annoy, {args.paper_space})", pick, t, "measured", peak)
    del z  # the sketch-exact's sketch: not needed for the full run

    # (b) exact k-center in the original space: the reference
    cache = Path(args.cache) / f"exact_n{n}_d{args.dim}_c{args.clusters}_k{k}_s{args.seed}.npz"
    if args.reuse_cache and cache.exists():
        hit = np.load(cache)
        date = (
            str(hit["date"])
            if "date" in hit.files
            else time.strftime("%Y-%m-%d %H:%M (file time)", time.localtime(cache.stat().st_mtime))
        )
        record(
            f"exact k-center (full {args.dim}-d)",
            hit["picked"],
            float(hit["seconds"]),
            f"cached from {date}",
            float("nan"),
        )
    else:
        rss.start()
        ex, t_ex, ex_label = timed_kcenter(x, k, args.exact_max_s, args.exact_probe, args.probe_min_s)
        peak = rss.gb()
        if ex is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, picked=ex, seconds=t_ex, date=time.strftime("%Y-%m-%d %H:%M"))
        record(f"exact k-center (full {args.dim}-d)", ex, t_ex, ex_label, peak)
    if path.exists():
        path.unlink()
    return n, k, sub, rows, t_sketch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--frac", type=float, default=0.2)
    ap.add_argument("--clusters", type=int, default=300)
    ap.add_argument("--backends", default="annoy", help="comma-separated select_diverse backends")
    ap.add_argument("--backend", help=argparse.SUPPRESS)  # old spelling of a single backend
    ap.add_argument(
        "--sketch-dim", type=int, default=64, help="select_diverse's dim (and the sketch-exact's)"
    )
    ap.add_argument("--paper-space", choices=["full", "sketch"], default="full")
    ap.add_argument("--exact-max-s", type=float, default=900.0, help="estimate an exact run above this")
    ap.add_argument("--exact-probe", type=int, default=300, help="picks first timed for the estimate")
    ap.add_argument("--probe-min-s", type=float, default=5.0, help="lengthen shorter probes (doubling)")
    ap.add_argument("--cover-max-flops", type=float, default=1e13, help="subsample coverage above this")
    ap.add_argument("--cover-sample", type=int, default=10_000)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reuse-cache",
        action="store_true",
        help="reuse a full exact run saved in --cache (printed as 'cached from <date>', not measured now)",
    )
    ap.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "activepose_sel_cache"),
        help="measured full exact runs are saved here (read only with --reuse-cache)",
    )
    args = ap.parse_args()
    backends = [b for b in (args.backend or args.backends).split(",") if b]

    import torch

    rss = PeakRss()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"threads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}, load avg {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f}; select_diverse backends {','.join(backends)}; "
        f"peak RSS {'per method (VmHWM reset)' if rss.per_phase else 'process high-water mark'}"
    )
    results = [bench_size(args, n, backends, rss) for n in args.sizes]
    _print_tables(results, args.dim, backends)


def _fmt_s(r: dict) -> str:
    if r["label"] == "measured":
        return f"{r['s']:.2f}"
    if r["label"].startswith("estimated"):
        return f"~{r['s']:,.0f} (estimated)" if r["s"] >= 100 else f"~{r['s']:.2g} (estimated)"
    return f"{r['s']:.2f} ({r['label']})"


def _print_tables(results, dim: int, backends: list[str]) -> None:
    print("\n### Coverage (original space) and time; max coverage is the k-center objective")
    print("\n| N | k | method | max coverage | vs exact | mean coverage | vs exact | time s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k, sub, rows, _ in results:
        ref = rows[f"exact k-center (full {dim}-d)"]["cov"]
        for name, r in rows.items():
            c = r["cov"]
            smp = f" (sample {sub:,})" if (sub and c) else ""
            mx = f"{c['max']:.4f}{smp}" if c else "n/a"
            mn = f"{c['mean']:.4f}" if c else "n/a"
            rx = f"{c['max'] / ref['max']:.2f}x" if (c and ref) else "n/a"
            rm = f"{c['mean'] / ref['mean']:.2f}x" if (c and ref) else "n/a"
            rs = f"{r['rss']:.2f}" if r["rss"] == r["rss"] else "n/a (cached)"
            print(f"| {n:,} | {k:,} | {name} | {mx} | {rx} | {mn} | {rm} | {_fmt_s(r)} | {rs} |")

    print("\n### Speed-ups (all times from the table above; '~' where a time is estimated)")
    print(
        "\n| N | sketch fit+project s | exact full s | exact sketch s | ANN s | reduction buys (full / sketch exact) "
        "| ANN buys (sketch exact / ANN) | total (full exact / ANN) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, _k, _sub, rows, t_sketch in results:
        full = rows[f"exact k-center (full {dim}-d)"]
        sk = next(r for name, r in rows.items() if name.startswith("exact k-center (sketch"))
        for b in backends:
            a = rows[f"ANN selector ({b})"]
            print(
                f"| {n:,} | {t_sketch:.2f} | {_fmt_s(full)} | {_fmt_s(sk)} | {_fmt_s(a)} ({b}) "
                f"| {_ratio(full, sk)} | {_ratio(sk, a)} | {_ratio(full, a)} |"
            )


def _ratio(slow: dict, fast: dict) -> str:
    """slow / fast time, '~' when either is estimated, '(cached)' when either was not measured now."""
    labels = (slow["label"], fast["label"])
    pre = "~" if any(lab.startswith("estimated") for lab in labels) else ""
    post = " (cached)" if any(lab.startswith("cached") for lab in labels) else ""
    return f"{pre}{slow['s'] / fast['s']:.1f}x{post}"


if __name__ == "__main__":
    main()
