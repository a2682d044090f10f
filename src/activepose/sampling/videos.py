"""Video-aware selection: spread a batch across videos and keep near-duplicate frames out, for any strategy.

Frames of one video repeat each other; a batch that takes ten frames of one camera and none of another wastes
labels. With `SelectionConfig.spread_videos`, `select_batch` asks the strategy for a longer preference list
(`PREFERENCE_FACTOR` x budget, best first) and `spread_over_videos` takes the batch from it level by level:
a frame is taken only from a video with the fewest frames so far (labelled + chosen), so no video gets a second
frame of the batch while another (with no more labels) has none, and within a level the strategy's order
decides. A video the preference list does not reach gets a seeded random frame of its own at its level. A
frame closer than `min_frame_distance` (L2 between normalised embeddings) to a labelled or chosen frame of
the same video is a near-duplicate and skipped while other frames are left.

An image's video is its COCO `images[].video` (the project store keeps it) or, with `video_pattern`, the first
group of that regular expression searched in its file name (e.g. `frames/([^/]+)/` for
`frames/<video>/frame_000123.jpg`); an image with neither is a video of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..pose.coco import CocoKeypoints

PREFERENCE_FACTOR = 4


def video_names(data: CocoKeypoints, ids: Sequence[int], pattern: str | None = None) -> list[str]:
    """Return the video of each image (see the module doc); an image with none is named `image:<id>`."""
    rx = re.compile(pattern) if pattern else None
    out = []
    for image_id in ids:
        f = data.frame(image_id)
        name = f.video
        if name is None and rx is not None:
            m = rx.search(f.file_name)
            name = (m.group(1) if m.groups() else m.group(0)) if m else None
        out.append(name if name is not None else f"image:{image_id}")
    return out


def spread_over_videos(
    preference: Sequence[int],
    videos: Sequence[str],
    budget: int,
    *,
    labelled_videos: Sequence[str] = (),
    emb: np.ndarray | None = None,
    labelled_emb: np.ndarray | None = None,
    min_distance: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Return (`budget` candidate rows, stats) taken from `preference` (rows, best first) level by level.

    `videos[r]` is candidate r's video; `labelled_videos[j]` the video of labelled image j (row j of
    `labelled_emb`). Near-duplicates need `emb` (candidates) and `min_distance` > 0. Stats: frames chosen per
    video, near-duplicates skipped, and how many came from outside the preference list.
    """
    n = len(videos)
    if budget > n:
        raise ValueError(f"budget {budget} is larger than the {n} candidates")
    count: dict[str, int] = {}
    for v in labelled_videos:
        count[v] = count.get(v, 0) + 1
    by_video: dict[str, list[int]] = {}
    for r, v in enumerate(videos):
        by_video.setdefault(v, []).append(r)
        count.setdefault(v, 0)
    seen_emb: dict[str, list[np.ndarray]] = {}
    dedupe = emb is not None and min_distance > 0
    if dedupe and labelled_emb is not None:
        for v, e in zip(labelled_videos, labelled_emb, strict=True):
            seen_emb.setdefault(v, []).append(e)
    rank = np.full(n, n, np.int64)  # position in the preference list (n: not in it)
    pref = [int(r) for r in preference]
    rank[pref] = np.arange(len(pref))
    fallback = np.random.default_rng([seed, 11]).permutation(n)  # for videos the list does not reach
    order = np.concatenate([pref, [r for r in fallback if rank[r] == n]]).astype(np.int64)
    taken = np.zeros(n, bool)
    left = {v: len(rows) for v, rows in by_video.items()}
    chosen: list[int] = []

    duplicate = np.zeros(n, bool)  # once a near-duplicate, always one (frames are only ever added)
    checked = np.zeros(n, np.int64)  # how many of its video's seen frames row r was compared with

    def near_duplicate(r: int) -> bool:
        if not dedupe or duplicate[r]:
            return bool(duplicate[r])
        seen = seen_emb.get(videos[r], [])
        if checked[r] < len(seen):  # only the frames seen since the last look
            d = np.linalg.norm(np.stack(seen[checked[r] :]) - emb[r], axis=1)
            duplicate[r] = bool(d.min() < min_distance)
            checked[r] = len(seen)
        return bool(duplicate[r])

    def take(r: int) -> None:
        v = videos[r]
        taken[r] = True
        chosen.append(r)
        count[v] += 1
        left[v] -= 1
        if dedupe:
            seen_emb.setdefault(v, []).append(emb[r])

    strict = True  # near-duplicates are skipped until only they are left
    blocked: set[str] = set()  # videos whose frames left are all near-duplicates (while strict)
    skipped: set[int] = set()
    while len(chosen) < budget:
        open_videos = [v for v in left if left[v] > 0 and v not in blocked]
        if not open_videos:  # only near-duplicates are left: take them, spread the same way
            if not strict:
                raise AssertionError("spread_over_videos: no frame left")  # budget <= n makes this impossible
            strict, blocked = False, set()
            continue
        level = min(count[v] for v in open_videos)
        pending = {v for v in open_videos if count[v] == level}
        for r in order:
            if len(chosen) == budget or not pending:
                break
            v = videos[r]
            if taken[r] or v not in pending:
                continue
            if strict and near_duplicate(int(r)):
                skipped.add(int(r))
                continue
            take(int(r))
            pending.discard(v)
        blocked |= pending  # at this level and nothing taken: every frame of theirs left is a near-duplicate
    rows = np.array(chosen, np.int64)
    per_video: dict[str, int] = {}
    for r in rows:
        per_video[videos[r]] = per_video.get(videos[r], 0) + 1
    stats = {
        "videos": dict(sorted(per_video.items(), key=lambda kv: (-kv[1], kv[0]))),
        "near_duplicates_skipped": len(skipped - set(chosen)),
        "outside_preference": int((rank[rows] == n).sum()),
    }
    return rows, stats
