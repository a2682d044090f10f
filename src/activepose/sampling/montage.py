"""Image grids for a selection: chosen samples among the pool (paper Fig. 2b), low vs high activation (Fig. 2a)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import read_image
from ..pose.coco import CocoKeypoints
from ..pose.data import letterbox


def _tile(
    image: np.ndarray, size: int, colour: bool, border: tuple[int, int, int] | None, caption: str = ""
) -> np.ndarray:
    import cv2

    tile, _ = letterbox(image, size)
    if not colour:
        gray = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)
        tile = np.repeat(gray[:, :, None], 3, axis=2) // 2 + 64  # faded, so the chosen ones stand out
    if border is not None:
        cv2.rectangle(tile, (1, 1), (size - 2, size - 2), border, 3)
    if caption:
        cv2.putText(tile, caption, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            tile, caption, (4, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA
        )
    return tile


def _grid(tiles: list[np.ndarray], cols: int, size: int) -> np.ndarray:
    rows = max(1, -(-len(tiles) // cols))
    out = np.full((rows * size, cols * size, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * size : (r + 1) * size, c * size : (c + 1) * size] = t
    return out


def _write(path: Path, image: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the montage")
    return path


def selection_montage(
    pool: CocoKeypoints, candidate_ids: list[int], chosen_ids: list[int], path: str | Path,
    max_tiles: int = 64, cols: int = 8, size: int = 128, seed: int = 0,
) -> Path:  # fmt: skip
    """Return `path` after drawing a pool sample with the chosen images in colour, the rest faded (Fig. 2b)."""
    rng = np.random.default_rng(seed)
    chosen = list(chosen_ids)[: max_tiles // 2]
    others = [i for i in candidate_ids if i not in set(chosen_ids)]
    n_other = min(len(others), max_tiles - len(chosen))
    shown = (
        chosen + [others[j] for j in rng.choice(len(others), n_other, replace=False)] if n_other else chosen
    )
    order = rng.permutation(len(shown))
    keep = set(chosen)
    tiles = [
        _tile(
            read_image(pool.image_path(shown[j])),
            size,
            shown[j] in keep,
            (40, 200, 40) if shown[j] in keep else None,
        )
        for j in order
    ]
    return _write(Path(path), _grid(tiles, cols, size))


def activation_montage(
    pool: CocoKeypoints, image_ids: np.ndarray, peaks: np.ndarray, th_hm: float, path: str | Path,
    per_row: int = 6, size: int = 128,
) -> Path:  # fmt: skip
    """Return `path` after drawing the lowest-activation images (top row) above the highest (Fig. 2a).

    Each tile's caption: how many keypoint heatmaps peak at >= th_hm, and the mean peak activation.
    """
    confident = (peaks >= th_hm).sum(1)
    strength = np.sort(peaks, axis=1)[:, ::-1].mean(1)
    order = np.lexsort((strength, confident))  # fewest confident keypoints first, then weakest peaks
    low, high = order[:per_row], order[::-1][:per_row]
    k = peaks.shape[1]
    tiles = []
    for row, colour in ((low, (220, 60, 60)), (high, (40, 200, 40))):
        for j in row:
            caption = f"{int(confident[j])}/{k} >= {th_hm:g}  mean {strength[j]:.2f}"
            tiles.append(_tile(read_image(pool.image_path(int(image_ids[j]))), size, True, colour, caption))
        tiles += [np.full((size, size, 3), 255, np.uint8)] * (per_row - len(row))
    return _write(Path(path), _grid(tiles, per_row, size))
