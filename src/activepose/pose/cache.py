"""On-disk vector cache (memory-mapped float32 rows + SQLite index), content hashes and prefetching.

Layout of one cache (one directory per *key*, e.g. an extractor's weights or a pose model's identity):

- `vectors.f32`: raw float32 rows of width `dim`, appended in chunks, read through `np.memmap`;
- `index.sqlite`: table `rows(hash TEXT PRIMARY KEY, row INTEGER)` plus `meta(dim, key)`.

Writes append the vectors, fsync them, and only then commit their index rows, so a crash mid-write leaves
at worst unindexed bytes past the last indexed row: readers ignore them and the next append truncates them.
Callers add rows in large chunks (each add costs an fsync). Appends from several processes are serialised by a
file lock on `vectors.f32`; readers need no lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..fileio import file_sha1

T = TypeVar("T")
R = TypeVar("R")

VECTORS = "vectors.f32"
INDEX = "index.sqlite"
# Row file per stored dtype (float16 halves the size of large rows such as cached trunk feature maps).
_VECTOR_FILES = {np.dtype(np.float32): VECTORS, np.dtype(np.float16): "vectors.f16"}


# The content hash of an image file: sha1 of its bytes (see `activepose.fileio.file_sha1`).
image_content_hash = file_sha1


def hash_files(paths: Sequence[str | Path], num_workers: int = 2) -> list[str]:
    """Return `image_content_hash` of every path, in order (hashed by `num_workers` threads)."""
    if num_workers <= 1 or len(paths) < 2:
        return [image_content_hash(p) for p in paths]
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="activepose-hash") as pool:
        return list(pool.map(image_content_hash, paths))


def model_fingerprint(model: torch.nn.Module) -> str:
    """Return a sha1 hex digest of a model's state dict (names, dtypes, shapes and values).

    Identifies a checkpoint's weights whatever file they came from; costs one pass over the weights
    (~10 ms per 10 M float32 parameters). Buffers such as BN statistics are included.
    """
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            t = t.to("cpu").contiguous()
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def safe_key(key: str) -> str:
    """Return `key` usable as one directory name (other characters become '_'; long keys are hashed)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "key"
    if len(s) > 120:
        s = s[:80] + "-" + hashlib.sha1(key.encode()).hexdigest()[:16]
    return s


class VectorCache:
    """Vectors of width `dim` by content hash, in `root / safe_key(key)` (see the module doc).

    `dtype` is the stored type (float32, or float16 for large rows); `lookup` returns that type. A cache
    directory holds one dtype: the key should name it.
    """

    def __init__(self, root: str | Path, key: str, dim: int, dtype: np.dtype | type = np.float32) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in _VECTOR_FILES:
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype}")
        self._file = _VECTOR_FILES[self.dtype]
        self.dir = Path(root) / safe_key(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key, self.dim = key, int(dim)
        self._db = sqlite3.connect(self.dir / INDEX)
        # WAL without a sync per commit: a crash may lose the last commits (their vectors are then ignored
        # and recomputed) but never leaves an index row pointing at vectors that were not written.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS rows (hash TEXT PRIMARY KEY, row INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
            if not meta:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", [("dim", str(dim)), ("key", key)])
            elif int(meta["dim"]) != self.dim or meta["key"] != key:
                raise ValueError(
                    f"{self.dir}: cache holds key {meta['key']!r} dim {meta['dim']}, not {key!r} dim {dim}"
                )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def _indexed_rows(self) -> int:
        (n,) = self._db.execute("SELECT COALESCE(MAX(row) + 1, 0) FROM rows").fetchone()
        return int(n)

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (found (N,) bool, vectors (N, dim) of the cache's dtype; rows not found are zero)."""
        found = np.zeros(len(hashes), bool)
        out = np.zeros((len(hashes), self.dim), self.dtype)
        if not hashes:
            return found, out
        rows: dict[str, int] = {}
        uniq = list(dict.fromkeys(hashes))
        for i in range(0, len(uniq), 500):  # SQLite's default limit on bound parameters is 999
            part = uniq[i : i + 500]
            q = f"SELECT hash, row FROM rows WHERE hash IN ({','.join('?' * len(part))})"
            rows.update(self._db.execute(q, part).fetchall())
        if not rows:
            return found, out
        idx = np.array([rows.get(h, -1) for h in hashes], np.int64)
        found = idx >= 0
        self._read_rows(idx[found], np.flatnonzero(found), out)
        return found, out

    def _read_rows(self, rows: np.ndarray, where: np.ndarray, out: np.ndarray, chunk: int = 8192) -> None:
        """Copy file rows `rows` into `out[where]`, reading runs of consecutive rows in file order, `chunk` rows
        at a time: memory beyond `out` stays one chunk (a memory map's fancy index would hold a second copy of
        every row, and its pages, at once: 15 GB for a million 1,280-d rows instead of 5)."""
        if not len(rows):
            return
        order = np.argsort(rows, kind="stable")
        rows, where = rows[order], where[order]
        row_bytes = self.dim * self.dtype.itemsize
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with open(self.dir / self._file, "rb", buffering=0) as fh:
            for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
                for s in range(int(start), int(end), chunk):
                    e = min(int(end), s + chunk)
                    buf = np.empty((e - s, self.dim), self.dtype)
                    fh.seek(int(rows[s]) * row_bytes)
                    got = fh.readinto(memoryview(buf).cast("B"))
                    if got != buf.nbytes:
                        raise OSError(f"{self.dir / self._file}: rows {rows[s]}..{rows[e - 1]} are cut short")
                    out[where[s:e]] = buf

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Append `vectors` (N, dim) under `hashes`; hashes already present (or repeated) are skipped."""
        vectors = np.ascontiguousarray(vectors, dtype=self.dtype).reshape(-1, self.dim)
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors")
        if not len(hashes):
            return
        with open(self.dir / self._file, "ab") as fh:
            _lock_file(fh)  # one appender at a time across processes; released when the file closes
            present, _ = self.lookup(list(hashes))  # under the lock: rows another process just added count
            keep, seen = [], set()
            for i, h in enumerate(hashes):
                if not present[i] and h not in seen:
                    keep.append(i)
                    seen.add(h)
            if not keep:
                return
            n = self._indexed_rows()
            row_bytes = self.dim * self.dtype.itemsize
            fh.truncate(n * row_bytes)  # drop bytes of a write that crashed before its index commit
            fh.seek(n * row_bytes)
            fh.write(vectors[keep].tobytes())
            fh.flush()
            os.fsync(fh.fileno())
            with self._db:
                self._db.executemany(
                    "INSERT INTO rows VALUES (?, ?)", [(hashes[i], n + j) for j, i in enumerate(keep)]
                )


def _lock_file(fh) -> None:
    """Block until this process holds an exclusive lock on the open file (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def prefetch_map(
    fn: Callable[[T], R], items: Iterable[T], num_workers: int = 2, prefetch: int = 16
) -> Iterator[R]:
    """Yield fn(item) for every item, in order, computed by `num_workers` threads at most `prefetch` ahead.

    The generic form of `activepose.pose.predict.iter_tta_samples` (which is tied to COCO frames and TTAs): image
    decoding and resizing (OpenCV releases the GIL) overlap the caller's forward passes. 0 workers: inline.
    """
    if num_workers <= 0:
        for item in items:
            yield fn(item)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="activepose-read") as pool:
        pending: deque[Future] = deque(pool.submit(fn, x) for x in islice(it, max(1, prefetch)))
        try:
            while pending:
                fut = pending.popleft()
                nxt = next(it, _END)
                if nxt is not _END:
                    pending.append(pool.submit(fn, nxt))
                yield fut.result()
        finally:
            for fut in pending:  # stopped early or failed: do not read the rest
                fut.cancel()


_END = object()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of `size` consecutive items (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
