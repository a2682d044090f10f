"""The simulation report's page and figures, rendered from what `stats.report_stats` computed.

`render_report` returns, by file name under the grid folder DIR:

- `plots/*.png`: the paper's Figure 3 A-F (mean learning curve per strategy with a 95 % Student-t band over
  seeds, one subplot per TTA) against labelled images and against annotation minutes, for the person count
  accuracy, PCK and OKS AP, one figure per (test set, x-axis, metric) with a metric on it;
- `report.html`: everything in one self-contained page (images embedded as base64, inline CSS): the grid's
  settings and progress, per test set the label-efficiency and paired-difference tables and the figures, what
  each strategy chose and the round-1 selection montages.

Nothing here reads or writes a file or computes a statistic: `outputs.write_report` gathers the inputs,
runs `stats.report_stats` and writes what this returns.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import STATIC_ARM
from ..workflow.plots import _pyplot
from .layout import plot_name
from .results import Results
from .stats import (
    PLOT_METRICS,
    EfficiencyRow,
    Interval,
    PairedRow,
    Panels,
    ReportStats,
    TestSetStats,
    diagnostics_table,
    panel_curves,
    verdict,
)

METRIC_LABELS = {
    "count_acc": "count accuracy (%)",
    "count_exact": "exact count rate (%)",
    "AP": "OKS AP (%)",
    "PCK": "PCK (%)",
}
X_LABELS = {"images": "labelled images", "minutes": "annotation time (min)"}
Montage = tuple[int | str, bytes] | str | None  # (seed, PNG bytes), why it is unreadable, or None: not found


# --- figures -------------------------------------------------------------------------------------------------
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
    """`curves_png` of one figure straight from the rows (`stats.panel_curves`)."""
    return curves_png(panel_curves(results, test_set, metric, strategies, xaxis), test_set, xaxis, metric,
                      strategies, reference)  # fmt: skip


def curves_png(*args: Any, **kwargs: Any) -> bytes | None:
    """PNG bytes of `curves_figure(*args, **kwargs)`; None when it has no curve."""
    fig = curves_figure(*args, **kwargs)
    if fig is None:
        return None
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def curves_figure(
    panels: Panels,
    test_set: str,
    xaxis: str,
    metric: str,
    strategies: Sequence[str],
    reference: str | None = None,
):
    """Figure 3 A-F for one test set (a matplotlib figure): `metric` (in %) against `xaxis` ("images" or
    "minutes"), a subplot per TTA, per strategy the mean over seeds with its 95 % t-band (no band where
    only one seed); None when no strategy has a finite value."""
    if not any(pts for panel in panels.values() for pts in panel.values()):
        return None
    ttas = list(panels)
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
            if panels[tta][s]:
                _draw_curve(ax, panels[tta][s], xaxis, s, colours[s], s == reference)
        ax.set_title(f"({chr(ord('A') + k)}) {'no augmentation' if tta == 'clean' else tta}")
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if k // ncols == nrows - 1 or k + ncols >= len(ttas):
            ax.set_xlabel(X_LABELS[xaxis])
            ax.tick_params(labelbottom=True)
    for k in range(len(ttas), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    # The panels share their y axis: it is clamped once every panel is drawn (clamping inside the loop froze it
    # at the first panel's range and cut off the lower curves of the others). A metric in % never leaves
    # [0, 100].
    lo, hi = axes[0][0].get_ylim()
    axes[0][0].set_ylim(max(0.0, lo), min(100.0, hi))
    # One legend for the figure, beside the panels rather than over the curves: each strategy once, with the
    # seeds of the first panel that draws it.
    entries: dict[str, tuple[Any, str]] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(lab.split(" (n=")[0], (h, lab))
    handles, labels = [h for h, _ in entries.values()], [lab for _, lab in entries.values()]
    metric_name = METRIC_LABELS.get(metric, metric).replace(" (%)", "")
    fig.suptitle(f"{metric_name} vs {X_LABELS[xaxis]} - test set '{test_set}' (mean, 95 % t-band over seeds)")
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig


def _draw_curve(ax, pts: Sequence[Any], xaxis: str, strategy: str, colour: Any, is_reference: bool) -> None:
    """One strategy's mean curve on `ax`, with its t-band where there is one (its points are finite)."""
    x = np.array([p.x(xaxis) for p in pts])
    y = 100 * np.array([p.value.mean for p in pts])
    h = 100 * np.array([p.value.half_width for p in pts])
    n, most = min(p.value.n for p in pts), max(p.value.n for p in pts)
    label = f"{strategy} (n={n})" if n == most else f"{strategy} (n={n}-{most})"
    ax.plot(x, y, marker="o", ms=4, lw=1.6 if is_reference else 2.2, ls="--" if is_reference else "-",
            color=colour, label=label)  # fmt: skip
    band = np.isfinite(h)
    if band.any():
        # A metric lives in [0, 100] %: a wide interval (few seeds) is drawn up to the bounds, not past them.
        lo, hi = np.clip(np.where(band, y - h, y), 0, 100), np.clip(np.where(band, y + h, y), 0, 100)
        ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0, where=band, interpolate=True)


def _figures(stats: ReportStats) -> dict[tuple[str, str, str], bytes]:
    """The PNG of every figure that has a curve, by (test set, metric, x-axis), in the page's order."""
    reference = stats.reference if stats.has_reference else None
    figures = {}
    for t in stats.test_sets:
        for (metric, xaxis), panels in t.panels.items():
            png = curves_png(panels, t.test_set, xaxis, metric, stats.strategies, reference)
            if png is not None:
                figures[(t.test_set, metric, xaxis)] = png
    return figures


# --- HTML ----------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}tr.ref td{background:#f7f7f0}
.yes{color:#0a6b0a;font-weight:600}.no{color:#777}.worse{color:#b00020;font-weight:600}
.verdict{font-size:1.1em;background:#eef4ff;border-left:4px solid #3060c0;padding:.5em 1em;margin:1em 0}
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


def _progress_html(results: Results, stats: ReportStats, grid: dict[str, Any]) -> str:
    planned = grid.get("rounds") if isinstance(grid.get("rounds"), int) else None
    rows = []
    for s, seeds in stats.progress.items():
        cells = [_e(s)]
        for done in seeds.values():
            if done is None:
                cells.append("-")
            else:
                last, gaps = done
                text = f"{last}" + (f" / {planned}" if planned is not None else "")
                if gaps:
                    text += f" (missing {', '.join(map(str, gaps))})"
                cells.append(_e(text))
        rows.append(cells)
    header = ["strategy"] + [f"seed {_e(s)}" for s in results.seeds()]
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
    has_static = any(r.over_static is not None for r in rows)
    if has_ref:
        header += [f"images to reach {_e(reference)}", "minutes to reach"]
    if has_static:
        header += ["gain from labels: − static (pp)"]
    body, classes = [], []
    for r in rows:
        cells = [_e(r.strategy), str(r.n_seeds), str(r.final_round), _num(r.final_images), _e(_pm(r.final)),
                 _pct(r.auc)]  # fmt: skip
        if has_ref:
            if r.strategy == STATIC_ARM:
                cells += ["(no labels)", ""]
            elif r.images_to_reach is None:
                cells += ["not reached", "not reached"]
            else:
                cells += [_num(r.images_to_reach), _num(r.minutes_to_reach, 2)]
        if has_static:
            cells += [_e(_pm(r.over_static)) if r.over_static is not None else ""]
        body.append(cells)
        classes.append("ref" if r.strategy == reference else "")
    out = _table(header, body, classes=classes)
    if has_ref:
        target = rows[0].target
        out = f"<p>Target: the final mean of <b>{_e(reference)}</b> = {_pct(target)} %.</p>" + out
    if has_static:
        out += (f"<p><b>{STATIC_ARM}</b> is the compute control: each seed's initial set trained with the schedule "
                "the other arms get each round, and no new labels (drawn at the labels its schedule was sized for). "
                "\"Gain from labels\" is strategy − static on the same seed at the final round: what the added labels "
                "bought beyond the extra training.</p>")  # fmt: skip
    return out


def _choices_html(table: Sequence[Mapping[str, Any]], error: str | None) -> str:
    """The "what each strategy chose" section from `choices.choices_table`; "" without any choice."""
    if error is not None:
        return f'<h2>What each strategy chose</h2><p class="warn">Projects unreadable: {_e(error)}</p>'
    if not table:
        return ""
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
        for r in table
    ]
    return (
        "<h2>What each strategy chose</h2><p>Per round, means over seeds of the chosen images' labels (as the "
        "oracle gave them), and for strategies that score uncertainty the share of candidates the heatmap rule "
        "calls uncertain (%). Per seed: <code>choices.csv</code>.</p>" + _table(header, body, left=1)
    )


def _verdict_html(stats: ReportStats) -> str:
    """The one-line verdict on the first test set's PCK (see `stats.verdict`); "" without results."""
    if not stats.test_sets:
        return ""
    t = stats.test_sets[0]
    return f'<p class="verdict"><b>Verdict</b> ({_e(t.test_set)}, {_e(t.tta)}): {_e(verdict(t, stats.reference))}</p>'


def _diagnostics_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """Why a strategy won or lost, per round (see `stats.diagnostics_table`); "" without diagnostics."""
    if not rows:
        return ""
    header = ["strategy", "round", "seeds", "AUROC of the selector's uncertainty, test", "AUROC on its batch",
              "Spearman on its batch", "uncertain / candidates (%)", "coverage (mean distance)", "videos"]  # fmt: skip
    body = [[_e(r["strategy"]), str(r["round"]), str(r["seeds"]), _num(r["selector_test_auroc"], 2),
             _num(r["batch_auroc"], 2), _num(r["batch_spearman"], 2), _pct(r["pass_rate"]), _num(r["coverage"], 3),
             _num(r["videos"], 1)] for r in rows]  # fmt: skip
    return (
        "<h2>Why: per-round diagnostics</h2><p>Means over seeds. AUROC: how well the uncertainty score of the model "
        "that chose the round's images tells the images it gets wrong (per-image error above the median) from the "
        "rest, on the test set and on the batch it chose once labelled (0.5: no information; below 0.5: "
        "misleading); Spearman: rank correlation of score and error on that batch. Uncertainty can only pay where "
        "these are well above 0.5 / 0. Coverage: mean embedding distance from a candidate to its nearest chosen or "
        "labelled image after the choice (strategies that compute embeddings; lower covers more). Videos: videos "
        "the batch's frames come from (footage only). Per seed: <code>results.csv</code>.</p>"
        + _table(header, body, left=1)
    )


def _paired_html(rows: list[PairedRow]) -> str:
    header = ["round", "labelled images", "seeds", "mean difference (pp)", "95 % interval (pp)", "excludes 0"]
    body = []
    for r in rows:
        ex = r.excludes_zero
        if ex is None:
            ex_html = "n/a (1 seed)"
        elif not ex:
            ex_html = '<span class="no">no</span>'
        elif r.diff.mean > 0:
            ex_html = '<span class="yes">yes: better</span>'
        else:
            ex_html = '<span class="worse">yes: worse</span>'  # a significant loss is not shown like a win
        interval = (
            "n/a"
            if not math.isfinite(r.diff.half_width)
            else f"[{_pct(r.diff.low, True)}, {_pct(r.diff.high, True)}]"
        )
        body.append([str(r.round), _num(r.images), str(r.diff.n), _pct(r.diff.mean, True), interval, ex_html])
    return _table(header, body)


def _test_set_html(t: TestSetStats, stats: ReportStats, figures: Mapping[tuple[str, str, str], bytes]) -> str:
    parts = [f"<h2>Test set <code>{_e(t.test_set)}</code></h2>"]
    if t.tta != "clean":
        parts.append(f'<p class="warn">No clean rows for this test set: tables use TTA {_e(t.tta)}.</p>')
    parts += _efficiency_parts(t, stats.reference) + _paired_parts(t, stats.reference)
    for metric, xaxis in t.panels:
        png = figures.get((t.test_set, metric, xaxis))
        if png is None:
            continue
        caption = (
            f"{METRIC_LABELS[metric]} vs {X_LABELS[xaxis]}, test set '{t.test_set}', one panel per TTA "
            f"(cf. the paper's Figure 3 A-F). File: plots/{plot_name(t.test_set, metric, xaxis)}"
        )
        parts.append(f"<figure>{_img(png, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
    return "\n".join(parts)


def _efficiency_parts(t: TestSetStats, reference: str) -> list[str]:
    parts = []
    for metric in PLOT_METRICS:
        label = METRIC_LABELS[metric].replace(" (%)", "")
        rows = t.efficiency[metric]
        parts.append(f"<h3>Label efficiency: {_e(label)} ({_e(t.tta)})</h3>")
        if not rows:
            parts.append(f"<p>No {_e(label)} values on this test set.</p>")
            continue
        if not t.has_reference:
            parts.append(
                f'<p class="warn">Reference strategy <b>{_e(reference)}</b> not in the results for this test '
                "set: labels-to-reach columns are skipped.</p>"
            )
        parts.append(_efficiency_html(rows, reference))
    return parts


def _paired_parts(t: TestSetStats, reference: str) -> list[str]:
    parts = []
    for metric in PLOT_METRICS:
        label = METRIC_LABELS[metric].replace(" (%)", "")
        if not t.has_reference:
            parts.append(
                f'<h3>Paired differences: {_e(label)}</h3><p class="warn">Reference strategy '
                f"<b>{_e(reference)}</b> not in the results: paired differences are skipped.</p>"
            )
            continue
        for s, rows in t.paired[metric].items():
            parts.append(
                f"<h3>Paired difference {_e(s)} &minus; {_e(reference)}: {_e(label)} ({_e(t.tta)})</h3>"
            )
            parts.append(
                _paired_html(rows) if rows else "<p>No round with both strategies on a common seed.</p>"
            )
    return parts


def _montages_html(montages: Mapping[str, Montage]) -> str:
    parts = []
    for s, found in montages.items():
        if found is None:
            parts.append(f"<p>{_e(s)}: no round-1 montage found.</p>")
        elif isinstance(found, str):
            parts.append(f"<p>{_e(s)}: montage unreadable ({_e(found)}).</p>")
        else:
            seed, data = found
            caption = f"{s}, seed {seed}: the round-1 selection (chosen images highlighted, cf. the paper's Figure 2b)"
            parts.append(f"<figure>{_img(data, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
    return "".join(parts) or "<p>No strategies.</p>"


def _notes_html(results: Results, stats: ReportStats) -> str:
    notes = []
    if not results.rows:
        notes.append('<p class="warn">results.csv has no rows yet.</p>')
    if results.skipped:
        notes.append(f'<p class="warn">{results.skipped} malformed line(s) of results.csv skipped.</p>')
    if not stats.has_reference:
        notes.append(
            f'<p class="warn">The reference strategy <b>{_e(stats.reference)}</b> is not in the results: '
            "the labels-to-reach columns and the paired differences are skipped.</p>"
        )
    return "".join(notes)


def render_report(
    folder: Path,
    results: Results,
    stats: ReportStats,
    grid: tuple[dict[str, Any], str | None],
    montages: Mapping[str, Montage],
    choices: tuple[Sequence[Mapping[str, Any]], str | None],
) -> dict[str, bytes]:
    """The report's figures and page by file name under the grid folder (`folder`, shown on the page), the
    page last: from the rows' `results`, their `stats`, grid.json's (settings, why unread) as `layout.load_grid`
    gives them, each strategy's round-1 `montages` and (`choices.choices_table`, why unread) of the projects."""
    figures = _figures(stats)
    summary = (
        f"<p>{len(results.rows)} result rows; strategies: {_e(', '.join(stats.strategies) or 'none')}; "
        f"seeds: {_e(', '.join(map(str, results.seeds())) or 'none')}; test sets: "
        f"{_e(', '.join(results.test_sets()) or 'none')}; reference: <b>{_e(stats.reference)}</b>.</p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>activepose simulation report</title>
<style>{_CSS}</style></head>
<body>
<h1>Active-learning simulation report</h1>
<p>Folder: <code>{_e(folder)}</code></p>
{_verdict_html(stats)}
{summary}
{_notes_html(results, stats)}
{_grid_html(*grid)}
{_progress_html(results, stats, grid[0])}
{_HOW_TO_READ}
{"".join(_test_set_html(t, stats, figures) for t in stats.test_sets)}
{_diagnostics_html(diagnostics_table(results, stats.test_sets[0].test_set, stats.strategies, stats.test_sets[0].tta) if stats.test_sets else [])}
{_choices_html(*choices)}
<h2>Round-1 selections</h2>
<div class="montages">{_montages_html(montages)}</div>
</body></html>
"""
    files = {f"plots/{plot_name(*key)}": png for key, png in figures.items()}
    return files | {"report.html": page.encode("utf-8")}
