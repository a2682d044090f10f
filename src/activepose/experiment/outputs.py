"""`write_report`: the simulation report of a grid folder DIR, in separate steps (as pycocotools' COCOeval).

1. read: `results.csv` (`results.load_results`), `grid.json` (`layout.load_grid`), what each strategy chose
   (`choices.round_choices`, from the projects) and the round-1 montages (`layout.find_montage`);
2. compute: `stats.report_stats` (curves, intervals, label efficiency, paired differences) and
   `choices.choices_table`;
3. render: the page and the figures (`report.render_report`), the CSV tables (here);
4. write: `write_files`, the one function that writes, each file atomically, `report.html` last.

What is written in DIR:

- `plots/*.png`: the figures, see `report.py`;
- `efficiency.csv`: per test set and strategy (clean images), the labels and annotation minutes needed to
  reach the reference strategy's final mean accuracy, the normalised area under the mean learning curve and
  the final accuracy with its interval;
- `paired.csv`: per round, the mean over seeds of the paired (same seed) difference strategy - reference,
  with its 95 % t-interval and whether that interval excludes 0;
- `choices.csv` (when the projects hold chosen rounds): one row per (strategy, seed, round), see `choices.py`;
- `report.html`: all of it in one self-contained page.

Everything tolerates a grid still running (strategies with fewer rounds or seeds), empty metric cells (NaN),
a single seed (no interval) and a missing reference strategy (reference-relative parts are skipped, and the
page says so). pandas is deliberately not used.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .choices import RoundChoice, choices_table, round_choices
from .layout import GRID_FILE, RESULTS_FILE, find_montage, load_grid
from .report import Montage, render_report
from .results import Results, load_results
from .stats import EfficiencyRow, PairedRow, report_stats

EFFICIENCY_COLUMNS = (
    "test_set", "tta", "metric", "strategy", "n_seeds", "final_round", "final_images", "final_minutes",
    "final_mean", "final_half_width", "auc", "reference", "reference_final_mean", "images_to_reach",
    "minutes_to_reach", "reached", "over_static_mean", "over_static_half_width",
)  # fmt: skip
PAIRED_COLUMNS = (
    "test_set", "tta", "metric", "strategy", "reference", "round", "labelled_images", "n_pairs",
    "mean_difference", "half_width", "low", "high", "excludes_zero",
)  # fmt: skip


def write_report(out_dir: str | Path, reference: str = "random", results: Results | None = None) -> Path:
    """Read DIR/results.csv (+ grid.json, the projects, projects/*/exports/round_1/chosen.png) and write
    DIR/plots/*.png, DIR/efficiency.csv, DIR/paired.csv, DIR/choices.csv and the self-contained
    DIR/report.html; return the page's path. `results`: DIR/results.csv already loaded (it is not read again).

    Raises FileNotFoundError when results.csv does not exist.
    """
    out = Path(out_dir)
    if results is None:
        results_path = out / RESULTS_FILE
        if not results_path.exists():
            raise FileNotFoundError(f"no results to report on: {results_path} does not exist")
        results = load_results(results_path)
    grid = load_grid(out / GRID_FILE)
    stats = report_stats(results, grid[0], reference)
    choices, why = _read_choices(out)
    montages = {s: _read_montage(out, s, results.seeds(s)) for s in stats.strategies}
    files = {
        "efficiency.csv": csv_bytes(EFFICIENCY_COLUMNS, (_efficiency_record(r) for r in stats.efficiency)),
        "paired.csv": csv_bytes(PAIRED_COLUMNS, (_paired_record(r) for r in stats.paired)),
        **({"choices.csv": choices_csv(choices)} if choices else {}),
        **render_report(out.resolve(), results, stats, grid, montages, (choices_table(choices), why)),
    }
    return write_files(out, files)["report.html"]


def write_files(out_dir: Path, files: Mapping[str, bytes]) -> dict[str, Path]:
    """Write every file (its name relative to `out_dir`) atomically, in order; return their paths."""
    return {name: atomic_write_bytes(out_dir / name, data) for name, data in files.items()}


# --- reading the projects ------------------------------------------------------------------------------------
def _read_choices(out: Path) -> tuple[list[RoundChoice], str | None]:
    """(what each strategy chose, None), or ([], why) when a project is unreadable."""
    try:
        return round_choices(out), None
    except Exception as exc:  # noqa: BLE001 - a report must not fail on one unreadable project
        return [], str(exc)


def _read_montage(out: Path, strategy: str, seeds: Sequence[int]) -> Montage:
    found = find_montage(out, strategy, seeds)
    if found is None:
        return None
    seed, path = found
    try:
        return seed, path.read_bytes()
    except OSError as exc:
        return str(exc)


# --- the CSV tables ------------------------------------------------------------------------------------------
def csv_bytes(header: Sequence[str], records: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    return buf.getvalue().encode("utf-8")


def _csv_num(v: float | int | None) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v)) if math.isfinite(v) else ""


def _yes_no(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")


def _efficiency_record(r: EfficiencyRow) -> list[str]:
    reached = None if r.reference is None else r.images_to_reach is not None
    return [
        r.test_set, r.tta, r.metric, r.strategy, _csv_num(r.n_seeds), _csv_num(r.final_round),
        _csv_num(r.final_images), _csv_num(r.final_minutes), _csv_num(r.final.mean),
        _csv_num(r.final.half_width), _csv_num(r.auc), r.reference or "", _csv_num(r.target),
        _csv_num(r.images_to_reach), _csv_num(r.minutes_to_reach), _yes_no(reached),
        _csv_num(r.over_static.mean if r.over_static else None),
        _csv_num(r.over_static.half_width if r.over_static else None),
    ]  # fmt: skip


def _paired_record(r: PairedRow) -> list[str]:
    return [
        r.test_set, r.tta, r.metric, r.strategy, r.reference, _csv_num(r.round), _csv_num(r.images),
        _csv_num(r.diff.n), _csv_num(r.diff.mean), _csv_num(r.diff.half_width), _csv_num(r.diff.low),
        _csv_num(r.diff.high), _yes_no(r.excludes_zero),
    ]  # fmt: skip


def choices_csv(choices: Sequence[RoundChoice]) -> bytes:
    """One row per (strategy, seed, round) with every RoundChoice field and the pass rate."""
    names = [f.name for f in fields(RoundChoice)]

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    records = ([fmt(asdict(c)[n]) for n in names] + [fmt(c.pass_rate)] for c in choices)
    return csv_bytes([*names, "uncertain_pass_rate"], records)
