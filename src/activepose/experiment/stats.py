"""The report's numbers, computed from results.csv's rows and nothing else: no file is written, nothing rendered.

In the steps of pycocotools' COCOeval: the per-row values are results.csv (`results.py`); here they are
accumulated into per-strategy mean learning curves over seeds with Student-t intervals (`mean_curve`),
label efficiency (`efficiency_table`: labels and minutes to reach the reference's final accuracy, normalised
area under the curve), paired same-seed differences (`paired_differences`) and, for a whole grid, everything
the report shows (`report_stats`); `report.py` only renders what these return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import STATIC_ARM
from .results import Results

CONFIDENCE = 0.95
PLOT_METRICS = ("count_acc", "PCK", "AP")  # the metrics the report tabulates and plots
X_AXES = ("images", "minutes")  # a learning curve's x: labelled images or annotation minutes


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

    def x(self, axis: str) -> float:
        """The point's x on `axis` (one of `X_AXES`)."""
        return self.images if axis == "images" else self.minutes


def mean_curve(results: Results, strategy: str, test_set: str, tta: str, metric: str) -> list[CurvePoint]:
    """Return the strategy's per-round mean curve (every round with at least one row), in round order."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for r in results.rows:
        if r["strategy"] == strategy and r["test_set"] == test_set and r["tta"] == tta:
            by_round.setdefault(r["round"], []).append(r)
    points = []
    for rnd in sorted(by_round):
        rows = by_round[rnd]
        # The compute control never gains labels: it is drawn at the labels its schedule was sized for.
        column = "schedule_images" if strategy == STATIC_ARM else "labelled_images"
        images = _nanmean([r[column] if math.isfinite(r[column]) else r["labelled_images"] for r in rows])
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
    # The labels' share of the gain: strategy - static (same seed) at the final round, over the paired seeds;
    # None without a static arm (or for the static arm itself).
    over_static: Interval | None = None


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
        if (
            ref_last is not None and s != STATIC_ARM
        ):  # the control gains no labels: nothing to reach with them
            hit = _crossing([p.value.mean for p in curve], target)
            if hit is not None:
                i, frac = hit
                a, b = curve[i], curve[min(i + 1, len(curve) - 1)]
                to_images = a.images + frac * (b.images - a.images) if frac else a.images
                to_minutes = a.minutes + frac * (b.minutes - a.minutes) if frac else a.minutes
        over_static = None
        if s != STATIC_ARM and STATIC_ARM in curves:
            paired = [p for p in paired_differences(results, s, STATIC_ARM, test_set, tta, metric)
                      if p.round == last.round]  # fmt: skip
            over_static = paired[0].diff if paired else None
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
                over_static,
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


# --- a whole grid ----------------------------------------------------------------------------------------------
Panels = dict[str, dict[str, list[CurvePoint]]]  # per TTA, per strategy: a figure's curves


def panel_curves(
    results: Results, test_set: str, metric: str, strategies: Sequence[str], xaxis: str
) -> Panels:
    """Per TTA of `test_set` (in TTA order), per strategy: its mean curve's points where the metric and the
    x on `xaxis` are finite (an empty list where none is)."""
    if xaxis not in X_AXES:
        raise ValueError(f"xaxis must be one of {sorted(X_AXES)}, got {xaxis!r}")
    panels: Panels = {}
    for tta in results.ttas(test_set):
        panels[tta] = {}
        for s in strategies:
            curve = [p for p in mean_curve(results, s, test_set, tta, metric) if math.isfinite(p.value.mean)]
            panels[tta][s] = [p for p in curve if math.isfinite(p.x(xaxis))]
    return panels


def ordered_strategies(results: Results, grid: Mapping[str, Any], reference: str) -> list[str]:
    """The strategies in the results: the reference first, then grid.json's order, then the others sorted."""
    present = results.strategies()
    planned = grid.get("strategies")
    order = [s for s in planned if isinstance(s, str)] if isinstance(planned, list) else []
    ordered = ([reference] if reference in present else []) + [s for s in order if s in present]
    return list(dict.fromkeys(ordered + present))


Progress = dict[str, dict[int, tuple[int, list[int]] | None]]


def progress(results: Results, strategies: Sequence[str]) -> Progress:
    """Per strategy, per seed in the results: (its last round with results, the earlier rounds without any),
    or None when the seed has no row of that strategy."""
    out: Progress = {}
    for s in strategies:
        out[s] = {}
        for seed in results.seeds():
            rounds = sorted({r["round"] for r in results.rows if r["strategy"] == s and r["seed"] == seed})
            out[s][seed] = (rounds[-1], sorted(set(range(rounds[-1] + 1)) - set(rounds))) if rounds else None
    return out


@dataclass(frozen=True)
class TestSetStats:
    test_set: str
    tta: str  # the TTA of the tables: clean, or the test set's first TTA when it has no clean rows
    has_reference: bool  # the reference strategy has rows on this test set and TTA
    efficiency: dict[str, list[EfficiencyRow]]  # per metric of PLOT_METRICS
    paired: dict[str, dict[str, list[PairedRow]]]  # per metric, per strategy but the reference; {} without it
    panels: dict[tuple[str, str], Panels]  # per (metric, x-axis), every TTA: see `panel_curves`


@dataclass(frozen=True)
class ReportStats:
    """Everything the report shows, computed: per test set the tables and the figures' curves."""

    reference: str
    strategies: list[str]  # see `ordered_strategies`
    has_reference: bool  # the reference strategy is in the results
    progress: Progress
    test_sets: list[TestSetStats]

    @property
    def efficiency(self) -> list[EfficiencyRow]:
        return [r for t in self.test_sets for rows in t.efficiency.values() for r in rows]

    @property
    def paired(self) -> list[PairedRow]:
        return [r for t in self.test_sets for by in t.paired.values() for rows in by.values() for r in rows]


def _test_set_stats(results: Results, test_set: str, strategies: list[str], reference: str) -> TestSetStats:
    ttas = results.ttas(test_set)
    tta = "clean" if "clean" in ttas else ttas[0]
    has_reference = reference in strategies and any(
        r["strategy"] == reference and r["test_set"] == test_set and r["tta"] == tta for r in results.rows
    )
    efficiency = {m: efficiency_table(results, test_set, reference, tta, m, strategies) for m in PLOT_METRICS}
    others = [s for s in strategies if s != reference]
    paired = {
        m: {s: paired_differences(results, s, reference, test_set, tta, m) for s in others}
        for m in (PLOT_METRICS if has_reference else ())
    }
    panels = {(m, x): panel_curves(results, test_set, m, strategies, x) for m in PLOT_METRICS for x in X_AXES}
    return TestSetStats(test_set, tta, has_reference, efficiency, paired, panels)


def report_stats(results: Results, grid: Mapping[str, Any], reference: str = "random") -> ReportStats:
    """Compute everything the report shows of `results` (grid.json's `grid` settings give the strategies'
    order), comparing the strategies with `reference`."""
    strategies = ordered_strategies(results, grid, reference)
    return ReportStats(
        reference,
        strategies,
        reference in strategies,
        progress(results, strategies),
        [_test_set_stats(results, t, strategies, reference) for t in results.test_sets()],
    )


DIAGNOSTICS = ("selector_test_auroc", "batch_auroc", "batch_spearman", "pass_rate", "coverage", "videos")


def diagnostics_table(
    results: Results, test_set: str, strategies: Sequence[str], tta: str = "clean"
) -> list[dict]:
    """Per (strategy, round >= 1): means over seeds of the diagnostics of the round's selection (results.py):
    the AUROC of the selecting model's uncertainty on the test set (its own row, round - 1), on the batch it chose
    (once labelled) and the Spearman there, the filter's pass rate, the coverage and the videos of the batch.
    Rows where every figure is missing are left out."""
    out = []
    for s in strategies:
        if s == STATIC_ARM:
            continue
        for rnd in [r for r in results.rounds(s) if r >= 1]:
            values: dict[str, list[float]] = {k: [] for k in DIAGNOSTICS}
            for seed in results.seeds(s):
                row, prev = (
                    results.get(s, seed, rnd, test_set, tta),
                    results.get(s, seed, rnd - 1, test_set, tta),
                )
                if row is None:
                    continue
                got = {k: row.get(k, math.nan) for k in DIAGNOSTICS if k != "selector_test_auroc"}
                got["selector_test_auroc"] = (
                    prev.get("test_auroc", math.nan) if prev is not None else math.nan
                )
                for k, v in got.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        values[k].append(float(v))
            if any(values.values()):
                out.append({"strategy": s, "round": rnd, "seeds": len(results.seeds(s)),
                            **{k: (_nanmean(v) if v else math.nan) for k, v in values.items()}})  # fmt: skip
    return out


SIGNIFICANT_ROUNDS = 2  # see `verdict`


def verdict(t: TestSetStats, reference: str, metric: str = "PCK") -> str:
    """One line: which strategy to use on this data (by `metric` on the test set `t`), and what it saves or
    costs against `reference` in labels, with the paired interval at the final round. A strategy is only
    recommended over the reference when its paired interval lies below 0 at no round and either above 0 at the
    final round, or above 0 at `SIGNIFICANT_ROUNDS` rounds or more with the final mean still ahead (the issue's
    goal: "its paired interval excluding 0 at >= 2 rounds"; the line then names those rounds). A final-round
    lead after a significant loss is named as such, not recommended; a strategy whose final interval lies below
    0 is named as a loss."""
    rows = {r.strategy: r for r in t.efficiency.get(metric, []) if r.strategy != STATIC_ARM}
    paired = t.paired.get(metric, {})
    if reference not in rows:
        return f"no verdict: the reference strategy {reference!r} has no {metric} results on {t.test_set}"

    def final(strategy: str) -> PairedRow | None:
        return paired.get(strategy, [None])[-1] if paired.get(strategy) else None

    def earlier_loss(strategy: str) -> PairedRow | None:
        """The round, before the final one, where the strategy was significantly worse (the largest loss)."""
        lost = [p for p in paired.get(strategy, [])[:-1] if p.excludes_zero and p.diff.mean < 0]
        return min(lost, key=lambda p: p.diff.mean) if lost else None

    def rounds(strategy: str) -> list[PairedRow]:
        """The selection rounds (round 0 is the shared initial set)."""
        return [p for p in paired.get(strategy, []) if p.round >= 1]

    def wins(strategy: str) -> list[PairedRow]:
        """The selection rounds where the strategy was significantly better."""
        return [p for p in rounds(strategy) if p.excludes_zero and p.diff.mean > 0]

    better, worse, mixed = [], [], []
    for s, r in rows.items():
        p = final(s)
        if s == reference or p is None:
            continue
        ahead = p.diff.mean > 0 and (bool(p.excludes_zero) or len(wins(s)) >= SIGNIFICANT_ROUNDS)
        if ahead and earlier_loss(s) is not None:
            mixed.append((p.diff.mean, s, p, earlier_loss(s)))
        elif ahead:
            better.append((p.diff.mean, s, r, p))
        elif p.excludes_zero and p.diff.mean < 0:
            worse.append((p.diff.mean, s, r, p))
    ref = rows[reference]

    curve = t.panels.get((metric, "images"), {}).get(t.tta, {}).get(reference) or []
    initial = curve[0].images if curve else math.nan

    def saving(r: EfficiencyRow) -> str:
        if r.images_to_reach is None:
            return f"never reaches {reference}'s final {metric} ({100 * ref.final.mean:.1f} %)"
        added = ref.final_images - initial
        share = (
            f" ({100 * (r.images_to_reach - initial) / added:.0f} % of the labels {reference} added)"
            if math.isfinite(added) and added > 0
            else ""
        )
        return (
            f"reaches {reference}'s final {metric} with {r.images_to_reach:.0f} labelled images vs "
            f"{ref.final_images:.0f}{share}"
        )

    def interval(p: PairedRow) -> str:
        d = p.diff
        span = (
            f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
            if math.isfinite(d.half_width)
            else "(one seed, no interval)"
        )
        return f"{100 * d.mean:+.1f} pp {span} at {p.images:.0f} labels"

    losses = "; ".join(f"{s} loses to {reference}: {interval(p)}" for _, s, _, p in sorted(worse))
    if better:
        _, s, r, p = max(better)
        won = wins(s)
        if p.excludes_zero:
            line = f"Use {s} on this data: {interval(p)} over {reference} ({p.diff.n} seeds); it {saving(r)}."
        else:
            line = (
                f"Use {s} on this data: significantly ahead of {reference} at {len(won)} of {len(rounds(s))} rounds"
                f" ({', '.join(interval(q) for q in won)}) and ahead at the last, {interval(p)}"
                f" ({p.diff.n} seeds); it {saving(r)}."
            )
    else:
        ahead = [(r.final.mean, s) for s, r in rows.items() if s != reference]
        best = max(ahead)[1] if ahead else None
        line = f"Use {reference}: no strategy beats it significantly on {metric}"
        if mixed:
            _, s, p, lost = max(mixed)
            line += (
                f" at every round ({s} is ahead at the end, {interval(p)}, but behind at {interval(lost)})"
            )
        elif best is not None and final(best) is not None:
            line += f" (best: {best}, {interval(final(best))})"
        line += "."
    return line + (f" {losses}." if losses else "")


# --- the grid's console table ----------------------------------------------------------------------------------
def summarise(rows: Sequence[dict[str, str]], test_set: str, tta: str = "clean") -> list[dict[str, Any]]:
    """Return [{strategy, round, labelled_images, seeds, count_acc, PCK}]: means over seeds (NaN-free) of
    results.csv's text rows (as `SimulationResult.rows` holds them). For the compute control, `labelled_images`
    is the labels its schedule was sized for (`schedule_images`: it keeps its initial labels), as in its curve."""
    groups: dict[tuple[str, int, int], list[dict[str, str]]] = {}
    for row in rows:
        if row["test_set"] == test_set and row["tta"] == tta:
            x = row.get("schedule_images") if row["strategy"] == STATIC_ARM else None
            key = (row["strategy"], int(row["round"]), int(x or row["labelled_images"]))
            groups.setdefault(key, []).append(row)
    out = []
    for (strategy, r, images), group in groups.items():

        def mean(k: str, group=group) -> float:
            values = [float(g[k]) for g in group if g[k] != ""]
            return sum(values) / len(values) if values else math.nan

        out.append({"strategy": strategy, "round": r, "labelled_images": images, "seeds": len(group),
                    "count_acc": mean("count_acc"), "PCK": mean("PCK")})  # fmt: skip
    return out
