"""Multi-person parsing: per-limb bipartite matching and OpenPose's "subset" merge, for any skeleton.

Works on flat arrays of peaks (global ids 0..P-1 with a keypoint channel and a score) and of candidate
connections (limb, peak a, peak b, score). Skeletons may contain cycles or redundant limbs (coco17's
shoulder/hip loop and face triangle, coco18's ear-shoulder links): a connection whose two peaks already
belong to the same person only adds its score, and one that would put two different peaks into the same
keypoint slot of a person is ignored.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

LOG = logging.getLogger(__name__)


def greedy_match(limb: np.ndarray, ia: np.ndarray, ib: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the connections kept by greedy bipartite matching per limb.

    OpenPose's rule: within each limb (and image: peak ids are global, so images never mix), take the
    candidates by score descending and keep one if neither its a-peak nor its b-peak is used yet by that
    limb. Computed without a per-candidate loop: each round keeps every candidate that is the best
    remaining one for both its a-peak and its b-peak, then drops the candidates sharing a peak with a kept
    one. With ties broken by a stable order this gives exactly the sequential greedy result (a candidate
    that is best for both its ends is never blocked by a higher one), in a few rounds.
    """
    m = len(score)
    keep = np.zeros(m, bool)
    if not m:
        return keep
    order = np.argsort(-score, kind="stable")
    n_peaks = int(max(ia.max(), ib.max())) + 1
    ka = (limb * n_peaks + ia)[order]
    kb = (limb * n_peaks + ib)[order]
    alive = np.ones(m, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        # np.unique's return_index is the first occurrence, i.e. the best-scored alive candidate per key.
        best_a = np.zeros(m, bool)
        best_a[idx[np.unique(ka[idx], return_index=True)[1]]] = True
        best_b = np.zeros(m, bool)
        best_b[idx[np.unique(kb[idx], return_index=True)[1]]] = True
        won = best_a & best_b & alive
        keep[order[won]] = True
        alive &= ~(np.isin(ka, ka[won]) | np.isin(kb, kb[won]))
    return keep


def limb_order(num_keypoints: int, limbs: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> np.ndarray:
    """Return limb indices ordered from the centre of the skeleton graph outwards (breadth first).

    People then grow from the torso out, so most connections attach to an existing person through a part
    already placed and merges of fragments (the riskiest step) are rare. The root of each connected
    component is its graph centre (smallest eccentricity, lowest index on ties); limbs are sorted by the
    depth of their shallower end, then by index.
    """
    adj: list[list[int]] = [[] for _ in range(num_keypoints)]
    for a, b in limbs:
        adj[a].append(b)
        adj[b].append(a)

    def bfs(src: int) -> dict[int, int]:
        dist = {src: 0}
        queue = deque([src])
        while queue:
            u = queue.popleft()
            for v in adj[u]:
                if v not in dist:
                    dist[v] = dist[u] + 1
                    queue.append(v)
        return dist

    depth = np.zeros(num_keypoints, np.int64)
    seen: set[int] = set()
    for k in range(num_keypoints):
        if k in seen:
            continue
        comp = list(bfs(k))
        seen.update(comp)
        root = min(comp, key=lambda u: (max(bfs(u).values()), u))
        for u, d in bfs(root).items():
            depth[u] = d
    keys = [(min(depth[a], depth[b]), max(depth[a], depth[b]), i) for i, (a, b) in enumerate(limbs)]
    return np.asarray([i for *_, i in sorted(keys)], np.int64)


def assemble_people(
    num_keypoints: int,
    limbs: np.ndarray,
    peak_channel: np.ndarray,
    peak_score: np.ndarray,
    conn_limb: np.ndarray,
    conn_a: np.ndarray,
    conn_b: np.ndarray,
    conn_score: np.ndarray,
    min_parts: int,
    min_person_score: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (parts (N, K) peak ids or -1, scores (N,)) of the people built from one image's connections.

    OpenPose's subset merge, in the given connection order (process limbs centre-out, see `limb_order`).
    For a connection (a, b, s) of limb (ka, kb):
    - neither peak in a person: start a person {a, b};
    - one peak in a person whose other slot is free: add the other peak; if the slot holds a different
      peak the connection is ignored;
    - both in the same person (a redundant limb or a cycle): add s to its score;
    - in two different people: merge them if no keypoint slot is filled in both, else ignore.
    A person's total = sum of its parts' peak scores + sum of its accepted connection scores (merges add
    both totals plus s). Person score = total / number of parts; a person is kept when
    parts >= min(min_parts, K) and score >= min_person_score. When min(min_parts, K) <= 1, peaks left out of
    every person become one-part people (score = peak score), so single-keypoint skeletons work.
    """
    k = num_keypoints
    parts: list[list[int]] = []
    total: list[float] = []
    count: list[int] = []
    owner: dict[int, int] = {}
    for li, a, b, s in zip(
        conn_limb.tolist(), conn_a.tolist(), conn_b.tolist(), conn_score.tolist(), strict=True
    ):
        ka, kb = int(limbs[li][0]), int(limbs[li][1])
        ja, jb = owner.get(a), owner.get(b)
        if ja is None and jb is None:
            row = [-1] * k
            row[ka], row[kb] = a, b
            owner[a] = owner[b] = len(parts)
            parts.append(row)
            total.append(float(peak_score[a] + peak_score[b]) + s)
            count.append(2)
        elif jb is None or ja is None:
            j, new, slot = (ja, b, kb) if jb is None else (jb, a, ka)
            if parts[j][slot] == -1:
                parts[j][slot] = new
                owner[new] = j
                total[j] += float(peak_score[new]) + s
                count[j] += 1
        elif ja == jb:
            total[ja] += s
        else:
            pa_, pb_ = parts[ja], parts[jb]
            if all(x == -1 or y == -1 for x, y in zip(pa_, pb_, strict=True)):
                for slot, p in enumerate(pb_):
                    if p != -1:
                        pa_[slot] = p
                        owner[p] = ja
                total[ja] += total[jb] + s
                count[ja] += count[jb]
                count[jb] = 0  # dead
    need = max(1, min(int(min_parts), k))
    rows, scores = [], []
    for row, tot, n in zip(parts, total, count, strict=True):
        if n and n >= need and tot / n >= min_person_score:
            rows.append(row)
            scores.append(tot / n)
    if need <= 1:
        for p in range(len(peak_channel)):
            if p not in owner and peak_score[p] >= min_person_score:
                row = [-1] * k
                row[int(peak_channel[p])] = p
                rows.append(row)
                scores.append(float(peak_score[p]))
    if not rows:
        return np.zeros((0, k), np.int64), np.zeros(0, np.float32)
    return np.asarray(rows, np.int64), np.asarray(scores, np.float32)
