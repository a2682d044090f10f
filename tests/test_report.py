"""The simulation report: intervals, paired differences, label efficiency, AUC and the HTML page."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from activepose.experiment.outputs import write_report
from activepose.experiment.report import plot_curves
from activepose.experiment.results import COLUMNS, load_results
from activepose.experiment.stats import (
    efficiency_table,
    labels_to_reach,
    mean_curve,
    normalised_auc,
    paired_differences,
    t_interval,
)

T2 = float(stats.t.ppf(0.975, 2))  # the t quantile of 3 seeds


# --- builders -------------------------------------------------------------------------------------------
def make_row(strategy, seed, rnd, acc, pck=None, test_set="test", tta="clean", images=None, seconds=None):
    """One results.csv row: 100 initial images + 100 per round, 600 s of annotation per round."""
    return {
        "strategy": strategy,
        "seed": seed,
        "round": rnd,
        "labelled_images": 100 + 100 * rnd if images is None else images,
        "labelled_people": 150 + 150 * rnd,
        "annotation_seconds": 600.0 * rnd if seconds is None else seconds,
        "selection_seconds": 1.5 if rnd else 0.0,
        "training_seconds": 12.0,
        "test_set": test_set,
        "tta": tta,
        "count_acc": acc,
        "count_exact": acc,
        "AP": acc / 2 if acc is not None else None,
        "PCK": pck if pck is not None else acc,
    }


def write_results(folder: Path, rows: list[dict], header=COLUMNS, tail: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(
            ["" if r.get(c) is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in header]
        )
    (folder / "results.csv").write_text(buf.getvalue() + tail, encoding="utf-8")
    return folder / "results.csv"


RANDOM_BASE = {0: 0.40, 1: 0.42, 2: 0.44}  # per seed; the mean over seeds is 0.42
HYBRID_OFFSET = {0: 0.04, 1: 0.06, 2: 0.08}  # mean 0.06, sd 0.02: the interval excludes 0
UNCERT_OFFSET = {0: -0.03, 1: 0.01, 2: 0.05}  # mean 0.01, sd 0.04: the interval contains 0


def random_acc(seed: int, rnd: int) -> float:
    return RANDOM_BASE[seed] + 0.05 * rnd


def paired_grid(ttas=("clean",), test_sets=("test",), seeds=(0, 1, 2), rounds=4) -> list[dict]:
    """random / hybrid / uncertainty x seeds x rounds; round 0 identical, later rounds offset per seed."""
    rows = []
    for ts in test_sets:
        for tta in ttas:
            drop = 0.1 if tta != "clean" else 0.0
            for seed in seeds:
                for rnd in range(rounds):
                    base = random_acc(seed, rnd) - drop
                    rows.append(make_row("random", seed, rnd, base, test_set=ts, tta=tta))
                    for name, off in (("hybrid", HYBRID_OFFSET), ("uncertainty", UNCERT_OFFSET)):
                        value = base + (off[seed] if rnd else 0.0)
                        rows.append(make_row(name, seed, rnd, value, test_set=ts, tta=tta))
    return rows


def linear_grid() -> list[dict]:
    """random ends (round 3, 400 images) at mean 0.6; hybrid goes 0.5, 0.7, ... (reaches 0.6 at 150
    images / 5 minutes); slow never reaches 0.6. Per-seed noise sums to 0, so means are exact."""
    noise = {0: -0.01, 1: 0.0, 2: 0.01}
    curves = {
        "random": [0.3, 0.4, 0.5, 0.6],
        "hybrid": [0.5, 0.7, 0.75, 0.8],
        "slow": [0.3, 0.35, 0.4, 0.45],
    }
    return [
        make_row(s, seed, rnd, curve[rnd] + noise[seed])
        for s, curve in curves.items()
        for seed in noise
        for rnd in range(4)
    ]


def make_png(path: Path, size=(320, 200), colour=(200, 30, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path.read_bytes()


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def assert_images_ok(page: str, minimum: int) -> None:
    images = embedded_pngs(page)
    assert len(images) >= minimum
    for data in images:
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.format == "PNG"
        assert im.size[0] >= 200 and im.size[1] >= 150
        assert len(np.unique(np.asarray(im.convert("L")))) > 1 or im.size == (320, 200)  # not a blank plot


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- statistics -----------------------------------------------------------------------------------------
def test_t_interval_matches_scipy_by_hand():
    values = [0.5, 0.55, 0.62]
    iv = t_interval(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.n == 3
    assert iv.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert iv.low == pytest.approx(lo, abs=1e-12)
    assert iv.high == pytest.approx(hi, abs=1e-12)
    # NaN is dropped, one value has no interval, none has no mean
    assert t_interval([0.5, float("nan"), 0.55, 0.62]).half_width == pytest.approx(iv.half_width)
    one = t_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half_width) and one.excludes_zero is None
    assert t_interval([]).n == 0 and math.isnan(t_interval([]).mean)


def test_curve_point_interval_equals_scipy(tmp_path):
    results = load_results(write_results(tmp_path, paired_grid()))
    curve = mean_curve(results, "hybrid", "test", "clean", "count_acc")
    assert [p.round for p in curve] == [0, 1, 2, 3]
    point = curve[2]
    values = [random_acc(s, 2) + HYBRID_OFFSET[s] for s in (0, 1, 2)]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert point.value.low == pytest.approx(lo, abs=1e-12) and point.value.high == pytest.approx(
        hi, abs=1e-12
    )
    assert point.images == 300 and point.minutes == pytest.approx(20.0)
    assert curve[0].minutes == 0.0


def test_paired_difference_and_its_interval(tmp_path):
    results = load_results(write_results(tmp_path, paired_grid()))
    hybrid = paired_differences(results, "hybrid", "random", "test", "clean", "count_acc")
    assert [r.round for r in hybrid] == [0, 1, 2, 3]
    assert hybrid[0].diff.mean == pytest.approx(0.0, abs=1e-12)
    assert hybrid[0].excludes_zero is False  # identical round 0: a zero-width interval at 0
    half = T2 * 0.02 / math.sqrt(3)
    for r in hybrid[1:]:
        assert r.diff.n == 3
        assert r.diff.mean == pytest.approx(0.06, abs=1e-12)
        assert r.diff.half_width == pytest.approx(half, abs=1e-12)
        assert r.excludes_zero is True
    unc = paired_differences(results, "uncertainty", "random", "test", "clean", "PCK")
    for r in unc[1:]:
        assert r.diff.mean == pytest.approx(0.01, abs=1e-12)
        assert r.diff.half_width == pytest.approx(T2 * 0.04 / math.sqrt(3), abs=1e-12)
        assert r.diff.low < 0 < r.diff.high and r.excludes_zero is False


def test_labels_to_reach_is_exact_on_a_linear_curve():
    xs = [100, 200, 300, 400]
    assert labels_to_reach(xs, [0.5, 0.7, 0.8, 0.9], 0.6) == pytest.approx(150.0, abs=1e-9)
    assert labels_to_reach(xs, [0.5, 0.7, 0.8, 0.9], 0.75) == pytest.approx(250.0, abs=1e-9)
    assert labels_to_reach(xs, [0.65, 0.7, 0.8, 0.9], 0.6) == 100.0  # already there at the start
    assert labels_to_reach(xs, [0.3, 0.4, 0.5, 0.55], 0.6) is None  # never
    assert labels_to_reach(xs, [0.5, float("nan"), 0.7, 0.9], 0.6) == pytest.approx(200.0, abs=1e-9)
    assert labels_to_reach(xs, [0.5, 0.7, 0.8, 0.9], float("nan")) is None


def test_efficiency_table_reaches_reference_at_150_images(tmp_path):
    results = load_results(write_results(tmp_path, linear_grid()))
    rows = {r.strategy: r for r in efficiency_table(results, "test", "random")}
    assert rows["random"].target == pytest.approx(0.6, abs=1e-12)
    assert rows["hybrid"].images_to_reach == pytest.approx(150.0, abs=1e-9)
    assert rows["hybrid"].minutes_to_reach == pytest.approx(5.0, abs=1e-9)
    assert rows["random"].images_to_reach == pytest.approx(400.0, abs=1e-9)
    assert rows["slow"].images_to_reach is None and rows["slow"].minutes_to_reach is None
    assert rows["hybrid"].final.mean == pytest.approx(0.8, abs=1e-12)
    assert rows["hybrid"].final.half_width == pytest.approx(T2 * 0.01 / math.sqrt(3), abs=1e-12)
    # trapezoid over 100..400 of 0.5, 0.7, 0.75, 0.8, divided by 300
    expected_auc = ((0.5 + 0.7) / 2 + (0.7 + 0.75) / 2 + (0.75 + 0.8) / 2) / 3
    assert rows["hybrid"].auc == pytest.approx(expected_auc, abs=1e-12)


def test_auc_of_constant_and_linear_curves():
    assert normalised_auc([100, 200, 400, 800], [0.7, 0.7, 0.7, 0.7]) == pytest.approx(0.7, abs=1e-12)
    assert normalised_auc([100, 150, 400], [0.2, 0.3, 0.8]) == pytest.approx(0.5, abs=1e-12)  # linear: mid
    assert normalised_auc([400, 100], [0.8, 0.2]) == pytest.approx(0.5, abs=1e-12)  # order does not matter
    assert normalised_auc([100], [0.4]) == 0.4
    assert normalised_auc([100, 200], [0.4, float("nan")]) == 0.4
    assert math.isnan(normalised_auc([], []))


# --- loading --------------------------------------------------------------------------------------------
def test_load_results_by_column_name_nan_duplicates_and_junk(tmp_path):
    header = ["tta", "seed", "strategy", "round", "test_set", "count_acc", "PCK", "labelled_images", "extra"]
    rows = [
        {"tta": "clean", "seed": 0, "strategy": "random", "round": 0, "test_set": "test", "count_acc": 0.4,
         "PCK": None, "labelled_images": 100, "extra": "x"},
        {"tta": "clean", "seed": 0, "strategy": "random", "round": 0, "test_set": "test", "count_acc": 0.45,
         "PCK": 0.3, "labelled_images": 100, "extra": "y"},  # same key: the last row wins
    ]  # fmt: skip
    path = write_results(
        tmp_path, rows, header=header, tail="clean,1,random,1,te\nclean,x,random,1,test,0.5,0.5,1,z\n"
    )
    results = load_results(path)
    assert len(results.rows) == 1
    assert results.skipped == 2  # a truncated line and a non-integer seed
    row = results.rows[0]
    assert row["count_acc"] == 0.45 and row["PCK"] == 0.3
    assert math.isnan(row["annotation_seconds"]) and math.isnan(row["AP"])  # absent columns
    assert isinstance(row["seed"], int) and isinstance(row["round"], int)
    assert results.value("random", 0, 0, "test", "clean", "labelled_images") == 100.0
    assert math.isnan(results.value("random", 5, 0, "test", "clean", "count_acc"))


def test_missing_results_csv_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv"):
        write_report(tmp_path)


# --- the page -------------------------------------------------------------------------------------------
ALL_TTAS = ("clean", "blur", "bright", "dark", "zoom_in", "zoom_out")


def test_full_report(tmp_path):
    rows = paired_grid(ttas=ALL_TTAS, test_sets=("test", "test_multi"))
    write_results(tmp_path, rows)
    config = {"strategies": ["uncertainty", "hybrid", "random"], "seeds": [0, 1, 2], "initial": 100, "budget": 100,
              "rounds": 3, "pool": "/data/pool.json", "tests": ["/data/test.json", "/data/test_multi.json"],
              "train": {"preset": "<b>lsp14</b>"}}  # fmt: skip
    grid = {"config": config, "command": ["activepose", "simulate", "--rounds", "3"], "created": "2026-01-01"}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    montage = make_png(tmp_path / "projects" / "hybrid-seed1" / "exports" / "round_1" / "chosen.png")
    (tmp_path / "projects" / "hybrid-seed0" / "exports" / "round_1").mkdir(parents=True)  # seed 0: no file
    # a seed not in results.csv yet (still running) is found too; a non-PNG file is ignored
    make_png(
        tmp_path / "projects" / "uncertainty-seed7" / "exports" / "round_1" / "chosen.png", colour=(0, 90, 0)
    )
    (tmp_path / "projects" / "random-seed0" / "exports" / "round_1").mkdir(parents=True)
    (tmp_path / "projects" / "random-seed0" / "exports" / "round_1" / "chosen.png").write_bytes(b"partial")

    path = write_report(tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")

    # self-contained
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert "&lt;b&gt;lsp14&lt;/b&gt;" in page and "<b>lsp14</b>" not in page  # grid values are escaped
    assert "activepose simulate --rounds 3" in page and "/data/test_multi.json" in page  # grid.json's config
    assert "<td>3 / 3</td>" in page  # rounds done / planned (from the nested config)
    # the reference first, then grid.json's order: the legend and tables follow it
    assert page.index('<td class="l">random</td>') < page.index('<td class="l">uncertainty</td>')
    assert page.index('<td class="l">uncertainty</td>') < page.index('<td class="l">hybrid</td>')
    # 2 test sets x 3 metrics (count, PCK, OKS AP) x 2 x-axes figures + 2 montages
    assert_images_ok(page, minimum=14)
    assert base64.b64encode(montage).decode() in page  # the first seed that has one (seed 1)
    assert "hybrid, seed 1" in page and "uncertainty, seed 7" in page
    assert "random: no round-1 montage found" in page
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert (
        len(plots) == 12 and "test_multi__count_acc__minutes.png" in plots and "test__AP__images.png" in plots
    )
    for p in (tmp_path / "plots").glob("*.png"):
        im = Image.open(p)
        assert im.size[0] > 800 and im.size[1] > 500  # 6 panels
    assert "95 % Student-t interval" in page and "same seed" in page

    # the tables' values in the page and the CSVs
    assert "+6.0" in page and "+1.0" in page  # hybrid / uncertainty mean paired differences (pp)
    half = 100 * T2 * 0.02 / math.sqrt(3)
    assert f"[{6 - half:+.1f}, {6 + half:+.1f}]" in page
    assert (
        page.count('<span class="yes">yes: better</span>') == 2 * 3 * 3
    )  # 2 test sets x 3 metrics (count, PCK, AP) x rounds 1-3
    assert "yes: worse" not in page
    # the page opens with the verdict: the strategy significantly ahead of random on the first test set's PCK
    assert page.index('class="verdict"') < page.index("result rows")
    assert "Use hybrid on this data: +6.0 pp [" in page
    paired = read_csv(tmp_path / "paired.csv")
    assert len(paired) == 2 * 3 * 2 * 4  # test sets x metrics x strategies x rounds
    h3 = [r for r in paired if r["strategy"] == "hybrid" and r["round"] == "3" and r["metric"] == "count_acc"]
    assert len(h3) == 2 and all(r["excludes_zero"] == "yes" and r["n_pairs"] == "3" for r in h3)
    assert float(h3[0]["mean_difference"]) == pytest.approx(0.06, abs=1e-12)
    assert {r["tta"] for r in paired} == {"clean"}

    eff = read_csv(tmp_path / "efficiency.csv")
    assert len(eff) == 2 * 3 * 3  # test sets x metrics x strategies
    assert {r["metric"] for r in eff} == {"count_acc", "PCK", "AP"}
    hyb = next(
        r for r in eff if r["strategy"] == "hybrid" and r["test_set"] == "test" and r["metric"] == "count_acc"
    )
    assert float(hyb["final_mean"]) == pytest.approx(0.42 + 0.15 + 0.06, abs=1e-12)
    assert float(hyb["reference_final_mean"]) == pytest.approx(0.57, abs=1e-12)
    assert hyb["reached"] == "yes"
    # hybrid's mean goes 0.42 -> 0.53 (100 -> 200 images): it reaches 0.57 in round 2 (0.58 at 300)
    assert float(hyb["images_to_reach"]) == pytest.approx(200 + 100 * 0.04 / 0.05, abs=1e-9)
    assert "63.0 ± " in page and f"{float(hyb['images_to_reach']):.1f}" in page


def test_report_with_partial_results(tmp_path):
    rows = paired_grid(ttas=("clean", "dark"))
    # a grid still running: hybrid seed 2 has no round 3, seed 1 lacks round 2; one empty metric cell
    rows = [r for r in rows if not (r["strategy"] == "hybrid" and r["seed"] == 2 and r["round"] == 3)]
    rows = [r for r in rows if not (r["strategy"] == "hybrid" and r["seed"] == 1 and r["round"] == 2)]
    for r in rows:
        if r["strategy"] == "uncertainty" and r["seed"] == 0 and r["round"] == 1:
            r["count_acc"] = None
    write_results(tmp_path, rows, tail="hybrid,2,3,400,60")  # a half-written last line
    (tmp_path / "grid.json").write_text(json.dumps({"rounds": 3}))  # a flat grid.json, most keys absent
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "1 malformed line(s)" in page
    assert "3 / 3 (missing 2)" in page and "<td>2 / 3</td>" in page  # hybrid seeds 1 and 2: progress table
    assert_images_ok(page, minimum=4)

    results = load_results(tmp_path / "results.csv")
    hybrid = {r.round: r for r in paired_differences(results, "hybrid", "random", "test")}
    assert hybrid[3].diff.n == 2 and hybrid[2].diff.n == 2 and hybrid[1].diff.n == 3
    assert hybrid[3].diff.mean == pytest.approx((0.04 + 0.06) / 2, abs=1e-12)
    unc = {r.round: r for r in paired_differences(results, "uncertainty", "random", "test")}
    assert unc[1].diff.n == 2  # the NaN cell is left out of the pairs
    curve = mean_curve(results, "hybrid", "test", "clean", "count_acc")
    assert [p.value.n for p in curve] == [3, 3, 2, 2]
    paired = read_csv(tmp_path / "paired.csv")
    assert any(r["strategy"] == "hybrid" and r["round"] == "3" and r["n_pairs"] == "2" for r in paired)


def test_report_with_a_single_seed(tmp_path):
    write_results(tmp_path, paired_grid(ttas=("clean", "blur"), seeds=(0,)))
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert_images_ok(page, minimum=4)
    assert "no interval" in page and "n/a (1 seed)" in page and '<span class="yes">' not in page
    paired = read_csv(tmp_path / "paired.csv")
    assert paired and all(r["excludes_zero"] == "" and r["half_width"] == "" for r in paired)
    eff = read_csv(tmp_path / "efficiency.csv")
    assert all(r["n_seeds"] == "1" and r["final_half_width"] == "" for r in eff)
    assert "grid.json not found" in page


def test_report_without_the_reference_strategy(tmp_path):
    rows = [r for r in paired_grid() if r["strategy"] != "random"]
    write_results(tmp_path, rows)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "The reference strategy <b>random</b> is not in the results" in page
    assert "images to reach" not in page and "Paired difference hybrid" not in page
    assert_images_ok(page, minimum=4)
    assert read_csv(tmp_path / "paired.csv") == []
    eff = read_csv(tmp_path / "efficiency.csv")
    assert {r["strategy"] for r in eff} == {"hybrid", "uncertainty"}
    assert all(r["reference"] == "" and r["reached"] == "" and r["images_to_reach"] == "" for r in eff)
    # another reference works on the same data
    write_report(tmp_path, reference="uncertainty")
    paired = read_csv(tmp_path / "paired.csv")
    assert paired and {r["strategy"] for r in paired} == {"hybrid"}
    r3 = next(r for r in paired if r["round"] == "3" and r["metric"] == "count_acc")
    assert float(r3["mean_difference"]) == pytest.approx(0.05, abs=1e-12)


def test_all_nan_metric_is_skipped(tmp_path):
    rows = paired_grid()
    for r in rows:
        r["PCK"] = r["AP"] = float("nan")
    write_results(tmp_path, rows)
    results = load_results(tmp_path / "results.csv")
    assert plot_curves(results, "test", "images", "PCK", ["random", "hybrid"]) is None
    assert plot_curves(results, "test", "images", "AP", ["random", "hybrid"]) is None
    assert plot_curves(results, "test", "minutes", "count_acc", ["random", "hybrid"]) is not None
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No PCK values on this test set" in page and "No OKS AP values on this test set" in page
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == [
        "test__count_acc__images.png",
        "test__count_acc__minutes.png",
    ]
    assert len(embedded_pngs(page)) == 2


def test_shared_y_axis_holds_every_panels_curves_and_one_legend_names_every_strategy(tmp_path):
    """A TTA whose curves lie below the first panel's (blur, dark) is drawn inside the shared y range, and the
    figure's one legend, beside the panels, names each strategy once."""
    from activepose.experiment.report import curves_figure
    from activepose.experiment.stats import panel_curves

    rows = paired_grid(ttas=("clean", "blur"))
    for r in rows:
        if r["tta"] == "blur" and r["strategy"] == "uncertainty":
            r["PCK"] = r["PCK"] - 0.3  # 30 pp below everything in the clean panel
    write_results(tmp_path, rows)
    results = load_results(tmp_path / "results.csv")
    strategies = ["random", "hybrid", "uncertainty"]
    panels = panel_curves(results, "test", "PCK", strategies, "images")
    fig = curves_figure(panels, "test", "images", "PCK", strategies, "random")
    try:
        lowest = 100 * min(p.value.mean - p.value.half_width for pts in panels["blur"].values() for p in pts)
        highest = 100 * max(
            p.value.mean + p.value.half_width for pts in panels["clean"].values() for p in pts
        )
        for ax in fig.axes:
            lo, hi = ax.get_ylim()
            assert lo <= max(lowest, 0.0) and hi >= min(highest, 100.0), (lo, hi, lowest, highest)
            assert 0.0 <= lo and hi <= 100.0
            assert ax.get_legend() is None  # no per-panel legend over the curves
        (legend,) = fig.legends
        names = [t.get_text().split(" (")[0] for t in legend.get_texts()]
        assert names == strategies
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _verdict_of(rows, tmp_path) -> str:
    from activepose.experiment.stats import report_stats, verdict

    results = load_results(write_results(tmp_path, rows))
    stats_ = report_stats(results, {}, "random")
    return verdict(stats_.test_sets[0], "random")


def test_the_verdict_recommends_only_a_significant_win_and_names_a_significant_loss(tmp_path):
    rows = paired_grid()
    line = _verdict_of(rows, tmp_path / "a")
    assert line.startswith("Use hybrid on this data: +6.0 pp [") and "(3 seeds)" in line
    # uncertainty's +1 pp has an interval over 0: not a win; hybrid turned into a loss: said as one
    flipped = [
        {**r, "PCK": r["PCK"] - 2 * HYBRID_OFFSET[r["seed"]]}
        if r["strategy"] == "hybrid" and r["round"]
        else r
        for r in rows
    ]
    line = _verdict_of(flipped, tmp_path / "b")
    assert line.startswith(
        "Use random: no strategy beats it significantly on PCK (best: uncertainty, +1.0 pp"
    )
    assert "hybrid loses to random: -6.0 pp [" in line


def test_a_final_round_win_after_a_significant_loss_is_not_recommended(tmp_path):
    # hybrid behind random by its offset at round 1 (significantly), ahead by it at rounds 2 and 3
    rows = [
        {**r, "PCK": r["PCK"] - 2 * HYBRID_OFFSET[r["seed"]]}
        if r["strategy"] == "hybrid" and r["round"] == 1
        else r
        for r in paired_grid()
    ]
    line = _verdict_of(rows, tmp_path)
    assert line.startswith(
        "Use random: no strategy beats it significantly on PCK at every round (hybrid is ahead"
    )
    assert "+6.0 pp [" in line and "but behind at -6.0 pp [" in line


def _hybrid_significant_at(rounds) -> list[dict]:
    """paired_grid with hybrid's offset significant (HYBRID_OFFSET) at `rounds`, else not (UNCERT_OFFSET)."""
    return [
        {**r, "PCK": r["PCK"] - HYBRID_OFFSET[r["seed"]] + UNCERT_OFFSET[r["seed"]]}
        if r["strategy"] == "hybrid" and r["round"] and r["round"] not in rounds
        else r
        for r in paired_grid()
    ]


def test_a_strategy_significantly_ahead_at_two_rounds_is_recommended_with_those_rounds(tmp_path):
    # the goal counts rounds: ahead at all 3, significantly at rounds 1 and 2, not at the last
    line = _verdict_of(_hybrid_significant_at({1, 2}), tmp_path / "two")
    assert line.startswith(
        "Use hybrid on this data: significantly ahead of random at 2 of 3 rounds (+6.0 pp ["
    )
    assert "and ahead at the last, +1.0 pp [" in line and line.count("+6.0 pp [") == 2
    # one significant round is not enough
    line = _verdict_of(_hybrid_significant_at({1}), tmp_path / "one")
    assert line.startswith("Use random: no strategy beats it significantly on PCK")
    # nor are two when the strategy ends behind
    rows = [
        {**r, "PCK": r["PCK"] - 2 * UNCERT_OFFSET[r["seed"]]}
        if r["strategy"] == "hybrid" and r["round"] == 3
        else r
        for r in _hybrid_significant_at({1, 2})
    ]
    assert _verdict_of(rows, tmp_path / "behind").startswith("Use random")


def test_a_significant_loss_is_marked_worse_in_the_paired_table(tmp_path):
    rows = [
        {
            **r,
            "PCK": r["PCK"] - 2 * HYBRID_OFFSET[r["seed"]],
            "count_acc": r["count_acc"] - 2 * HYBRID_OFFSET[r["seed"]],
            "AP": r["AP"] - 2 * HYBRID_OFFSET[r["seed"]],
        }
        if r["strategy"] == "hybrid" and r["round"]
        else r
        for r in paired_grid()
    ]
    write_results(tmp_path, rows)
    page = write_report(tmp_path).read_text()
    assert page.count('<span class="worse">yes: worse</span>') == 3 * 3  # 3 metrics x rounds 1-3
    assert '<span class="yes">yes: better</span>' not in page
    assert "hybrid loses to random" in page


def test_simulate_prints_the_verdict_and_each_strategys_final_paired_differences(tmp_path):
    from activepose.commands.simulate import comparison_lines
    from activepose.experiment.results import Results

    # a compute control 2 pp below random at every later round (on every seed)
    rows = paired_grid()
    rows += [{**r, "strategy": "static", "PCK": r["PCK"] - (0.02 if r["round"] else 0.0)}
             for r in rows if r["strategy"] == "random"]  # fmt: skip
    lines = comparison_lines(load_results(write_results(tmp_path, rows)))
    assert lines[0].startswith("verdict (test, clean PCK): Use hybrid on this data: +6.0 pp [")
    by = {line.split(",")[0].strip(): line for line in lines[1:]}
    assert set(by) == {"random", "hybrid", "uncertainty"}  # no line for the control itself
    # hybrid: +6 pp over random (per-seed 4, 6, 8: half-width t * 2 / sqrt 3), +8 pp over the control
    half = 100 * T2 * 0.02 / 3**0.5
    assert f"vs random +6.0 pp [{6 - half:+.1f}, {6 + half:+.1f}]" in by["hybrid"]
    assert "vs static +8.0 pp [+" in by["hybrid"] and "final round (400 labels)" in by["hybrid"]
    # random is compared with the control only; equal per seed: an interval of zero width
    assert "vs random" not in by["random"] and "vs static +2.0 pp [+2.0, +2.0]" in by["random"]
    # without the reference strategy there is nothing to compare with
    no_random = [r for r in rows if r["strategy"] != "random"]
    assert comparison_lines(load_results(write_results(tmp_path / "b", no_random))) == []
    assert comparison_lines(Results()) == []


def test_markdown_tables_show_intervals_marked_differences_and_label_efficiency(tmp_path):
    from activepose.experiment.markdown import markdown_tables

    rows = paired_grid()
    rows += [{**r, "strategy": "static", "PCK": r["PCK"] - (0.02 if r["round"] else 0.0)}
             for r in rows if r["strategy"] == "random"]  # fmt: skip
    # hybrid's filter passes 0.6 % of the candidates in round 1 and none later, as on youtube_pose
    for r in rows:
        if r["strategy"] == "hybrid" and r["round"]:
            r["pass_rate"] = 0.006 if r["round"] == 1 else 0.0
    text = markdown_tables(load_results(write_results(tmp_path, rows)), {}, "random")
    assert text.startswith("## test: 3 seed(s) (0, 1, 2)")
    lines = text.splitlines()

    def table_after(title: str) -> dict[str, dict[str, str]]:
        """The Markdown table under the heading `title`: {first cell: {column: cell}}."""
        start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 2
        block = []
        for line in lines[start:]:
            if not line.startswith("|"):
                break
            block.append([c.strip() for c in line.strip("|").split("|")])
        assert len(block) > 2 and block[1][0] == "---"
        return {r[0]: dict(zip(block[0], r, strict=True)) for r in block[2:]}

    # the curve: random's round-1 mean 47.0 % over seeds 0.45 / 0.47 / 0.49 (half-width t * 2 pp / sqrt 3)
    pck = table_after("### PCK@0.2, clean")
    half = 100 * T2 * 0.02 / 3**0.5
    assert pck["1 (200)"]["random"] == f"47.0 ± {half:.1f}"
    # paired to random: hybrid +6 pp, its interval above 0 (marked), uncertainty +1 pp, not marked
    paired = table_after("### Paired difference to random")
    assert paired["1"]["hybrid"] == f"+6.0 [{6 - half:+.1f}, {6 + half:+.1f}]*"
    assert paired["1"]["uncertainty"].startswith("+1.0 [") and not paired["1"]["uncertainty"].endswith("*")
    # the control is 2 pp below random on every seed: a zero-width interval that excludes 0
    assert paired["3"]["static"] == "-2.0 [-2.0, -2.0]*"
    # random's final mean is 0.57 at 400 labels; hybrid reaches it between rounds 1 and 2
    eff = table_after("### Labels to reach random's final clean PCK@0.2 (57.0 %)")
    assert eff["random"]["labels to reach"] == "400"
    reach = float(eff["hybrid"]["labels to reach"])
    assert 200 < reach < 300
    assert eff["hybrid"]["of the labels random added"] == f"{100 * (reach - 100) / 300:.0f} %"
    assert eff["static"]["labels to reach"] == "not reached"
    # the diagnostics' pass rate, in % over rounds 1-3: 0.6 / 3 = 0.2 %, not a 0.00 that reads as "none"
    diag = table_after("### Why: selection diagnostics")
    assert diag["hybrid"]["pass rate %"] == "0.2"
    assert diag["random"]["pass rate %"] == ""


def test_report_command_rewrites_the_report_of_a_grid_and_refuses_what_it_cannot_read(tmp_path):
    from typer.testing import CliRunner

    from activepose.cli import app

    write_results(tmp_path / "grid", paired_grid())
    md = tmp_path / "tables.md"
    run = CliRunner().invoke(app, ["report", str(tmp_path / "grid"), "--markdown", str(md)])
    assert run.exit_code == 0, run.output
    assert "verdict (test, clean PCK): Use hybrid on this data" in run.output
    assert (tmp_path / "grid" / "report.html").is_file() and (tmp_path / "grid" / "paired.csv").is_file()
    assert "### Paired difference to random" in md.read_text()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "results.csv: not found" in missing.output
    other = CliRunner().invoke(app, ["report", str(tmp_path / "grid"), "--reference", "kmeans"])
    assert other.exit_code == 2 and "--reference 'kmeans' is not in" in other.output


def test_a_one_seed_verdict_says_so_instead_of_printing_a_nan_interval(tmp_path):
    line = _verdict_of([r for r in paired_grid() if r["seed"] == 0], tmp_path)
    assert "nan" not in line and "(one seed, no interval) at 400 labels" in line
