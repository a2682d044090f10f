"""k-means frame picking and TypiClust on synthetic embeddings whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from activepose.sampling.typical import kmeans_select, typicality, typiclust_select


def _blobs(n_clusters=6, per=(30, 12, 25, 8, 40, 16), dim=16, spread=0.05, seed=0):
    """Well-separated clusters (centres 10 apart in random directions); returns (points, cluster of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres *= 10.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = list(per)[:n_clusters]
    x = np.concatenate(
        [c + spread * rng.standard_normal((m, dim)) for c, m in zip(centres, sizes, strict=True)]
    )
    y = np.repeat(np.arange(n_clusters), sizes)
    perm = rng.permutation(len(x))  # clusters interleaved: no help from the order
    return x[perm].astype(np.float32), y[perm]


@pytest.mark.parametrize("select", [kmeans_select, typiclust_select])
@pytest.mark.parametrize("budget", [3, 6])
def test_one_image_per_well_separated_cluster_before_a_second(select, budget):
    x, y = _blobs()
    rows, scores = select(x, budget, seed=1)
    assert len(rows) == budget == len(set(rows.tolist())) == len(scores)
    assert len(set(y[rows].tolist())) == budget  # no cluster twice while others have none


@pytest.mark.parametrize("select", [kmeans_select, typiclust_select])
def test_a_budget_over_the_cluster_count_covers_every_cluster(select):
    x, y = _blobs()
    rows, _ = select(x, 9, seed=2)
    assert set(y[rows].tolist()) == set(range(6))
    assert len(set(rows.tolist())) == 9


def test_typiclust_leaves_the_clusters_labelled_images_already_cover():
    x, y = _blobs()
    labelled_rows = np.flatnonzero(y == 4)[:3].tolist() + np.flatnonzero(y == 0)[:2].tolist()
    cand = np.setdiff1d(np.arange(len(x)), labelled_rows)
    rows, _ = typiclust_select(x[cand], 4, labelled=x[labelled_rows], seed=0)
    assert set(y[cand][rows].tolist()) == {1, 2, 3, 5}  # the four clusters no label covers


def test_typiclust_takes_the_densest_image_of_a_cluster_and_kmeans_the_central_one():
    rng = np.random.default_rng(3)
    core = 0.01 * rng.standard_normal((20, 8))
    outliers = 0.6 * rng.standard_normal((10, 8)) + 0.5  # the same cluster, sparse and off-centre
    x = np.concatenate([core, outliers]).astype(np.float32)
    rows, _ = typiclust_select(x, 1, seed=0)
    assert rows[0] < 20
    t = typicality(x)
    assert rows[0] == int(np.argmax(t))
    ring = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0.05, 0.02]], np.float32)  # 4 around a centre point
    rows, sizes = kmeans_select(ring, 1, seed=0)
    assert rows.tolist() == [4] and sizes.tolist() == [5.0]


@pytest.mark.parametrize("select", [kmeans_select, typiclust_select])
def test_deterministic_per_seed_and_exact_for_duplicates(select):
    x, _ = _blobs(seed=5)
    a, sa = select(x, 5, seed=7)
    b, sb = select(x, 5, seed=7)
    assert a.tolist() == b.tolist() and np.allclose(sa, sb)
    same = np.ones((12, 4), np.float32)  # one distinct point: fewer distinct clusters than k
    rows, scores = select(same, 5, seed=0)
    assert sorted(set(rows.tolist())) == sorted(rows.tolist()) and len(rows) == 5
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("select", [kmeans_select, typiclust_select])
def test_budget_larger_than_the_candidates_is_an_error(select):
    x, _ = _blobs()
    with pytest.raises(ValueError, match="larger than the 131 candidates"):
        select(x, 132)
    assert len(select(x, 0)[0]) == 0
