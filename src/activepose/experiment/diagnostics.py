"""Per-round diagnostics of a grid cell: why a strategy won or lost on this data.

For cell (strategy, seed, round r) of a grid (`grid.py` adds these to its results.csv rows):

- `test_spearman` / `test_auroc`: how informative the uncertainty of the cell's model is on the first test
  file (`workflow.diagnostics.model_diagnostics`: the score against the model's per-image error, on at most
  200 of the images the grid evaluates on). Round r's selection used round r - 1's model: read row r - 1.
- `batch_spearman` / `batch_auroc`: the same for the model that chose round r's batch, on that batch once
  labelled (`workflow.diagnostics.batch_diagnostics`, computed when the round was evaluated).
- `pass_rate`: the share of candidates the paper's filter called uncertain (strategies that score it);
  `coverage`: the mean embedding distance from a candidate to its nearest chosen or labelled image after the
  choice (strategies that compute embeddings; lower = the pool better covered); `videos`: the videos the
  batch's frames come from (footage only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..project.store import Project
from ..workflow.diagnostics import batch_diagnostics, model_diagnostics, selection_figures

COLUMNS = ("test_spearman", "test_auroc", "batch_spearman", "batch_auroc", "pass_rate", "coverage", "videos")


def cell_diagnostics(
    folder: Path, r: int, model_path: Path, model_id: int, test: Path, eval_opts, selection_cfg, cache: Path,
    device: str,
) -> dict[str, Any]:  # fmt: skip
    """Return the diagnostic columns (module doc) of round `r` of the project in `folder`, whose model after
    the round is `model_path` (id `model_id`)."""
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    t = model_diagnostics(folder / "exports", model_path, model_id, test, eval_opts.max_images, eval_opts.seed,
                          selection_cfg.uncertainty, device, cache / "uncertainty")  # fmt: skip
    out["test_spearman"], out["test_auroc"] = t.get("spearman"), t.get("auroc")
    if r < 1:
        return out
    with Project.open(folder, readonly=True) as project:
        info = project.round(r)
        videos = project.frames_per_video([i for i, _, _ in info.items])
        b = batch_diagnostics(project, r, device, cache / "uncertainty") or {}
    out.update(selection_figures(info.params))
    out["videos"] = len(videos) if videos else None
    out["batch_spearman"], out["batch_auroc"] = b.get("spearman"), b.get("auroc")
    return out
