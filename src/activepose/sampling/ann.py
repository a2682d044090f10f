"""Nearest-neighbour index backends behind one small interface.

Every backend stores float32 vectors (ids are the row order in which they were added) and answers batched
k-nearest-neighbour queries with euclidean distances. ``annoy`` is the paper's choice and the default;
``faiss`` (HNSW graph or IVF-Flat) is the fast batched alternative; ``exact`` is chunked brute force (torch
BLAS) with recall 1, used as the reference and for small problems. The optional libraries are imported
lazily inside their backend so that importing this module never needs them.

    index = create_index("annoy", dim=64, n_trees=16)
    index.add(vectors)              # (N, D) float32
    index.build()
    idx, dist = index.query(queries, k=5)   # (Q, k) int64 ids, (Q, k) float32 euclidean distances

Missing neighbours (an approximate index may return fewer than ``k``) are padded with id -1, distance inf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .. import config
from ..errors import ConfigError, EnvironmentProblem


@runtime_checkable
class AnnIndex(Protocol):
    dim: int

    def add(self, vectors: np.ndarray) -> None: ...

    def build(self) -> None: ...

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


BACKENDS: dict[str, Callable[..., AnnIndex]] = {}


def register_backend(name: str) -> Callable[[Callable[..., AnnIndex]], Callable[..., AnnIndex]]:
    """Class decorator adding an index factory ``factory(dim, **options)`` to :data:`BACKENDS`."""

    def deco(factory: Callable[..., AnnIndex]) -> Callable[..., AnnIndex]:
        BACKENDS[name] = factory
        config.ANN_BACKENDS.add(name)  # settings check names without importing this module
        return factory

    return deco


# Backend -> (module it imports, how to install it). Backends not listed need nothing beyond torch.
BACKEND_LIBRARIES = {"annoy": ("annoy", "pip install annoy"), "faiss": ("faiss", "pip install faiss-cpu")}


def check_backend(backend: str) -> str:
    """Return `backend` if it is a registered ANN backend; raise ConfigError naming the choices."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown ANN backend {backend!r}; choose from {', '.join(sorted(BACKENDS))}")
    return backend


def require_backend(backend: str) -> None:
    """Raise ConfigError for an unknown backend and EnvironmentProblem when its library is not installed."""
    import importlib

    check_backend(backend)
    if backend in BACKEND_LIBRARIES:
        module, install = BACKEND_LIBRARIES[backend]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise EnvironmentProblem(
                f"--ann {backend}: the {module!r} library is not installed ({install}); "
                f"or use --ann exact (no extra library)"
            ) from exc


def create_index(backend: str = "annoy", dim: int = 0, **options) -> AnnIndex:
    """Create an empty index of the named backend for ``dim``-dimensional vectors.

    ConfigError for an unknown backend, EnvironmentProblem when the backend's library is not installed.
    """
    check_backend(backend)
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    return BACKENDS[backend](dim, **options)


def _as_f32(vectors: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {v.shape}")
    return v


def _check_k(k: int, size: int) -> int:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if size == 0:
        raise ValueError("query on an empty index")
    return k


@register_backend("annoy")
class AnnoyBackend:
    """Spotify Annoy forest of random-projection trees (the paper's index).

    ``n_trees`` (default 16): more trees, better recall, slower build. ``search_k``: nodes inspected per
    query; default ``n_trees * max(k, 16) * 4`` (annoy's own ``n_trees * k`` gives poor recall for small k). Build is single-threaded by default (``n_jobs=1``) so the
    forest, and hence every result, is deterministic for a given ``seed``.
    """

    def __init__(
        self, dim: int, n_trees: int = 16, search_k: int | None = None, seed: int = 0, n_jobs: int = 1
    ):
        require_backend("annoy")
        from annoy import AnnoyIndex

        self.dim = dim
        self.n_trees, self.search_k, self.n_jobs = n_trees, search_k, n_jobs
        self._index = AnnoyIndex(dim, "euclidean")
        self._index.set_seed(seed)
        self._n = 0
        self._built = False

    def add(self, vectors: np.ndarray) -> None:
        if self._built:
            raise RuntimeError("annoy indexes cannot grow after build()")
        v = _as_f32(vectors, self.dim)
        add = self._index.add_item
        for i, row in enumerate(v, start=self._n):
            add(i, row)
        self._n += len(v)

    def build(self) -> None:
        self._index.build(self.n_trees, n_jobs=self.n_jobs)
        self._built = True

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._built:
            self.build()
        k = _check_k(k, self._n)
        v = _as_f32(vectors, self.dim)
        idx = np.full((len(v), k), -1, dtype=np.int64)
        dist = np.full((len(v), k), np.inf, dtype=np.float32)
        get = self._index.get_nns_by_vector
        search_k = self.search_k if self.search_k is not None else self.n_trees * max(k, 16) * 4
        for q, row in enumerate(v):
            ids, ds = get(row, k, search_k, True)
            idx[q, : len(ids)] = ids
            dist[q, : len(ds)] = ds
        return idx, dist


@register_backend("faiss")
class FaissBackend:
    """faiss ``kind="hnsw"`` (default; ``M``, ``ef_construction``, ``ef_search``) or ``kind="ivf"``
    (IVF-Flat; ``nlist`` cells, default ~4 sqrt(N), ``nprobe``) or ``kind="flat"`` (exact)."""

    def __init__(
        self,
        dim: int,
        kind: str = "hnsw",
        M: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 8,
        seed: int = 0,
    ):
        require_backend("faiss")
        import faiss

        if kind not in ("hnsw", "ivf", "flat"):
            raise ValueError(f"faiss kind must be 'hnsw', 'ivf' or 'flat', got {kind!r}")
        self._faiss = faiss
        self.dim, self.kind = dim, kind
        self.M, self.ef_construction, self.ef_search = M, ef_construction, ef_search
        self.nlist, self.nprobe, self.seed = nlist, nprobe, seed
        self._parts: list[np.ndarray] = []
        self._index = None

    def add(self, vectors: np.ndarray) -> None:
        if self._index is not None:
            raise RuntimeError("add() after build() is not supported")
        self._parts.append(np.ascontiguousarray(_as_f32(vectors, self.dim)))

    def build(self) -> None:
        faiss = self._faiss
        data = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts = []
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.M)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        elif self.kind == "ivf":
            nlist = self.nlist or max(1, min(len(data) // 39, int(4 * np.sqrt(len(data)))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, nlist)
            index.cp.seed = self.seed
            index.train(data)
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexFlatL2(self.dim)
        index.add(data)
        self._index = index

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            self.build()
        k = _check_k(k, self._index.ntotal)
        v = np.ascontiguousarray(_as_f32(vectors, self.dim))
        d2, idx = self._index.search(v, k)
        dist = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
        dist[idx < 0] = np.inf
        return idx.astype(np.int64), dist


@register_backend("exact")
class ExactBackend:
    """Brute force: ``|q|^2 + |x|^2 - 2 q.x`` in float32 with torch BLAS, in (query x data) chunks of at
    most ``block`` elements so memory stays bounded whatever N and Q are."""

    def __init__(self, dim: int, block: int = 1 << 24):
        self.dim, self.block = dim, block
        self._parts: list[np.ndarray] = []
        self._data: torch.Tensor | None = None

    def add(self, vectors: np.ndarray) -> None:
        self._parts.append(_as_f32(vectors, self.dim))
        self._data = None

    def build(self) -> None:
        data = np.concatenate(self._parts) if len(self._parts) != 1 else self._parts[0]
        self._parts = [data]
        self._data = torch.from_numpy(np.ascontiguousarray(data))
        self._sq = (self._data * self._data).sum(1)

    def query(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:
            self.build()
        data, sq = self._data, self._sq
        n = len(data)
        k = _check_k(k, n)
        kk = min(k, n)
        v = _as_f32(vectors, self.dim)
        idx = np.full((len(v), k), -1, dtype=np.int64)
        dist = np.full((len(v), k), np.inf, dtype=np.float32)
        qstep = max(1, min(len(v), self.block // max(n, 1)))
        with torch.no_grad():
            for s in range(0, len(v), qstep):
                q = torch.from_numpy(np.ascontiguousarray(v[s : s + qstep]))
                d2 = (q * q).sum(1, keepdim=True) + sq[None, :] - 2.0 * (q @ data.T)
                val, ind = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
                idx[s : s + len(q), :kk] = ind.numpy()
                dist[s : s + len(q), :kk] = val.clamp_min_(0).sqrt_().numpy()
        return idx, dist
