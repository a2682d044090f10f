"""The grid folder DIR: its files' names, its projects' names, and what the report reads there besides results.csv.

`grid.py` writes the folder, the report (`outputs.py`) reads it; both name its parts from here, so neither
imports the other for a path. DIR holds `grid.json` (the settings), `results.csv` (see `results.py`),
`cache/`, `projects/<strategy>-seed<s>/` (with the round-1 selection montage in `exports/round_1/chosen.png`)
and the report's files (`plots/<test set>__<metric>__<x-axis>.png`, CSV tables, `report.html`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GRID_FILE, RESULTS_FILE, CACHE, PROJECTS = "grid.json", "results.csv", "cache", "projects"
_SEED = "-seed"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def project_name(strategy: str, seed: int) -> str:
    return f"{strategy}{_SEED}{seed}"


def parse_project_name(name: str) -> tuple[str, int] | None:
    """(strategy, seed) of a project folder named by `project_name`; None for any other name."""
    strategy, sep, seed = name.rpartition(_SEED)
    return (strategy, int(seed)) if sep and seed.isdigit() else None


def project_folders(out_dir: str | Path) -> list[tuple[str, int, Path]]:
    """(strategy, seed, folder) of every project folder of the grid in `out_dir`, in name order."""
    found = []
    for folder in sorted((Path(out_dir) / PROJECTS).glob(f"*{_SEED}*")):
        parsed = parse_project_name(folder.name)
        if parsed is not None:
            found.append((*parsed, folder))
    return found


def plot_name(test_set: str, metric: str, xaxis: str) -> str:
    """The file name, under DIR/plots, of one learning-curve figure."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_set).strip("._") or "x"
    return f"{slug}__{metric}__{xaxis}.png"


# --- grid.json -----------------------------------------------------------------------------------------------
def grid_settings(grid: dict[str, Any]) -> dict[str, Any]:
    """The grid's settings as one flat mapping: the keys of grid["config"] (how `activepose simulate`
    nests them) followed by the other top-level keys; a flat grid.json is returned as it is."""
    config = grid.get("config")
    if not isinstance(config, dict):
        return dict(grid)
    return {**config, **{k: v for k, v in grid.items() if k != "config" and k not in config}}


def load_grid(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """Return (grid.json's settings, see `grid_settings`, None), or ({}, why) when absent or unreadable."""
    path = Path(path)
    if not path.exists():
        return {}, "grid.json not found"
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, f"grid.json unreadable: {exc}"
    if not isinstance(grid, dict):
        return {}, "grid.json is not a JSON object"
    return grid_settings(grid), None


# --- the round-1 montages ------------------------------------------------------------------------------------
def find_montage(
    out_dir: str | Path, strategy: str, seeds: Sequence[int] = ()
) -> tuple[int | str, Path] | None:
    """(seed, path) of the round-1 `chosen.png` of the first seed of `strategy` that has one."""
    projects = Path(out_dir) / PROJECTS
    for seed in sorted(seeds):
        path = projects / project_name(strategy, seed) / "exports" / "round_1" / "chosen.png"
        if _is_png(path):
            return seed, path
    found = []  # seeds not in results.csv yet (a grid still running)
    for path in projects.glob(f"{glob_escape(strategy)}{_SEED}*/exports/round_1/chosen.png"):
        tail = path.parents[2].name[len(strategy) + len(_SEED) :]
        if _is_png(path):
            found.append((int(tail) if tail.isdigit() else tail, path))
    found.sort(
        key=lambda sp: (not isinstance(sp[0], int), sp[0] if isinstance(sp[0], int) else 0, str(sp[0]))
    )
    return found[0] if found else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", text)


def _is_png(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(8) == _PNG_MAGIC
    except OSError:
        return False
