"""A grid's results as Markdown tables, for a README or an issue: what `activepose report --markdown` writes.

Per test set (its clean rows, or its first TTA): the learning curves by round (mean ± the 95 % half-width over
seeds) of PCK@0.2, OKS AP and count accuracy, and PCK under every other TTA; the paired differences of each
strategy to the reference and to the compute control per round (`*`: the interval excludes 0); the
label-efficiency table; the selection diagnostics per strategy (means over rounds 1..R and seeds). Every number
comes from `stats` (the same as the HTML report); this module only formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import STATIC_ARM
from .results import Results
from .stats import (
    CurvePoint,
    Interval,
    diagnostics_table,
    mean_curve,
    paired_differences,
    report_stats,
    verdict,
)

CURVE_METRICS = (("PCK", "PCK@0.2"), ("AP", "OKS AP"), ("count_acc", "count accuracy"))


def _pct(v: Interval) -> str:
    if not math.isfinite(v.mean):
        return ""
    return f"{100 * v.mean:.1f}" + (f" ± {100 * v.half_width:.1f}" if math.isfinite(v.half_width) else "")


def _diff(v: Interval) -> str:
    if not math.isfinite(v.mean):
        return ""
    if not math.isfinite(v.half_width):
        return f"{100 * v.mean:+.1f}"
    return f"{100 * v.mean:+.1f} [{100 * v.low:+.1f}, {100 * v.high:+.1f}]" + ("*" if v.excludes_zero else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _curve_table(
    results: Results, test_set: str, tta: str, metric: str, strategies: Sequence[str]
) -> list[str]:
    curves: dict[str, dict[int, CurvePoint]] = {
        s: {p.round: p for p in mean_curve(results, s, test_set, tta, metric)} for s in strategies
    }
    rounds = sorted({r for c in curves.values() for r in c})
    labelled = [s for s in strategies if s != STATIC_ARM] or list(strategies)
    rows = []
    for r in rounds:
        images = [curves[s][r].images for s in labelled if r in curves[s]]
        shown = f"{r} ({sum(images) / len(images):.0f})" if images else str(r)
        rows.append([shown, *(_pct(curves[s][r].value) if r in curves[s] else "" for s in strategies)])
    return _table(["round (labels)", *strategies], rows) if rows else []


def _paired_table(
    results: Results, test_set: str, tta: str, reference: str, strategies: Sequence[str]
) -> list[str]:
    others = [s for s in strategies if s != reference]
    by = {
        s: {p.round: p for p in paired_differences(results, s, reference, test_set, tta, "PCK")}
        for s in others
    }
    rounds = sorted({r for d in by.values() for r in d if r > 0})
    rows = [[str(r), *(_diff(by[s][r].diff) if r in by[s] else "" for s in others)] for r in rounds]
    return _table(["round", *others], rows) if rows else []


def markdown_tables(results: Results, grid: dict, reference: str = "random") -> str:
    """Return the Markdown of `results` (see the module's docstring); `grid`: grid.json's settings or {}."""
    stats = report_stats(results, grid, reference)
    strategies = stats.strategies
    out: list[str] = []
    for t in stats.test_sets:
        seeds = sorted({r["seed"] for r in results.rows if r["test_set"] == t.test_set})
        out += [f"## {t.test_set}: {len(seeds)} seed(s) ({', '.join(map(str, seeds))})", ""]
        if t.has_reference:
            out += [f"Verdict ({t.tta} PCK): {verdict(t, reference, 'PCK')}", ""]
        for metric, name in CURVE_METRICS:
            table = _curve_table(results, t.test_set, t.tta, metric, strategies)
            if table:
                out += [f"### {name}, {t.tta} (%, mean ± 95 % half-width over seeds)", "", *table, ""]
        for tta in results.ttas(t.test_set):
            if tta != t.tta:
                table = _curve_table(results, t.test_set, tta, "PCK", strategies)
                out += [f"### PCK@0.2, {tta} (%)", "", *table, ""] if table else []
        for ref in (reference, STATIC_ARM):
            if ref in strategies:
                table = _paired_table(results, t.test_set, t.tta, ref, strategies)
                if table:
                    out += [f"### Paired difference to {ref}, {t.tta} PCK@0.2 (pp, 95 % interval; * excludes 0)",
                            "", *table, ""]  # fmt: skip
        eff = [r for r in t.efficiency.get("PCK", []) if r.reference is not None]
        if eff:
            start = min(
                (p.images for p in mean_curve(results, reference, t.test_set, t.tta, "PCK")), default=0.0
            )
            rows = []
            for r in eff:
                added = r.final_images - start
                share = (
                    f"{100 * (r.images_to_reach - start) / added:.0f} %"
                    if r.images_to_reach is not None and added > 0 and r.strategy != STATIC_ARM
                    else ""
                )
                rows.append([
                    r.strategy, f"{r.final_images:.0f}", _pct(r.final),
                    "not reached" if r.images_to_reach is None else f"{r.images_to_reach:.0f}", share,
                ])  # fmt: skip
            out += [f"### Labels to reach {reference}'s final {t.tta} PCK@0.2 ({100 * eff[0].target:.1f} %)", "",
                    *_table(["strategy", "final labels", "final PCK %", "labels to reach", "of the labels "
                             f"{reference} added"], rows), ""]  # fmt: skip
        diag = diagnostics_table(results, t.test_set, strategies, t.tta)
        if diag:
            rows = []
            for s in [s for s in strategies if s != STATIC_ARM]:
                mine = [d for d in diag if d["strategy"] == s]
                kept = [r for r in results.rows if r["strategy"] == s and r["round"] >= 1
                        and r["test_set"] == t.test_set and r["tta"] == t.tta]  # fmt: skip
                seconds = [r["selection_seconds"] for r in kept if math.isfinite(r["selection_seconds"])]

                def mean(key: str, digits: int, scale: float = 1.0, mine=mine) -> str:
                    v = [d[key] for d in mine if math.isfinite(d[key])]
                    return f"{scale * sum(v) / len(v):.{digits}f}" if v else ""

                n_prev = sum(r.get("model_kept") == "previous" for r in kept)
                rows.append([
                    s, f"{sum(seconds) / len(seconds):.1f}" if seconds else "", mean("videos", 1),
                    # in %: a filter passing a few of thousands of candidates must not read as 0.00
                    mean("coverage", 3), mean("pass_rate", 1, 100.0), mean("selector_test_auroc", 2),
                    mean("batch_auroc", 2), f"{n_prev} of {len(kept)}",
                ])  # fmt: skip
            out += ["### Why: selection diagnostics (means over rounds 1.. and seeds)", "",
                    *_table(["strategy", "selection s/round", "videos per batch", "coverage", "pass rate %",
                             "test AUROC", "batch AUROC", "rounds that kept the previous model"], rows), ""]  # fmt: skip
    return "\n".join(out).rstrip() + "\n"
