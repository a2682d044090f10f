"""Typical samples: k-means frame picking and TypiClust, over image embeddings.

At small budgets the samples that pay are *typical* ones — images that look like many others — not uncertain
ones (Hacohen, Dekel & Weinshall, "Active learning on a budget", ICML 2022). Two ways to pick them:

- `kmeans_select` (the DeepLabCut / SLEAP frame extraction users know): k-means with k = budget over the
  candidates' embeddings, and from each cluster the candidate nearest its centre. The labelled images play no
  part: it picks a representative of every mode of the pool.
- `typiclust_select` (TypiClust): k-means over labelled + candidates with k = labelled + budget clusters (at
  most `max_clusters`); then, one pick at a time, the cluster holding the fewest labelled-or-chosen images
  (ties: the largest; clusters with fewer than `min_cluster` candidates are skipped while others remain), and
  in it the most *typical* candidate: the one whose `k_nn` nearest neighbours within the cluster are closest
  (typicality = 1 / mean distance to them). So it fills the largest regions no label covers yet, with their
  densest image.

k-means is scikit-learn's (`KMeans`, k-means++ seeding; `MiniBatchKMeans` for pools over `_MINIBATCH_ABOVE`),
seeded, so a selection is deterministic per seed. Both return candidate rows and a score per pick: the size of
the pick's cluster (kmeans: how many candidates it stands for) or its typicality (typiclust).
"""

from __future__ import annotations

import numpy as np

_MINIBATCH_ABOVE = 50_000  # candidates; beyond this, mini-batch k-means (memory and time stay near linear)
_MAX_CLUSTERS = 500  # TypiClust's cap on the number of clusters (as its authors' code)
_MIN_CLUSTER = 5
_K_NN = 20


def kmeans_labels(emb: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N,), centres (k, D)) of seeded k-means on the rows of `emb` (1 <= k <= N)."""
    import warnings

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.ascontiguousarray(emb, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} rows, got k={k}")
    if len(x) > _MINIBATCH_ABOVE:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=4096)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=1)
    with warnings.catch_warnings():  # duplicate rows: fewer distinct clusters than k (handled by the callers)
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = km.fit_predict(x)
    return labels.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _budget_ok(budget: int, n: int) -> bool:
    """False for an empty budget; ValueError for one larger than the `n` candidates."""
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} candidates")
    return budget > 0


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (len(a), len(b)) squared Euclidean distances (clipped at 0)."""
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_select(emb: np.ndarray, budget: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, cluster sizes): `budget` candidates, the one nearest each k-means centre (k = budget).

    A cluster left empty (duplicate embeddings give fewer distinct clusters than k) is filled by the unchosen
    candidate nearest its centre, so exactly `budget` distinct rows come back.
    """
    n = len(emb)
    if not _budget_ok(budget, n):
        return np.zeros(0, np.int64), np.zeros(0)
    x = np.asarray(emb, dtype=np.float32)
    labels, centres = kmeans_labels(x, budget, seed)
    sizes = np.bincount(labels, minlength=budget)
    own = ((x - centres[labels]) ** 2).sum(1)  # each candidate's squared distance to its own centre
    order = np.lexsort((own, labels))  # by cluster, nearest first
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    picks = {int(labels[r]): int(r) for r in order[first]}
    chosen = np.zeros(n, bool)
    chosen[list(picks.values())] = True
    for c in np.flatnonzero(sizes == 0):  # empty clusters: the nearest unchosen candidate to the centre
        d = _sq_dist(centres[c : c + 1], x)[0]
        d[chosen] = np.inf
        r = int(np.argmin(d))
        picks[int(c)] = r
        chosen[r] = True
    clusters = sorted(picks, key=lambda c: (-sizes[c], c))  # the largest cluster's pick first
    rows = np.array([picks[c] for c in clusters], np.int64)
    return rows, sizes[clusters].astype(np.float64)


def typicality(x: np.ndarray, k_nn: int = _K_NN) -> np.ndarray:
    """Return 1 / (mean distance to the `k_nn` nearest other rows) per row of `x` (1e12 at most: duplicates)."""
    n = len(x)
    if n == 1:
        return np.ones(1)
    k = max(1, min(k_nn, n - 1))
    out = np.empty(n)
    for start in range(0, n, 2048):  # chunked: memory stays bounded for large clusters
        d = np.sqrt(_sq_dist(x[start : start + 2048], x))
        rows = np.arange(start, min(n, start + 2048))
        d[rows - start, rows] = np.inf  # not its own neighbour
        near = np.partition(d, k - 1, axis=1)[:, :k]
        out[rows] = 1.0 / np.maximum(near.mean(1), 1e-12)  # finite for exact duplicates too
    return out


def typiclust_select(
    emb: np.ndarray,
    budget: int,
    labelled: np.ndarray | None = None,
    seed: int = 0,
    *,
    max_clusters: int = _MAX_CLUSTERS,
    min_cluster: int = _MIN_CLUSTER,
    k_nn: int = _K_NN,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, typicality): `budget` candidates by TypiClust (module doc), away from `labelled` clusters."""
    n = len(emb)
    if not _budget_ok(budget, n):
        return np.zeros(0, np.int64), np.zeros(0)
    x = np.asarray(emb, dtype=np.float32)
    lab = np.zeros((0, x.shape[1]), np.float32) if labelled is None else np.asarray(labelled, np.float32)
    both = np.concatenate([x, lab])
    k = int(min(len(lab) + budget, max_clusters, len(both)))
    labels, _ = kmeans_labels(both, k, seed)
    cand_labels, lab_labels = labels[:n], labels[n:]
    covered = np.bincount(lab_labels, minlength=k).astype(np.int64)  # labelled or chosen images per cluster
    members = [np.flatnonzero(cand_labels == c) for c in range(k)]
    size = np.array([len(m) + int(covered[c]) for c, m in enumerate(members)])
    left = np.array([len(m) for m in members])
    typ: dict[int, np.ndarray] = {}  # typicality of a cluster's candidates, computed when first needed
    taken = np.zeros(n, bool)
    rows, scores = [], []
    for _ in range(budget):
        open_ = left > 0
        big = open_ & (np.array([len(m) for m in members]) >= min_cluster)
        pool = big if big.any() else open_  # small clusters only once the others are used up
        cands = np.flatnonzero(pool)
        c = int(cands[np.lexsort((cands, -size[cands], covered[cands]))[0]])  # fewest covered, then largest
        if c not in typ:  # density among all the cluster's images, labelled ones included
            typ[c] = typicality(np.concatenate([x[members[c]], lab[lab_labels == c]]), k_nn)[
                : len(members[c])
            ]
        t = np.where(taken[members[c]], -np.inf, typ[c])
        j = int(np.argmax(t))
        r = int(members[c][j])
        taken[r] = True
        covered[c] += 1
        left[c] -= 1
        rows.append(r)
        scores.append(float(typ[c][j]))
    return np.array(rows, np.int64), np.array(scores)
