"""The simulation report: learning curves, label efficiency and paired differences over seeds.

`activepose simulate` writes, in an output folder DIR, `results.csv` (one row per strategy, seed, round,
test set and test-time augmentation), `grid.json` and per-(strategy, seed) projects with the round-1
selection montage. `write_report(DIR)` turns those into

- `DIR/plots/*.png`: the paper's Figure 3 A-F (mean learning curve per strategy with a 95 % Student-t
  band over seeds, one subplot per TTA) against labelled images and against annotation minutes, for the
  person count accuracy and PCK, one figure per (test set, x-axis, metric);
- `DIR/efficiency.csv`: per test set and strategy (clean images), the labels and annotation minutes
  needed to reach the reference strategy's final mean accuracy, the normalised area under the mean
  learning curve and the final accuracy with its interval;
- `DIR/paired.csv`: per round, the mean over seeds of the paired (same seed) difference strategy -
  reference, with its 95 % t-interval and whether that interval excludes 0;
- `DIR/report.html`: all of it in one self-contained page (images embedded as base64, inline CSS).

Everything here tolerates a grid still running (strategies with fewer rounds or seeds), empty metric
cells (NaN), a single seed (no interval) and a missing reference strategy (reference-relative parts are
skipped, and the page says so). pandas is deliberately not used.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, atomic_write_bytes

COLUMNS = (
    "strategy", "seed", "round", "labelled_images", "labelled_people", "annotation_seconds",
    "selection_seconds", "training_seconds", "test_set", "tta", "count_acc", "count_exact", "AP", "PCK",
)  # fmt: skip
KEY_COLUMNS = ("strategy", "seed", "round", "test_set", "tta")
NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in KEY_COLUMNS)
METRIC_COLUMNS = ("count_acc", "count_exact", "AP", "PCK")
TTA_ORDER = ("clean", "blur", "bright", "dark", "zoom_in", "zoom_out")
PLOT_METRICS = ("count_acc", "PCK")
METRIC_LABELS = {
    "count_acc": "count accuracy (%)",
    "count_exact": "exact count rate (%)",
    "AP": "OKS AP (%)",
    "PCK": "PCK (%)",
}
X_AXES = {"images": "labelled images", "minutes": "annotation time (min)"}
CONFIDENCE = 0.95
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- loading ---------------------------------------------------------------------------------------------
@dataclass
class Results:
    """The parsed rows of results.csv: `rows[i]` maps every column of `COLUMNS` to a value.

    strategy / test_set / tta are strings, seed and round ints, every other column a float (NaN when the
    cell is empty or missing). `skipped` counts malformed lines (e.g. a half-written last line of a grid
    still running); a repeated key keeps its last row.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    _index: dict[tuple, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index = {tuple(r[k] for k in KEY_COLUMNS): r for r in self.rows}

    def get(self, strategy: str, seed: int, round_: int, test_set: str, tta: str) -> dict[str, Any] | None:
        return self._index.get((strategy, seed, round_, test_set, tta))

    def value(self, strategy: str, seed: int, round_: int, test_set: str, tta: str, column: str) -> float:
        row = self.get(strategy, seed, round_, test_set, tta)
        return float("nan") if row is None else row[column]

    def strategies(self) -> list[str]:
        return sorted({r["strategy"] for r in self.rows})

    def seeds(self, strategy: str | None = None) -> list[int]:
        return sorted({r["seed"] for r in self.rows if strategy is None or r["strategy"] == strategy})

    def rounds(self, strategy: str | None = None) -> list[int]:
        return sorted({r["round"] for r in self.rows if strategy is None or r["strategy"] == strategy})

    def test_sets(self) -> list[str]:
        return sorted({r["test_set"] for r in self.rows})

    def ttas(self, test_set: str | None = None) -> list[str]:
        found = {r["tta"] for r in self.rows if test_set is None or r["test_set"] == test_set}
        return sorted(found, key=lambda t: (TTA_ORDER.index(t) if t in TTA_ORDER else len(TTA_ORDER), t))


def _float(text: str | None) -> float:
    if text is None:
        return float("nan")
    text = text.strip()
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _int(text: str | None) -> int:
    value = float((text or "").strip())  # "3" and "3.0" both; raises ValueError on junk / empty
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


def load_results(path: str | Path) -> Results:
    """Parse results.csv (see the module docstring); raises FileNotFoundError when it does not exist.

    Columns are found by name (extra columns are ignored, missing number columns read as NaN); a line
    without a strategy, an integer seed and round, a test set and a TTA is skipped and counted.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    skipped = 0
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("strategy", "seed", "round") if c not in header]
        if missing and header:
            raise ValueError(f"{path}: results.csv lacks the column(s) {', '.join(missing)}")
        reader.fieldnames = header
        for raw in reader:
            if None in raw or any(raw.get(c) is None for c in header):  # too many / too few fields
                skipped += 1
                continue
            try:
                row: dict[str, Any] = {
                    "strategy": raw["strategy"].strip(),
                    "seed": _int(raw["seed"]),
                    "round": _int(raw["round"]),
                    "test_set": (raw.get("test_set") or "test").strip(),
                    "tta": (raw.get("tta") or "clean").strip(),
                }
            except ValueError:
                skipped += 1
                continue
            if not row["strategy"] or row["round"] < 0:
                skipped += 1
                continue
            for col in NUMBER_COLUMNS:
                row[col] = _float(raw.get(col))
            rows.append(row)
    index = {tuple(r[k] for k in KEY_COLUMNS): r for r in rows}  # the last row of a repeated key wins
    unique = list(index.values())
    return Results(unique, skipped, index)


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


# --- statistics ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """Mean of `n` finite values with the half-width of its Student-t interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval lies strictly on one side of 0; None when there is no interval."""
        if not math.isfinite(self.half_width):
            return None
        return self.low > 0 or self.high < 0


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval half-width t_{(1+c)/2, n-1} * s / sqrt(n) of the finite `values`."""
    from scipy import stats

    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, float("nan"), 1)
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return Interval(mean, half, n)


@dataclass(frozen=True)
class CurvePoint:
    """One round of a strategy's mean learning curve over seeds."""

    round: int
    images: float  # mean labelled images over the seeds that have this round
    minutes: float  # mean cumulative annotation minutes over the same seeds
    value: Interval  # the metric over the seeds where it is finite


def mean_curve(results: Results, strategy: str, test_set: str, tta: str, metric: str) -> list[CurvePoint]:
    """Return the strategy's per-round mean curve (every round with at least one row), in round order."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for r in results.rows:
        if r["strategy"] == strategy and r["test_set"] == test_set and r["tta"] == tta:
            by_round.setdefault(r["round"], []).append(r)
    points = []
    for rnd in sorted(by_round):
        rows = by_round[rnd]
        images = _nanmean([r["labelled_images"] for r in rows])
        seconds = _nanmean([r["annotation_seconds"] for r in rows])
        if rnd == 0 and not math.isfinite(seconds):
            seconds = 0.0
        points.append(CurvePoint(rnd, images, seconds / 60.0, t_interval(r[metric] for r in rows)))
    return points


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _finite_xy(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _crossing(ys: Sequence[float], target: float) -> tuple[int, float] | None:
    """(i, frac): the curve first reaches `target` at ys[i] + frac * (ys[i+1] - ys[i]); None if never."""
    eps = 1e-12
    for i, y in enumerate(ys):
        if y >= target - eps:
            if i == 0:
                return 0, 0.0
            prev = ys[i - 1]
            frac = float((target - prev) / (y - prev)) if y != prev else 1.0
            return i - 1, min(max(frac, 0.0), 1.0)
    return None


def labels_to_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> float | None:
    """The x (e.g. labelled images) where the curve (xs, ys), in order, first reaches `target`.

    Linear interpolation between consecutive points; points with a NaN coordinate are dropped; None when
    the curve never reaches `target` (or `target` is NaN).
    """
    x, y = _finite_xy(xs, ys)
    if not math.isfinite(target) or x.size == 0:
        return None
    hit = _crossing(list(y), target)
    if hit is None:
        return None
    i, frac = hit
    return float(x[i]) if frac == 0.0 else float(x[i] + frac * (x[i + 1] - x[i]))


def normalised_auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoid area under (xs, ys) divided by the x-range: the curve's mean value over that range.

    NaN points are dropped, points are sorted by x; one point (or a zero x-range) gives the mean y;
    no point gives NaN.
    """
    x, y = _finite_xy(xs, ys)
    if x.size == 0:
        return float("nan")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span = float(x[-1] - x[0])
    if span <= 0:
        return float(y.mean())
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / span


# --- tables ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EfficiencyRow:
    test_set: str
    tta: str
    metric: str
    strategy: str
    n_seeds: int  # seeds with the final round
    final_round: int
    final_images: float
    final_minutes: float
    final: Interval  # the metric at the final round
    auc: float  # normalised area under the mean curve over labelled images
    reference: str | None  # None: the reference strategy is absent, the next three are not computed
    target: float  # the reference's final mean
    images_to_reach: float | None  # None: not reached
    minutes_to_reach: float | None


def _last_finite(curve: list[CurvePoint]) -> CurvePoint | None:
    finite = [p for p in curve if math.isfinite(p.value.mean)]
    return finite[-1] if finite else None


def efficiency_table(
    results: Results,
    test_set: str,
    reference: str | None = "random",
    tta: str = "clean",
    metric: str = "count_acc",
    strategies: Sequence[str] | None = None,
) -> list[EfficiencyRow]:
    """One row per strategy with a finite `metric` (see `EfficiencyRow`); reference-relative columns are
    NaN / None (and `reference` None) when `reference` has no finite value on this test set / TTA."""
    strategies = list(strategies) if strategies is not None else results.strategies()
    curves = {s: mean_curve(results, s, test_set, tta, metric) for s in strategies}
    ref_last = _last_finite(curves[reference]) if reference in curves else None
    target = ref_last.value.mean if ref_last is not None else float("nan")
    out = []
    for s in strategies:
        curve = [p for p in curves[s] if math.isfinite(p.value.mean)]
        last = _last_finite(curve)
        if last is None:
            continue
        images = [p.images for p in curve]
        auc = normalised_auc(images, [p.value.mean for p in curve])
        to_images = to_minutes = None
        if ref_last is not None:
            hit = _crossing([p.value.mean for p in curve], target)
            if hit is not None:
                i, frac = hit
                a, b = curve[i], curve[min(i + 1, len(curve) - 1)]
                to_images = a.images + frac * (b.images - a.images) if frac else a.images
                to_minutes = a.minutes + frac * (b.minutes - a.minutes) if frac else a.minutes
        out.append(
            EfficiencyRow(
                test_set,
                tta,
                metric,
                s,
                last.value.n,
                last.round,
                last.images,
                last.minutes,
                last.value,
                auc,
                reference if ref_last is not None else None,
                target,
                to_images,
                to_minutes,
            )  # fmt: skip
        )
    return out


@dataclass(frozen=True)
class PairedRow:
    test_set: str
    tta: str
    metric: str
    strategy: str
    reference: str
    round: int
    images: float  # mean labelled images of `strategy` over the paired seeds
    diff: Interval  # mean over seeds of (strategy - reference) on the same seed, with its t-interval

    @property
    def excludes_zero(self) -> bool | None:
        return self.diff.excludes_zero


def paired_differences(
    results: Results,
    strategy: str,
    reference: str,
    test_set: str,
    tta: str = "clean",
    metric: str = "count_acc",
) -> list[PairedRow]:
    """Per round that both strategies reached on at least one common seed: the paired difference
    `strategy - reference` (same seed, same round) averaged over the seeds where both are finite."""
    out = []
    rounds = sorted(set(results.rounds(strategy)) & set(results.rounds(reference)))
    for rnd in rounds:
        diffs, images = [], []
        for seed in results.seeds(strategy):
            a = results.get(strategy, seed, rnd, test_set, tta)
            b = results.get(reference, seed, rnd, test_set, tta)
            if a is None or b is None:
                continue
            d = a[metric] - b[metric]
            if math.isfinite(d):
                diffs.append(d)
                images.append(a["labelled_images"])
        if diffs:
            out.append(
                PairedRow(
                    test_set, tta, metric, strategy, reference, rnd, _nanmean(images), t_interval(diffs)
                )
            )
    return out


# --- CSV output ------------------------------------------------------------------------------------------
def _csv_num(v: float | int | None) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v)) if math.isfinite(v) else ""


def _yes_no(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")


EFFICIENCY_COLUMNS = (
    "test_set", "tta", "metric", "strategy", "n_seeds", "final_round", "final_images", "final_minutes",
    "final_mean", "final_half_width", "auc", "reference", "reference_final_mean", "images_to_reach",
    "minutes_to_reach", "reached",
)  # fmt: skip
PAIRED_COLUMNS = (
    "test_set", "tta", "metric", "strategy", "reference", "round", "labelled_images", "n_pairs",
    "mean_difference", "half_width", "low", "high", "excludes_zero",
)  # fmt: skip


def _efficiency_record(r: EfficiencyRow) -> list[str]:
    reached = None if r.reference is None else r.images_to_reach is not None
    return [
        r.test_set, r.tta, r.metric, r.strategy, _csv_num(r.n_seeds), _csv_num(r.final_round),
        _csv_num(r.final_images), _csv_num(r.final_minutes), _csv_num(r.final.mean),
        _csv_num(r.final.half_width), _csv_num(r.auc), r.reference or "", _csv_num(r.target),
        _csv_num(r.images_to_reach), _csv_num(r.minutes_to_reach), _yes_no(reached),
    ]  # fmt: skip


def _paired_record(r: PairedRow) -> list[str]:
    return [
        r.test_set, r.tta, r.metric, r.strategy, r.reference, _csv_num(r.round), _csv_num(r.images),
        _csv_num(r.diff.n), _csv_num(r.diff.mean), _csv_num(r.diff.half_width), _csv_num(r.diff.low),
        _csv_num(r.diff.high), _yes_no(r.excludes_zero),
    ]  # fmt: skip


def write_csv(path: str | Path, header: Sequence[str], records: Iterable[Sequence[str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# --- plots -----------------------------------------------------------------------------------------------
def _colours(strategies: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(strategies)}


def plot_curves(
    results: Results,
    test_set: str,
    xaxis: str,
    metric: str,
    strategies: Sequence[str],
    reference: str | None = None,
) -> bytes | None:
    """PNG bytes of Figure 3 A-F for one test set: `metric` (in %) against `xaxis` ("images" or
    "minutes"), a subplot per TTA, per strategy the mean over seeds with its 95 % t-band (no band where
    only one seed); None when no strategy has a finite value."""
    from ..workflow.plots import _pyplot

    if xaxis not in X_AXES:
        raise ValueError(f"xaxis must be one of {sorted(X_AXES)}, got {xaxis!r}")
    ttas = results.ttas(test_set)
    curves = {
        (tta, s): [p for p in mean_curve(results, s, test_set, tta, metric) if math.isfinite(p.value.mean)]
        for tta in ttas
        for s in strategies
    }
    curves = {
        k: [p for p in c if math.isfinite(p.images if xaxis == "images" else p.minutes)]
        for k, c in curves.items()
    }
    if not any(curves.values()):
        return None
    plt = _pyplot()
    ncols = min(3, len(ttas))
    nrows = math.ceil(len(ttas) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.6), sharex=True, sharey=True, squeeze=False
    )
    colours = _colours(strategies)
    for k, tta in enumerate(ttas):
        ax = axes[k // ncols][k % ncols]
        for s in strategies:
            pts = curves[(tta, s)]
            if not pts:
                continue
            x = np.array([p.images if xaxis == "images" else p.minutes for p in pts])
            y = 100 * np.array([p.value.mean for p in pts])
            h = 100 * np.array([p.value.half_width for p in pts])
            n = min(p.value.n for p in pts)
            label = (
                f"{s} (n={n})"
                if n == max(p.value.n for p in pts)
                else f"{s} (n={n}-{max(p.value.n for p in pts)})"
            )
            lw = 2.2 if s != reference else 1.6
            ls = "--" if s == reference else "-"
            ax.plot(x, y, marker="o", ms=4, lw=lw, ls=ls, color=colours[s], label=label)
            band = np.isfinite(h)
            if band.any():
                # A metric lives in [0, 100] %: a wide interval (few seeds) is drawn up to the bounds, not past them.
                lo, hi = np.clip(np.where(band, y - h, y), 0, 100), np.clip(np.where(band, y + h, y), 0, 100)
                ax.fill_between(x, lo, hi, color=colours[s], alpha=0.18, lw=0, where=band, interpolate=True)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(0.0, lo), min(100.0, hi))  # a metric in % never leaves [0, 100]
        ax.set_title(f"({chr(ord('A') + k)}) {'no augmentation' if tta == 'clean' else tta}")
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if k // ncols == nrows - 1 or k + ncols >= len(ttas):
            ax.set_xlabel(X_AXES[xaxis])
            ax.tick_params(labelbottom=True)
        ax.legend(fontsize=7, loc="lower right")
    for k in range(len(ttas), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    metric_name = METRIC_LABELS.get(metric, metric).replace(" (%)", "")
    fig.suptitle(f"{metric_name} vs {X_AXES[xaxis]} - test set '{test_set}' (mean, 95 % t-band over seeds)")
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


# --- montages --------------------------------------------------------------------------------------------
def find_montage(
    out_dir: str | Path, strategy: str, seeds: Sequence[int] = ()
) -> tuple[int | str, Path] | None:
    """(seed, path) of the round-1 `chosen.png` of the first seed of `strategy` that has one."""
    projects = Path(out_dir) / "projects"
    for seed in sorted(seeds):
        path = projects / f"{strategy}-seed{seed}" / "exports" / "round_1" / "chosen.png"
        if _is_png(path):
            return seed, path
    found = []  # seeds not in results.csv yet (a grid still running)
    for path in projects.glob(f"{glob_escape(strategy)}-seed*/exports/round_1/chosen.png"):
        tail = path.parents[2].name[len(strategy) + len("-seed") :]
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


# --- HTML ------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}tr.ref td{background:#f7f7f0}
.yes{color:#0a6b0a;font-weight:600}.no{color:#777}
.note{background:#f6f8fa;border-left:4px solid #8aa;padding:.5em 1em;margin:1em 0}
.warn{background:#fff7e6;border-left:4px solid #e0a030;padding:.5em 1em;margin:1em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.montages{display:flex;flex-wrap:wrap;gap:1.5em}.montages figure{flex:1 1 420px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _pct(v: float, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"


def _num(v: float | None, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _pm(iv: Interval) -> str:
    if not math.isfinite(iv.mean):
        return "n/a"
    if not math.isfinite(iv.half_width):
        return f"{_pct(iv.mean)} (n={iv.n}, no interval)"
    return f"{_pct(iv.mean)} ± {_pct(iv.half_width)}"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, classes: Sequence[str] = ()
) -> str:
    """An HTML table; cells are given already escaped (use `_e`); the first `left` columns align left."""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{classes[k]}"' if k < len(classes) and classes[k] else ""
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _grid_html(grid: dict[str, Any], grid_note: str | None) -> str:
    if not grid:
        return f'<p class="warn">{_e(grid_note or "grid.json is empty")}: the grid below is read from results.csv.</p>'
    known = ["strategies", "seeds", "initial", "budget", "rounds", "pool", "test", "tests", "ttas", "preset"]
    keys = [k for k in known if k in grid] + sorted(k for k in grid if k not in known)
    rows = []
    for k in keys:
        v = grid[k]
        if k == "command" and isinstance(v, list):
            text = shlex.join(str(a) for a in v)
        else:
            text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        rows.append([_e(k), _e(text)])
    return "<h3>Grid (grid.json)</h3>" + _table(["setting", "value"], rows, left=2)


def _progress_html(results: Results, strategies: Sequence[str], grid: dict[str, Any]) -> str:
    seeds = results.seeds()
    planned = grid.get("rounds") if isinstance(grid.get("rounds"), int) else None
    rows = []
    for s in strategies:
        cells = [_e(s)]
        for seed in seeds:
            rounds = sorted({r["round"] for r in results.rows if r["strategy"] == s and r["seed"] == seed})
            if not rounds:
                cells.append("-")
            else:
                gaps = sorted(set(range(rounds[-1] + 1)) - set(rounds))
                text = f"{rounds[-1]}" + (f" / {planned}" if planned is not None else "")
                if gaps:
                    text += f" (missing {', '.join(map(str, gaps))})"
                cells.append(_e(text))
        rows.append(cells)
    header = ["strategy"] + [f"seed {_e(s)}" for s in seeds]
    return "<h3>Progress: last round with results, per strategy and seed</h3>" + _table(header, rows, left=1)


_HOW_TO_READ = """
<div class="note"><b>How to read this report.</b>
<ul>
<li>Every curve is the mean over seeds of one strategy; the shaded band and every "±" are the half-width of
the 95 % Student-t interval over seeds (t<sub>0.975, n-1</sub> &middot; s / &radic;n). With a single seed there
is no band. <i>n</i> in a legend is the number of seeds behind a point (a range when a grid is still running
and some seeds have fewer rounds).</li>
<li>Round 0 is the initial model, shared by all strategies of a seed. Annotation time is the simulated time
to label what rounds 1..r added (0 at round 0).</li>
<li><b>Label efficiency</b> (clean test images): the labelled images and annotation minutes a strategy's
mean curve needs to first reach the reference strategy's final mean accuracy (linear interpolation between
rounds; "not reached" when it never does); AUC is the area under the mean curve over labelled images divided
by its x-range, i.e. the curve's mean accuracy.</li>
<li><b>Paired differences</b> compare two strategies on the same seed (same initial set and model), round by
round, then average over seeds; the 95 % t-interval is over those per-seed differences, in percentage points.
"excludes 0" = yes means the difference is significant at that level on these seeds.</li>
<li>Metrics are shown in %: count accuracy (the paper's person count accuracy, primary) and PCK.</li>
</ul></div>
"""


def _efficiency_html(rows: list[EfficiencyRow], reference: str) -> str:
    has_ref = any(r.reference is not None for r in rows)
    header = ["strategy", "seeds", "final round", "final images", "final (%)", "AUC (%)"]
    if has_ref:
        header += [f"images to reach {_e(reference)}", "minutes to reach"]
    body, classes = [], []
    for r in rows:
        cells = [_e(r.strategy), str(r.n_seeds), str(r.final_round), _num(r.final_images), _e(_pm(r.final)),
                 _pct(r.auc)]  # fmt: skip
        if has_ref:
            if r.images_to_reach is None:
                cells += ["not reached", "not reached"]
            else:
                cells += [_num(r.images_to_reach), _num(r.minutes_to_reach, 2)]
        body.append(cells)
        classes.append("ref" if r.strategy == reference else "")
    out = _table(header, body, classes=classes)
    if has_ref:
        target = rows[0].target
        out = f"<p>Target: the final mean of <b>{_e(reference)}</b> = {_pct(target)} %.</p>" + out
    return out


def _choices_html(out: Path) -> str:
    """The "what each strategy chose" section (and DIR/choices.csv) from the grid's projects; "" without any."""
    from .choices import choices_table, round_choices, write_choices_csv

    try:
        choices = round_choices(out)
    except Exception as exc:  # noqa: BLE001 - a report must not fail on one unreadable project
        return f'<h2>What each strategy chose</h2><p class="warn">Projects unreadable: {_e(exc)}</p>'
    if not choices:
        return ""
    write_choices_csv(out / "choices.csv", choices)
    header = ["strategy", "round", "seeds", "people / image", "labelled keypoints / person",
              "person height / image height", "annotation minutes", "uncertain / candidates", "selection s"]  # fmt: skip
    body = [
        [
            _e(r["strategy"]),
            str(r["round"]),
            str(r["seeds"]),
            _num(r["people_per_image"], 2),
            _num(r["keypoints_per_person"]),
            _num(r["person_height"], 2),
            _num(r["annotation_minutes"]),
            _pct(r["uncertain_pass_rate"]),
            _num(r["selection_seconds"]),
        ]  # fmt: skip
        for r in choices_table(choices)
    ]
    return (
        "<h2>What each strategy chose</h2><p>Per round, means over seeds of the chosen images' labels (as the "
        "oracle gave them), and for strategies that score uncertainty the share of candidates the heatmap rule "
        "calls uncertain (%). Per seed: <code>choices.csv</code>.</p>" + _table(header, body, left=1)
    )


def _paired_html(rows: list[PairedRow]) -> str:
    header = ["round", "labelled images", "seeds", "mean difference (pp)", "95 % interval (pp)", "excludes 0"]
    body = []
    for r in rows:
        ex = r.excludes_zero
        ex_html = (
            "n/a (1 seed)"
            if ex is None
            else ('<span class="yes">yes</span>' if ex else '<span class="no">no</span>')
        )
        interval = (
            "n/a"
            if not math.isfinite(r.diff.half_width)
            else f"[{_pct(r.diff.low, True)}, {_pct(r.diff.high, True)}]"
        )
        body.append([str(r.round), _num(r.images), str(r.diff.n), _pct(r.diff.mean, True), interval, ex_html])
    return _table(header, body)


def _ordered_strategies(results: Results, grid: dict[str, Any], reference: str) -> list[str]:
    present = results.strategies()
    planned = grid.get("strategies")
    order = [s for s in planned if isinstance(s, str)] if isinstance(planned, list) else []
    ordered = ([reference] if reference in present else []) + [s for s in order if s in present]
    return list(dict.fromkeys(ordered + present))


def write_report(out_dir: str | Path, reference: str = "random") -> Path:
    """Read DIR/results.csv (+ grid.json, projects/*/exports/round_1/chosen.png) and write DIR/plots/*.png,
    DIR/efficiency.csv, DIR/paired.csv and the self-contained DIR/report.html; return the page's path.

    Raises FileNotFoundError when results.csv does not exist.
    """
    out = Path(out_dir)
    results_path = out / "results.csv"
    if not results_path.exists():
        raise FileNotFoundError(f"no results to report on: {results_path} does not exist")
    results = load_results(results_path)
    grid, grid_note = load_grid(out / "grid.json")
    strategies = _ordered_strategies(results, grid, reference)
    has_reference = reference in strategies

    efficiency: list[EfficiencyRow] = []
    paired: list[PairedRow] = []
    sections: list[str] = []
    for test_set in results.test_sets():
        ttas = results.ttas(test_set)
        base_tta = "clean" if "clean" in ttas else ttas[0]
        parts = [f"<h2>Test set <code>{_e(test_set)}</code></h2>"]
        if base_tta != "clean":
            parts.append(
                f'<p class="warn">No clean rows for this test set: tables use TTA {_e(base_tta)}.</p>'
            )
        ref_here = has_reference and any(
            r["strategy"] == reference and r["test_set"] == test_set and r["tta"] == base_tta
            for r in results.rows
        )
        # tables
        for metric in PLOT_METRICS:
            label = METRIC_LABELS[metric].replace(" (%)", "")
            rows = efficiency_table(results, test_set, reference, base_tta, metric, strategies)
            efficiency += rows
            parts.append(f"<h3>Label efficiency: {_e(label)} ({_e(base_tta)})</h3>")
            if not rows:
                parts.append(f"<p>No {_e(label)} values on this test set.</p>")
                continue
            if not ref_here:
                parts.append(
                    f'<p class="warn">Reference strategy <b>{_e(reference)}</b> not in the results for this test '
                    "set: labels-to-reach columns are skipped.</p>"
                )
            parts.append(_efficiency_html(rows, reference))
        for metric in PLOT_METRICS:
            label = METRIC_LABELS[metric].replace(" (%)", "")
            if not ref_here:
                parts.append(
                    f'<h3>Paired differences: {_e(label)}</h3><p class="warn">Reference strategy '
                    f"<b>{_e(reference)}</b> not in the results: paired differences are skipped.</p>"
                )
                continue
            for s in strategies:
                if s == reference:
                    continue
                rows_p = paired_differences(results, s, reference, test_set, base_tta, metric)
                paired += rows_p
                parts.append(
                    f"<h3>Paired difference {_e(s)} &minus; {_e(reference)}: {_e(label)} ({_e(base_tta)})</h3>"
                )
                parts.append(
                    _paired_html(rows_p)
                    if rows_p
                    else "<p>No round with both strategies on a common seed.</p>"
                )
        # plots
        for metric in PLOT_METRICS:
            for xaxis in X_AXES:
                png = plot_curves(
                    results, test_set, xaxis, metric, strategies, reference if has_reference else None
                )
                if png is None:
                    continue
                name = f"{_slug(test_set)}__{metric}__{xaxis}.png"
                atomic_write_bytes(out / "plots" / name, png)
                caption = (
                    f"{METRIC_LABELS[metric]} vs {X_AXES[xaxis]}, test set '{test_set}', one panel per TTA "
                    f"(cf. the paper's Figure 3 A-F). File: plots/{name}"
                )
                parts.append(f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
        sections.append("\n".join(parts))

    write_csv(out / "efficiency.csv", EFFICIENCY_COLUMNS, (_efficiency_record(r) for r in efficiency))
    write_csv(out / "paired.csv", PAIRED_COLUMNS, (_paired_record(r) for r in paired))

    # montages
    montage_parts = []
    for s in strategies:
        found = find_montage(out, s, results.seeds(s))
        if found is None:
            montage_parts.append(f"<p>{_e(s)}: no round-1 montage found.</p>")
            continue
        seed, path = found
        try:
            data = path.read_bytes()
        except OSError as exc:
            montage_parts.append(f"<p>{_e(s)}: montage unreadable ({_e(exc)}).</p>")
            continue
        caption = (
            f"{s}, seed {seed}: the round-1 selection (chosen images highlighted, cf. the paper's Figure 2b)"
        )
        montage_parts.append(f"<figure>{_img(data, caption)}<figcaption>{_e(caption)}</figcaption></figure>")

    choices_html = _choices_html(out)

    notes = []
    if not results.rows:
        notes.append('<p class="warn">results.csv has no rows yet.</p>')
    if results.skipped:
        notes.append(f'<p class="warn">{results.skipped} malformed line(s) of results.csv skipped.</p>')
    if not has_reference:
        notes.append(
            f'<p class="warn">The reference strategy <b>{_e(reference)}</b> is not in the results: '
            "the labels-to-reach columns and the paired differences are skipped.</p>"
        )
    summary = (
        f"<p>{len(results.rows)} result rows; strategies: {_e(', '.join(strategies) or 'none')}; "
        f"seeds: {_e(', '.join(map(str, results.seeds())) or 'none')}; test sets: "
        f"{_e(', '.join(results.test_sets()) or 'none')}; reference: <b>{_e(reference)}</b>.</p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>activepose simulation report</title>
<style>{_CSS}</style></head>
<body>
<h1>Active-learning simulation report</h1>
<p>Folder: <code>{_e(out.resolve())}</code></p>
{summary}
{"".join(notes)}
{_grid_html(grid, grid_note)}
{_progress_html(results, strategies, grid)}
{_HOW_TO_READ}
{"".join(sections)}
{choices_html}
<h2>Round-1 selections</h2>
<div class="montages">{"".join(montage_parts) or "<p>No strategies.</p>"}</div>
</body></html>
"""
    return atomic_write(out / "report.html", lambda fh: fh.write(page.encode("utf-8")))
