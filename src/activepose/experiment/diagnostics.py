"""Per-round diagnostics of a grid cell: why a strategy won or lost on this data.

For cell (strategy, seed, round r) of a grid (`grid.py` adds these to its results.csv rows):

- `test_spearman` / `test_auroc`: how informative the uncertainty of the cell's model is on the first test
  file (`sampling.diagnostics`: the score against the model's per-image error, on at most `DIAGNOSTIC_IMAGES`
  of the images the grid evaluates on). Round r's selection used round r - 1's model: read row r - 1.
- `batch_spearman` / `batch_auroc`: the same for the model that chose round r's batch, on that batch once
  labelled (its labels are known then): did the images it called uncertain turn out to be the ones it got wrong?
- `pass_rate`: the share of candidates the paper's filter called uncertain (strategies that score it);
  `coverage`: the mean embedding distance from a candidate to its nearest chosen or labelled image after the
  choice (lower = the pool better covered); `videos`: the videos the batch's frames come from (footage only).

Each model's and each batch's figures are computed once and kept as JSON beside the project (`exports/`), so a
resumed grid or a second report does not recompute them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json
from ..project.store import Project
from ..workflow.common import load_data, seeded_subset
from ..workflow.models import decoder_for, load

DIAGNOSTIC_IMAGES = 200
COLUMNS = ("test_spearman", "test_auroc", "batch_spearman", "batch_auroc", "pass_rate", "coverage", "videos")


def _at(ucfg, loaded):
    """The uncertainty settings at the model's own input size."""
    import dataclasses

    return dataclasses.replace(ucfg, input_size=loaded.input_size)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _cached(path: Path, compute) -> dict[str, Any]:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable (cut short): computed again
    value = _clean(compute())
    atomic_write_json(path, value, indent=1)
    return value


def cell_diagnostics(
    folder: Path, r: int, model_path: Path, model_id: int, test: Path, eval_opts, selection_cfg, cache: Path,
    device: str,
) -> dict[str, Any]:  # fmt: skip
    """Return the diagnostic columns (module doc) of round `r` of the project in `folder`, whose model after
    the round is `model_path` (id `model_id`)."""
    from ..sampling.diagnostics import uncertainty_diagnostics

    exports = folder / "exports"
    ucfg = selection_cfg.uncertainty
    unc_cache = cache / "uncertainty"

    def on_test() -> dict[str, Any]:
        n = (
            DIAGNOSTIC_IMAGES
            if eval_opts.max_images is None
            else min(DIAGNOSTIC_IMAGES, eval_opts.max_images)
        )
        data = seeded_subset(load_data(test), n, eval_opts.seed)
        loaded = load(model_path, device)
        return uncertainty_diagnostics(loaded.net, data, _at(ucfg, loaded), decoder=decoder_for(loaded.skeleton),
                                       cache=unc_cache)  # fmt: skip

    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    t = _cached(exports / f"diagnostics_model_{model_id}_{test.stem}.json", on_test)
    out["test_spearman"], out["test_auroc"] = t.get("spearman"), t.get("auroc")
    if r < 1:
        return out
    with Project.open(folder, readonly=True) as project:
        info = project.round(r)
        chosen = [i for i, _, _ in info.items]
        labelled = [i for i in chosen if project.image(i).state == "labelled"]
        batch = project.to_coco(labelled)
        videos = project.frames_per_video(chosen)
        earlier = [m for m in project.models() if m.id < model_id]
        previous = project.checkpoint_path(earlier[-1]) if earlier else None
    stats = info.params.get("stats") or {}
    if stats.get("candidates") and stats.get("uncertain") is not None:
        out["pass_rate"] = stats["uncertain"] / stats["candidates"]
    out["coverage"] = (stats.get("coverage") or {}).get("mean")
    out["videos"] = len(videos) if videos else None
    selector = info.params.get("model")
    selector = Path(selector) if selector else previous
    if selector is None or not Path(selector).is_file():
        return out

    def on_batch() -> dict[str, Any]:
        loaded = load(selector, device)
        return uncertainty_diagnostics(loaded.net, batch, _at(ucfg, loaded), decoder=decoder_for(loaded.skeleton),
                                       cache=unc_cache)  # fmt: skip

    b = _cached(exports / f"diagnostics_round_{r}.json", on_batch)
    out["batch_spearman"], out["batch_auroc"] = b.get("spearman"), b.get("auroc")
    return out
