"""Diverse-batch selection over image embeddings: an ANN-accelerated k-center and its exact reference.

``select_diverse`` (the paper's diversity module, fast at pool scale) approximates greedy k-center
(farthest-first traversal, Sener & Savarese's core-set) in four steps:

1. **Sketch.** Project the (N, D) embeddings to ``dim`` (default 64) dimensions with PCA fitted on a sample
   of rows (randomized SVD), streamed in row chunks so a memory-mapped pool is read once and never
   copied. Greedy k-center only needs to rank distances, and the leading principal directions carry most of
   the between-image distance; every later step costs O(dim) instead of O(D) per distance.
2. **Cells.** k-means the sketch into ``C ~ min(k, N / cell_size)`` cells (fitted on a sample). An ANN index
   (``backend``: annoy by default, the paper's choice) over the cell centroids assigns every image to its
   cell and gives each cell its ``neighbours`` nearest cells.
3. **Farthest-first over cells.** Keep, per image, the squared sketch distance to its nearest chosen or
   labelled image; a max-heap over cells holds each cell's largest such distance. Repeatedly take the
   farthest image of the top cell, then update distances only inside that cell's neighbourhood (a new
   centre cannot be the nearest centre of an image far away, which is what the ANN neighbourhood captures).
   Each pick costs O((neighbours + 1) * cell_size * dim) instead of exact k-center's O(N * D), so the whole
   selection is linear in N for a fixed cell size (plus a heap log factor) instead of O(N k D). Memory:
   two (N, dim) float32 sketches and a few N-vectors besides the (possibly memory-mapped) input.
   A cell nobody has touched yet has unknown (infinite) distance; it gets its *medoid* (the image nearest
   its centroid) first, largest cells first: a central pick covers a cell on average better than a far one.
4. **Labelled images** are assigned to cells the same way and treated as centres chosen before the first
   pick, so the selection moves away from what is already labelled; an exact duplicate of a labelled image
   has distance 0 and is picked last.

The approximation differs from exact k-center only where a new centre would have been nearest to an image
outside its neighbourhood of cells (those images keep a pessimistic distance and may get a redundant pick),
and through the sketch. Coverage (:func:`coverage`) is always measured in the original space.

``kcenter_greedy`` is the exact reference: farthest-first over exact float32 distances in the original
space, O(N) memory (a distance per candidate) plus one row-chunk, one BLAS mat-vec per pick.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from .ann import BACKENDS, AnnIndex, create_index, register_backend

__all__ = [
    "AnnIndex",
    "BACKENDS",
    "coverage",
    "create_index",
    "kcenter_greedy",
    "register_backend",
    "select_diverse",
    "select_neighbour_drop",
]


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > n:
        raise ValueError(f"cannot select k={k} items from only {n} candidates")


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    return x


def _labelled_or_none(labelled, dim: int) -> np.ndarray | None:
    if labelled is None or np.size(labelled) == 0:
        return None
    lab = _as_2d(np.asarray(labelled), "labelled")
    if lab.shape[1] != dim:
        raise ValueError(f"labelled has dimension {lab.shape[1]}, candidates have {dim}")
    return lab


def _rows(x: np.ndarray, s: int, e: int) -> np.ndarray:
    """Row slice as contiguous float32 (no copy when it already is)."""
    return np.ascontiguousarray(x[s:e], dtype=np.float32)


# --------------------------------------------------------------------------------------------------------
# exact reference


def _kcenter(
    candidates: np.ndarray,
    k: int,
    labelled: np.ndarray | None,
    chunk: int,
    stop_after: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first; returns (picked ids, squared distance of each candidate to its nearest centre,
    -1 for picked ones). ``stop_after`` stops early (used to time a fraction and extrapolate)."""
    x = _as_2d(candidates, "candidates")
    n, dim = x.shape
    _check_k(k, n)
    lab = _labelled_or_none(labelled, dim)
    sq = np.empty(n, dtype=np.float32)
    for s in range(0, n, chunk):
        r = _rows(x, s, s + chunk)
        sq[s : s + len(r)] = np.einsum("ij,ij->i", r, r)
    mind = np.full(n, np.inf, dtype=np.float32)
    if lab is not None:
        lstep = max(1, (1 << 22) // max(chunk, 1))
        for t in range(0, len(lab), lstep):
            lb = np.ascontiguousarray(lab[t : t + lstep], dtype=np.float32)
            lsq = np.einsum("ij,ij->i", lb, lb)
            for s in range(0, n, chunk):
                r = _rows(x, s, s + chunk)
                d2 = sq[s : s + len(r), None] + lsq[None, :] - 2.0 * (r @ lb.T)
                np.minimum(mind[s : s + len(r)], np.maximum(d2.min(1), 0), out=mind[s : s + len(r)])
        first = None
    else:
        mean = np.zeros(dim, dtype=np.float64)
        for s in range(0, n, chunk):
            mean += _rows(x, s, s + chunk).sum(0, dtype=np.float64)
        mean = (mean / max(n, 1)).astype(np.float32)
        best, first = -1.0, 0
        for s in range(0, n, chunk):
            r = _rows(x, s, s + chunk)
            d = sq[s : s + len(r)] - 2.0 * (r @ mean)
            j = int(np.argmax(d))
            if d[j] > best:
                best, first = float(d[j]), s + j
    limit = k if stop_after is None else min(k, stop_after)
    picked = np.empty(limit, dtype=np.int64)
    for t in range(limit):
        i = first if (t == 0 and first is not None) else int(np.argmax(mind))
        picked[t] = i
        mind[i] = -1.0
        c = np.ascontiguousarray(x[i], dtype=np.float32)
        cc = float(c @ c)
        for s in range(0, n, chunk):
            r = _rows(x, s, s + chunk)
            d2 = r @ c
            d2 *= -2.0
            d2 += sq[s : s + len(r)]
            d2 += cc
            np.maximum(d2, 0, out=d2)
            np.minimum(mind[s : s + len(r)], d2, out=mind[s : s + len(r)])  # picked stay at -1
    return picked, mind


def kcenter_greedy(
    candidates: np.ndarray, k: int, labelled: np.ndarray | None = None, chunk: int = 65536
) -> np.ndarray:
    """Exact greedy k-center (farthest-first / core-set): ``k`` indices into ``candidates``.

    Each pick is the candidate farthest (exact euclidean, original space) from every labelled point and
    every earlier pick; without labelled points the first pick is the candidate farthest from the mean.
    The result is a 2-approximation of the optimal k-center (minimax) radius. Memory: O(N) floats plus one
    chunk of ``chunk`` rows, so ``candidates`` may be a ``np.memmap``. Time: O(N * k * D).
    """
    return _kcenter(candidates, k, labelled, chunk)[0]


# --------------------------------------------------------------------------------------------------------
# coverage


def coverage(
    candidates: np.ndarray,
    selected: np.ndarray,
    labelled: np.ndarray | None = None,
    backend: str = "exact",
    sample: int | None = None,
    seed: int = 0,
    chunk: int = 4096,
) -> dict:
    """Distance from every candidate to its nearest selected-or-labelled point (original space).

    Returns ``{"max", "mean", "n", "exact"}``. ``backend="exact"`` is chunked brute force (BLAS); another
    registry name queries that ANN index instead (faster, approximate: distances can only be
    over-estimated). ``sample`` evaluates a seeded random subset of that many candidates (for pools where
    N x centres is too large; ``mean`` is then an unbiased estimate and ``max`` a lower bound).
    """
    x = _as_2d(candidates, "candidates")
    n, dim = x.shape
    sel = np.asarray(selected, dtype=np.int64).reshape(-1)
    lab = _labelled_or_none(labelled, dim)
    parts = [np.asarray(x[np.sort(sel)], dtype=np.float32)] if len(sel) else []
    if lab is not None:
        parts.append(np.asarray(lab, dtype=np.float32))
    if not parts:
        raise ValueError("coverage needs at least one selected or labelled point")
    centres = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0])
    rows = np.arange(n)
    if sample is not None and sample < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    best = np.empty(len(rows), dtype=np.float32)
    if backend == "exact":
        ct = torch.from_numpy(centres)
        csq = (ct * ct).sum(1)
        cstep = max(1, (1 << 25) // max(chunk, 1))
        with torch.no_grad():
            for s in range(0, len(rows), chunk):
                rr = rows[s : s + chunk]
                r = np.asarray(x[rr[0] : rr[-1] + 1] if len(rows) == n else x[rr], dtype=np.float32)
                q = torch.from_numpy(np.ascontiguousarray(r))
                qsq = (q * q).sum(1, keepdim=True)
                m = torch.full((len(q),), float("inf"))
                for t in range(0, len(ct), cstep):
                    d2 = torch.addmm(qsq + csq[None, t : t + cstep], q, ct[t : t + cstep].T, alpha=-2.0)
                    m = torch.minimum(m, d2.min(1).values)
                best[s : s + len(q)] = m.clamp_min_(0).sqrt_().numpy()
        exact = True
    else:
        index = create_index(backend, dim)
        index.add(centres)
        index.build()
        for s in range(0, len(rows), chunk):
            rr = rows[s : s + chunk]
            best[s : s + len(rr)] = index.query(np.asarray(x[rr], dtype=np.float32), 1)[1][:, 0]
        exact = False
    return {
        "max": float(best.max()),
        "mean": float(best.mean(dtype=np.float64)),
        "n": len(rows),
        "exact": exact,
    }


# --------------------------------------------------------------------------------------------------------
# ANN selector


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of y's columns by CholeskyQR2 (two GEMMs + a tiny float64 Cholesky; LAPACK's
    tall-skinny QR is much slower here and stalls under thread contention). Columns that are (numerically)
    dependent — a sample of near-identical rows, e.g. frames of one scene — make the Gram matrix singular, or
    (float32 rounding, depending on the CPU's kernels) barely positive-definite with a useless factor: in both
    cases, seen as a failed factorisation or as columns that did not come out orthonormal, Householder QR, which
    completes the basis whatever the rank."""
    q = y
    for _ in range(2):
        g = (q.T @ q).double()
        g.diagonal().add_(1e-10 * max(float(g.trace()), 1e-30))
        factor, info = torch.linalg.cholesky_ex(g)
        if int(info) != 0:
            return torch.linalg.qr(y)[0]
        q = q @ torch.linalg.inv(factor).T.float()
    eye = torch.eye(q.shape[1], dtype=q.dtype)
    if not bool(torch.isfinite(q).all()) or float((q.T @ q - eye).abs().max()) > 1e-4:
        return torch.linalg.qr(y)[0]
    return q


def _fit_sketch(x: np.ndarray, dim: int, sample: int, rng: np.random.Generator):
    """PCA basis (randomized SVD, 3 power iterations) of a row sample: (mean, (D, dim) basis) or None.
    torch GEMMs throughout (numpy's BLAS path for ``y.T @ y`` is ~20x slower on this kind of shape)."""
    n, d = x.shape
    if d <= dim or n <= dim:  # nothing to reduce: a few rows are compared in the original space
        return None
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    s = torch.from_numpy(np.asarray(x[rows], dtype=np.float32))
    mean = s.mean(0)
    s = s - mean
    rank = len(rows) - 1  # the centred sample's rank: a wider sketch would make _orth's Gram matrix singular
    if rank < 1:
        return None
    q = min(dim, rank, d)
    p = min(q + 16, rank, d)
    with torch.no_grad():
        y = s @ torch.from_numpy(rng.standard_normal((d, p), dtype=np.float32))
        for _ in range(3):
            y = s @ (s.T @ _orth(y))
        b = _orth(y).T @ s  # (p, D): s ~ Q b
        w, u = torch.linalg.eigh((b @ b.T).double())
        top = torch.argsort(w, descending=True)[:q]
        v = (u[:, top].T.float() @ b) / w[top].clamp_min(1e-30).sqrt().float()[:, None]
    return mean.numpy(), np.ascontiguousarray(v.T.numpy(), dtype=np.float32)


def _project(x: np.ndarray, sketch, chunk: int) -> np.ndarray:
    if sketch is None:
        return np.ascontiguousarray(x, dtype=np.float32)
    mean, w = sketch
    out = np.empty((len(x), w.shape[1]), dtype=np.float32)
    for s in range(0, len(x), chunk):
        r = _rows(x, s, s + chunk)
        out[s : s + len(r)] = (r - mean) @ w
    return out


def _kmeans(z: np.ndarray, c: int, rng: np.random.Generator, sample: int, iters: int) -> np.ndarray:
    """Lloyd's k-means on a sample (k-means++-free: random distinct init), torch BLAS, float32."""
    n = len(z)
    rows = rng.choice(n, size=min(n, max(sample, c)), replace=False)
    s = torch.from_numpy(z[np.sort(rows)])
    cent = s[torch.from_numpy(rng.choice(len(s), size=c, replace=False))].clone()
    ssq = (s * s).sum(1, keepdim=True)
    for _ in range(iters):
        assign = torch.empty(len(s), dtype=torch.int64)
        csq = (cent * cent).sum(1)
        for t in range(0, len(s), 8192):
            d2 = torch.addmm(ssq[t : t + 8192] + csq[None, :], s[t : t + 8192], cent.T, alpha=-2.0)
            assign[t : t + 8192] = d2.argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, s)
        counts = torch.bincount(assign, minlength=c).to(s.dtype)
        empty = counts == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):  # re-seed empty cells on random sample points
            cent[empty] = s[torch.from_numpy(rng.choice(len(s), size=int(empty.sum()), replace=False))]
    return np.ascontiguousarray(cent.numpy())


def _assign(index: AnnIndex, z: np.ndarray, cent: np.ndarray, chunk: int) -> np.ndarray:
    """Cell of every row: the ANN index's nearest centroid (exact fallback where it returned none)."""
    out = np.concatenate([index.query(z[s : s + chunk], 1)[0][:, 0] for s in range(0, len(z), chunk)])
    miss = np.flatnonzero(out < 0)
    if len(miss):
        d2 = (cent * cent).sum(1)[None, :] - 2.0 * (z[miss] @ cent.T)
        out[miss] = d2.argmin(1)
    return out


def select_diverse(
    candidates: np.ndarray,
    k: int,
    labelled: np.ndarray | None = None,
    backend: str = "annoy",
    seed: int = 0,
    *,
    dim: int = 64,
    cell_size: int = 256,
    neighbours: int = 8,
    sample: int = 50_000,
    kmeans_iters: int = 10,
    chunk: int = 65536,
    **options,
) -> np.ndarray:
    """Pick ``k`` distinct indices into ``candidates`` (N, D) spread over the embedding space and away from
    ``labelled`` (M, D); returned in pick order. See the module docstring for the algorithm.

    ``backend`` names the ANN index (``annoy``, ``faiss``, ``exact``, see :func:`create_index`); extra
    ``options`` go to it. ``dim``: sketch dimension (PCA). ``cell_size``: target images per cell.
    ``neighbours``: cells updated around each pick. ``sample``: rows used to fit PCA and k-means.
    Deterministic for a given ``seed`` (and single-threaded index builds).
    """
    x = _as_2d(candidates, "candidates")
    n, d = x.shape
    _check_k(k, n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    lab = _labelled_or_none(labelled, d)
    rng = np.random.default_rng(seed)

    sketch = _fit_sketch(x, dim, min(sample, 20_000), rng)
    z = _project(x, sketch, chunk)
    zl = _project(lab, sketch, chunk) if lab is not None else None
    dz = z.shape[1]

    n_cells = int(max(1, min(k, n // max(cell_size, 1))))
    cent = _kmeans(z, n_cells, rng, sample, kmeans_iters) if n_cells > 1 else z.mean(0, keepdims=True)
    if backend != "annoy":
        options.pop("n_trees", None)
    if backend == "annoy":
        options.setdefault("seed", seed)
    index = create_index(backend, dz, **options)
    index.add(cent)
    index.build()
    assign = _assign(index, z, cent, chunk)
    m = min(neighbours + 1, n_cells)
    nbr = index.query(cent, m)[0]
    own = np.arange(n_cells)
    has_self = (nbr == own[:, None]).any(1)
    nbr[~has_self, -1] = own[~has_self]
    nbr[nbr < 0] = own[np.nonzero(nbr < 0)[0]]

    # cell-contiguous layout of the sketch
    order = np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=n_cells)
    starts = np.concatenate([[0], np.cumsum(counts)])
    zc = np.ascontiguousarray(z[order])
    del z
    sq = np.einsum("ij,ij->i", zc, zc)
    # each cell's neighbourhood: itself first, then its ANN-nearest non-empty cells
    hood_cells = []
    for b in range(n_cells):
        cells = [int(c) for c in dict.fromkeys(nbr[b].tolist()) if counts[c] > 0 and c != b]
        hood_cells.append(([b] if counts[b] else []) + cells)

    mind = np.full(n, np.inf, dtype=np.float32)  # squared sketch distance to the nearest centre; -1: picked

    def update(b: int, c: np.ndarray) -> None:
        """Lower the distances in cell b's neighbourhood by the new centre(s) c. einsum, not BLAS: these
        mat-vecs are small, and BLAS threading makes them stall when other processes share the cores."""
        cc = float(c @ c) if c.ndim == 1 else None
        for cell in hood_cells[b]:
            s, e = starts[cell], starts[cell + 1]
            if c.ndim == 1:
                d2 = np.einsum("ij,j->i", zc[s:e], c)
                d2 *= -2.0
                d2 += sq[s:e] + cc
            else:
                d2 = np.full(e - s, np.inf, dtype=np.float32)
                for t in range(0, len(c), 4096):
                    ct = c[t : t + 4096]
                    g = sq[s:e, None] - 2.0 * (zc[s:e] @ ct.T) + np.einsum("ij,ij->i", ct, ct)[None, :]
                    np.minimum(d2, g.min(1), out=d2)
            np.maximum(d2, 0, out=d2)
            np.minimum(mind[s:e], d2, out=mind[s:e])  # picked rows stay at -1

    if zl is not None:
        lab_cell = _assign(index, zl, cent, chunk)
        for b in np.unique(lab_cell):
            if b >= 0:
                update(int(b), zl[lab_cell == b])

    # heap of (-key, tiebreak, cell, version). untouched cells (inf) are ordered by size, larger first
    version = np.zeros(n_cells, dtype=np.int64)
    heap: list[tuple[float, float, int, int]] = []

    def push(b: int) -> None:
        s, e = starts[b], starts[b + 1]
        if e == s:
            return
        top = float(mind[s:e].max())
        if top < 0:
            return
        version[b] += 1
        heapq.heappush(heap, (-top, -float(e - s), b, int(version[b])))

    for b in range(n_cells):
        push(b)

    picked = np.empty(k, dtype=np.int64)
    t = 0
    while t < k:
        negtop, _, b, ver = heapq.heappop(heap)
        if ver != version[b]:
            continue
        s, e = starts[b], starts[b + 1]
        seg = mind[s:e]
        if np.isinf(negtop):  # untouched cell: its medoid (nearest the centroid)
            cz = zc[s:e]
            j = int(np.argmin(sq[s:e] - 2.0 * (cz @ cent[b])))
        else:
            j = int(np.argmax(seg))
        pos = s + j
        picked[t] = order[pos]
        t += 1
        mind[pos] = -1.0
        update(b, zc[pos])
        for c in hood_cells[b]:
            push(int(c))
    return picked


# --------------------------------------------------------------------------------------------------------
# paper-style baseline


def select_neighbour_drop(
    candidates: np.ndarray,
    k: int,
    labelled: np.ndarray | None = None,
    backend: str = "annoy",
    seed: int = 0,
    *,
    neighbours: int | None = None,
    chunk: int = 65536,
    **options,
) -> np.ndarray:
    """Paper-style ANN diversity: pick a candidate, drop its ``neighbours`` nearest candidates, repeat.

    An index (``backend``, see :func:`create_index`; extra ``options`` go to it) is built over all
    candidates in the space they are given in. Candidates are visited in a seeded random order; each one
    still available is picked and its ``neighbours`` (default ``ceil(N / k) - 1``, so that ``k`` picks
    could remove the whole pool) approximate nearest candidates stop being available. Each labelled point
    first removes its ``neighbours + 1`` nearest candidates (the region a pick would cover). When a pass
    over the pool ends before ``k`` picks, every candidate not yet picked becomes available again and
    another pass starts. Returns ``k`` distinct indices in pick order; deterministic for a given ``seed``.
    Cost: the index build plus ``k`` single queries, no distance to anything but the neighbours.
    """
    x = _as_2d(candidates, "candidates")
    n, d = x.shape
    _check_k(k, n)
    if neighbours is not None and neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    lab = _labelled_or_none(labelled, d)
    nn = max(math.ceil(n / k) - 1, 0) if neighbours is None else int(neighbours)
    nn = min(nn, n - 1)
    if backend == "annoy":
        options.setdefault("seed", seed)
    index = create_index(backend, d, **options)
    for s in range(0, n, chunk):
        index.add(_rows(x, s, s + chunk))
    index.build()

    available = np.ones(n, dtype=bool)
    taken = np.zeros(n, dtype=bool)
    if lab is not None:
        for s in range(0, len(lab), chunk):
            ids = index.query(np.ascontiguousarray(lab[s : s + chunk], dtype=np.float32), nn + 1)[0]
            available[ids[ids >= 0]] = False
    order = np.random.default_rng(seed).permutation(n)
    picked = np.empty(k, dtype=np.int64)
    t, pos = 0, 0
    while t < k:
        if pos == n:  # pass over: everything not yet picked is available again
            available = ~taken
            pos = 0
        i = int(order[pos])
        pos += 1
        if not available[i]:
            continue
        picked[t] = i
        t += 1
        taken[i] = True
        available[i] = False
        if nn:
            ids = index.query(_rows(x, i, i + 1), nn + 1)[0][0]
            available[ids[ids >= 0]] = False
    return picked
