"""Is the uncertainty informative here? Per round, measured where labels are known (`sampling.diagnostics`).

- `batch_diagnostics`: the model that chose round r's batch, on that batch once labelled: the AUROC / Spearman
  of its uncertainty score against its per-image error there, and the filter's pass rate. Computed when the
  round is evaluated (`rounds.evaluate_round`), kept as `exports/diagnostics_v2_round_<r>.json`; `status` and the
  simulation report read it.
- `model_diagnostics`: the same for a model on (at most `DIAGNOSTIC_IMAGES` of) a labelled test file, kept as
  `exports/diagnostics_v2_model_<id>_<test stem>_n<images>_s<seed>_t<thHM>-<thKP>.json` (v2: the AUROC's worse
  half includes ties at the largest error).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import UncertaintyConfig
from ..fileio import atomic_write_json
from .common import load_data, seeded_subset
from .models import decoder_for, load

DIAGNOSTIC_IMAGES = 200


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON at `path`, or `compute()` written there (NaN as null) when it is missing or unreadable."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # cut short: computed again
    value = _clean(compute())
    atomic_write_json(path, value, indent=1)
    return value


def _measure(
    model_path: Path, data, ucfg: UncertaintyConfig, device: str, cache: Path | None
) -> dict[str, Any]:
    from ..sampling.diagnostics import uncertainty_diagnostics

    loaded = load(model_path, device)
    ucfg = dataclasses.replace(ucfg, input_size=loaded.input_size)
    return uncertainty_diagnostics(loaded.net, data, ucfg, decoder=decoder_for(loaded.skeleton), cache=cache)


def batch_diagnostics(
    project, r: int, device: str = "auto", cache: Path | None = None
) -> dict[str, Any] | None:
    """Diagnostics of round `r`'s batch (module doc), computed once; None when there is nothing to measure
    (no model chose it, its file is gone, or none of its images is labelled)."""
    info = project.round(r)
    selector = info.params.get("model")
    if not selector or not Path(selector).is_file():
        return None
    labelled = [i for i, _, _ in info.items if project.image(i).state == "labelled"]
    if not labelled:
        return None
    ucfg = UncertaintyConfig(
        th_hm=info.params.get("th_hm", UncertaintyConfig.th_hm), th_kp=info.params.get("th_kp")
    )
    path = project.folder / "exports" / f"diagnostics_v2_round_{r}.json"
    cache = cache if cache is not None else project.folder / "caches" / "uncertainty"
    return cached(path, lambda: _measure(Path(selector), project.to_coco(labelled), ucfg, device, cache))


def model_diagnostics(
    exports: Path, model_path: Path, model_id: int, test: Path, max_images: int | None, seed: int,
    ucfg: UncertaintyConfig, device: str = "auto", cache: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Diagnostics of a model on at most DIAGNOSTIC_IMAGES of `test` (the seeded subset evaluation draws)."""
    n = DIAGNOSTIC_IMAGES if max_images is None else min(DIAGNOSTIC_IMAGES, max_images)

    def compute() -> dict[str, Any]:
        return _measure(model_path, seeded_subset(load_data(test), n, seed), ucfg, device, cache)

    key = f"{model_id}_{test.stem}_n{n}_s{seed}_t{ucfg.th_hm:g}-{ucfg.th_kp}"  # what the figures depend on
    return cached(exports / f"diagnostics_v2_model_{key}.json", compute)


def selection_figures(params: dict[str, Any]) -> dict[str, Any]:
    """The filter's pass rate and the batch's coverage from a round's stored selection stats (None: not measured)."""
    stats = params.get("stats") or {}
    cand, unc = stats.get("candidates"), stats.get("uncertain")
    return {
        "pass_rate": unc / cand if cand and unc is not None else None,
        "coverage": (stats.get("coverage") or {}).get("mean"),
    }
