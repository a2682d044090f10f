"""ANN backends, the ANN diverse-batch selector, its exact k-center reference and the coverage metric."""

from __future__ import annotations

import numpy as np
import pytest

from activepose.errors import ConfigError, EnvironmentProblem
from activepose.sampling.ann import BACKENDS, create_index, require_backend
from activepose.sampling.diversity import coverage, kcenter_greedy, select_diverse, select_neighbour_drop


def clustered(n=2000, dim=32, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 4.0
    spread = rng.uniform(0.3, 1.0, clusters).astype(np.float32)
    lab = rng.integers(0, clusters, n)
    x = centres[lab] + spread[lab, None] * rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(np.float32), lab


def brute_nn(data, queries, k):
    d = np.linalg.norm(queries[:, None, :] - data[None, :, :], axis=2)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, 1)


# ------------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_neighbours_match_brute_force(backend):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((1500, 16)).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    index = create_index(backend, dim=16)
    index.add(data[:700])
    index.add(data[700:])  # ids continue in row order
    index.build()
    idx, dist = index.query(queries, 5)
    assert idx.shape == dist.shape == (200, 5)
    ref_idx, ref_dist = brute_nn(data, queries, 5)
    recall1 = float((idx[:, 0] == ref_idx[:, 0]).mean())
    if backend == "exact":
        assert recall1 == 1.0
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    else:
        assert recall1 >= 0.9, recall1
    ok = idx >= 0  # returned distances are true distances to the returned ids
    true = np.linalg.norm(data[np.where(ok, idx, 0)] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(dist[ok], true[ok], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_faiss_variants(kind):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    data = rng.standard_normal((2000, 8)).astype(np.float32)
    index = create_index("faiss", dim=8, kind=kind, nprobe=16)
    index.add(data)
    idx, _ = index.query(data[:100], 1)  # build() is implicit
    assert (idx[:, 0] == np.arange(100)).mean() >= 0.9


def test_create_index_errors():
    with pytest.raises(ConfigError, match="^unknown ANN backend 'nope'; choose from annoy, exact, faiss$"):
        create_index("nope", dim=4)
    with pytest.raises(ValueError, match="dim"):
        create_index("exact", dim=0)


# ------------------------------------------------------------------------------------------ exact reference


def test_kcenter_greedy_known_1d():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]], dtype=np.float32)
    # mean 3.2 -> farthest is 10; then 0 (10 away); then 3 (3 away from 0, 7 from 10)
    assert kcenter_greedy(x, 3).tolist() == [4, 0, 3]
    # labelled point at 10 acts as a chosen centre
    assert kcenter_greedy(x, 2, labelled=np.array([[10.0]], dtype=np.float32)).tolist() == [0, 3]


def test_kcenter_greedy_known_2d_and_chunking():
    # square corners plus centre: from the centre-ish mean, corners first, then the centre point
    x = np.array([[0, 0], [4, 0], [0, 4], [4, 4], [2, 2]], dtype=np.float32)
    sel = kcenter_greedy(x, 5, chunk=2)
    assert sel[-1] == 4 and sorted(sel.tolist()) == [0, 1, 2, 3, 4]
    y, _ = clustered(500, 8, 5)
    np.testing.assert_array_equal(kcenter_greedy(y, 40, chunk=7), kcenter_greedy(y, 40, chunk=4096))


def test_coverage_known_numbers():
    x = np.array([[0.0], [1.0], [2.0], [4.0]], dtype=np.float32)
    cov = coverage(x, np.array([0]), labelled=np.array([[4.0]], dtype=np.float32))
    assert cov["max"] == pytest.approx(2.0) and cov["mean"] == pytest.approx(0.75)
    assert cov["exact"] and cov["n"] == 4
    cov_ann = coverage(x, np.array([0, 3]), backend="annoy")
    assert cov_ann["max"] == pytest.approx(2.0) and cov_ann["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least one"):
        coverage(x, np.array([], dtype=np.int64))


# ------------------------------------------------------------------------------------------ ANN selector


@pytest.mark.parametrize("fn", [select_diverse, kcenter_greedy])
def test_k_validation(fn):
    x, _ = clustered(100, 4, 3)
    with pytest.raises(ValueError, match=r"k=101.*only 100 candidates"):
        fn(x, 101)
    with pytest.raises(ValueError, match="k must be >= 0"):
        fn(x, -1)
    assert sorted(fn(x, 100).tolist()) == list(range(100))
    assert len(fn(x, 0)) == 0


@pytest.fixture(scope="module")
def small_pool():
    x, lab = clustered()
    ref = kcenter_greedy(x, 50)
    return x, lab, ref, coverage(x, ref)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_select_diverse_close_to_exact_and_covers_clusters(backend, small_pool):
    x, lab, ref, ref_cov = small_pool
    k = 50
    sel = select_diverse(x, k, backend=backend, seed=0)
    assert len(sel) == k and len(np.unique(sel)) == k
    assert sel.min() >= 0 and sel.max() < len(x)
    ann_cov = coverage(x, sel)
    assert ann_cov["mean"] <= 1.15 * ref_cov["mean"], (ann_cov, ref_cov)
    assert set(lab[sel]) == set(lab) and set(lab[ref]) == set(lab)  # every cluster covered by both
    # and much better than random picks
    rand = np.random.default_rng(0).choice(len(x), k, replace=False)
    assert ann_cov["max"] < coverage(x, rand)["max"]


def test_select_diverse_deterministic_per_seed():
    x, _ = clustered(1500, 96, 20)  # dim > sketch dim: PCA + k-means paths run
    a = select_diverse(x, 100, seed=3, dim=16, cell_size=64)
    b = select_diverse(x, 100, seed=3, dim=16, cell_size=64)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100
    c = select_diverse(x, 100, seed=4, dim=16, cell_size=64)
    assert not np.array_equal(a, c)


def test_duplicate_of_labelled_not_picked():
    x, _ = clustered(400, 8, 4, seed=5)
    labelled = x[[10, 20, 30]].copy()
    for backend in BACKENDS:
        sel = select_diverse(x, 8, labelled=labelled, backend=backend)
        assert not {10, 20, 30} & set(sel.tolist()), backend
        assert not {10, 20, 30} & set(kcenter_greedy(x, 8, labelled=labelled).tolist())


def test_selection_moves_away_from_labelled_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [50, 0], [0, 50]], dtype=np.float32)
    lab = np.repeat(np.arange(3), 200)
    x = (centres[lab] + rng.standard_normal((600, 2))).astype(np.float32)
    labelled = (centres[0] + rng.standard_normal((100, 2))).astype(np.float32)  # cluster 0 already labelled
    for fn in (select_diverse, kcenter_greedy):
        sel = fn(x, 2, labelled=labelled)
        assert sorted(lab[sel].tolist()) == [1, 2], fn.__name__
        free = fn(x, 3)  # without the labelled set every cluster gets one
        assert sorted(lab[free].tolist()) == [0, 1, 2], fn.__name__


def test_select_diverse_accepts_memmap(tmp_path):
    x, _ = clustered(1000, 80, 10)
    path = tmp_path / "emb.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(select_diverse(mm, 60, dim=16, chunk=128), select_diverse(x, 60, dim=16))


@pytest.mark.parametrize("n", [2, 3, 9, 40, 80])
def test_few_high_dimensional_rows(n):
    """Fewer rows than the sketch (a small project's candidates in 1,280-d): no singular PCA, exact answer."""
    x, _ = clustered(n, 1280, 3, seed=n)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = max(1, n // 4)
    sel = select_diverse(x, k, dim=64, seed=0)
    assert len(np.unique(sel)) == k and sel.max() < n
    assert coverage(x, sel)["max"] <= 1.5 * coverage(x, kcenter_greedy(x, k))["max"] + 1e-6


@pytest.mark.parametrize("backend,module", [("faiss", "faiss"), ("annoy", "annoy")])
def test_known_backend_without_its_library_is_an_environment_problem(monkeypatch, backend, module):
    import sys

    require_backend(backend)  # installed here
    monkeypatch.setitem(sys.modules, module, None)  # now `import module` raises ImportError
    with pytest.raises(
        EnvironmentProblem, match=rf"^--ann {backend}: the '{module}' library is not installed"
    ):
        require_backend(backend)
    with pytest.raises(EnvironmentProblem, match=rf"^--ann {backend}: "):
        create_index(backend, dim=4)
    require_backend("exact")  # needs nothing but torch


# ------------------------------------------------------------------------------------------ paper-style baseline


def _pairs(n_pairs=4):
    """1-D pool of well separated pairs: 0, 1, 10, 11, 20, 21, ..."""
    return np.array([[10.0 * p + o] for p in range(n_pairs) for o in (0.0, 1.0)], dtype=np.float32)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_neighbour_drop_known_pairs(backend):
    x = _pairs(4)  # N=8, k=4 -> each pick drops ceil(8/4)-1 = 1 neighbour: its partner
    for seed in range(5):
        sel = select_neighbour_drop(x, 4, backend=backend, seed=seed)
        assert sorted((sel // 2).tolist()) == [0, 1, 2, 3], (backend, seed, sel)  # one per pair
    # a labelled point at 0 removes its 2 nearest candidates (the pair 0, 1) before the first pick
    sel = select_neighbour_drop(x, 4, labelled=np.array([[0.0]], dtype=np.float32), backend=backend, seed=1)
    assert sorted((sel[:3] // 2).tolist()) == [1, 2, 3]
    assert len(np.unique(sel)) == 4


def test_neighbour_drop_validation_and_passes():
    x, lab = clustered(300, 6, 5, seed=2)
    with pytest.raises(ValueError, match=r"k=301.*only 300 candidates"):
        select_neighbour_drop(x, 301)
    with pytest.raises(ValueError, match="k must be >= 0"):
        select_neighbour_drop(x, -1)
    with pytest.raises(ValueError, match="neighbours must be >= 0"):
        select_neighbour_drop(x, 5, neighbours=-1)
    assert len(select_neighbour_drop(x, 0)) == 0
    assert sorted(select_neighbour_drop(x, 300).tolist()) == list(range(300))
    # each pick drops the whole pool: every pick starts a new pass, picks stay distinct
    sel = select_neighbour_drop(x, 40, backend="exact", neighbours=10_000)
    assert len(np.unique(sel)) == 40


def test_neighbour_drop_deterministic_and_spread(small_pool):
    x, lab, _, _ = small_pool
    a = select_neighbour_drop(x, 50, seed=3)
    np.testing.assert_array_equal(a, select_neighbour_drop(x, 50, seed=3))
    assert not np.array_equal(a, select_neighbour_drop(x, 50, seed=4))
    assert len(np.unique(a)) == 50 and a.min() >= 0 and a.max() < len(x)
    assert set(lab[a]) == set(lab)  # every cluster gets a pick


def test_footage_like_embeddings_of_low_rank_are_selected_without_a_singular_basis():
    """Frames of a few scenes: 240 rows that span only 12 directions (+ float noise), sketched to 64 dimensions.
    CholeskyQR's Gram matrix is singular there; the basis falls back to QR and the batch is still distinct rows,
    one per scene before any scene gets a second."""
    import torch

    from activepose.sampling.diversity import _orth

    rng = np.random.default_rng(0)
    scenes = rng.standard_normal((12, 1280)).astype(np.float32)
    x = np.repeat(scenes, 20, axis=0) + 1e-7 * rng.standard_normal((240, 1280)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    chosen = select_diverse(x, 12, seed=0, dim=64)
    assert len(set(chosen.tolist())) == 12
    assert sorted({int(i) // 20 for i in chosen}) == list(range(12))
    # the basis itself: orthonormal columns even for dependent ones
    y = torch.from_numpy(np.repeat(rng.standard_normal((50, 3)), [2, 2, 3], axis=1).astype(np.float32))
    q = _orth(y)
    assert torch.allclose(q.T @ q, torch.eye(7), atol=1e-4)
