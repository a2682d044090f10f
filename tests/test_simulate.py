"""`activepose simulate`: a fair grid of strategies x seeds, its results.csv, refusals, and resume after SIGKILL."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import activepose.commands.simulate  # noqa: F401  (registers `simulate` until commands/__init__ does)
from activepose.cli import app
from activepose.config import SyntheticConfig
from activepose.errors import ConfigError
from activepose.experiment.grid import SimulationConfig, simulate
from activepose.experiment.outputs import write_report
from activepose.experiment.results import COLUMNS, TIMING_COLUMNS
from activepose.pose.synthetic import make_synthetic_coco
from activepose.project.store import Project
from activepose.workflow import resolve_train_config

from .conftest import synthetic_project_data

STRATEGIES, SEEDS, INITIAL, BUDGET, ROUNDS = ("hybrid", "random"), 2, 4, 3, 2
ARMS = (*STRATEGIES, "static")  # the compute control is added to every grid
TINY = ["--input-size", "64", "--width", "0.25", "--head-channels", "32", "--epochs", "2", "--workers", "0",
        "--no-pretrained", "--tta", "clean", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 16-image pool (ids 14-16 are test.json's images too), initial.json, and a second test file."""
    root, gt = synthetic_project_data(
        tmp_path_factory.mktemp("simdata"), num_images=16, n_initial=4, n_test=3
    )
    cfg = SyntheticConfig(num_images=3, image_size=(64, 64), max_people=2, min_people=1)
    other = make_synthetic_coco(root / "other", "lsp14", cfg, seed=11)  # stem "annotations"
    return root, gt, [root / "test.json", other]


def _config(data, **changes) -> SimulationConfig:
    _, gt, tests = data
    train = resolve_train_config(None, None, input_size=64, width=0.25, head_channels=32, max_epochs=2,
                                 num_workers=0, pretrained=False, device="cpu")  # fmt: skip
    kw = dict(pool=gt, tests=tests, initial=INITIAL, budget=BUDGET, rounds=ROUNDS, strategies=STRATEGIES,
              seeds=SEEDS, train=train, ttas=("clean",), device="cpu")  # fmt: skip
    return SimulationConfig(**{**kw, **changes})


def _args(data, out, *extra, seeds=SEEDS):
    _, gt, tests = data
    tests_args = [a for t in tests for a in ("--test", t)]
    return ["simulate", "--pool", gt, *tests_args, "--strategies", ",".join(STRATEGIES), "--seeds", seeds,
            "--initial", INITIAL, "--budget", BUDGET, "--rounds", ROUNDS, "--out", out, *TINY, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data):
    """The uninterrupted grid, in-process (one thread, as the subprocesses: the same float sums)."""
    out = tmp_path_factory.mktemp("straight") / "grid"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = simulate(_config(data), out)
    finally:
        torch.set_num_threads(threads)
    return out, result


def _rows(out) -> tuple[list[str], list[dict[str, str]]]:
    with (out / "results.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


# --- fairness ----------------------------------------------------------------------------------------------
def test_every_strategy_of_a_seed_starts_from_the_same_labels_and_model(grid):
    out, result = grid
    assert result.cells_total == len(ARMS) * SEEDS * (ROUNDS + 1) == result.cells_run
    initial_sets = []
    for seed in range(SEEDS):
        projects = {s: out / "projects" / f"{s}-seed{seed}" for s in STRATEGIES}
        first, chosen, configs, models = {}, {}, {}, {}
        for s, folder in projects.items():
            with Project.open(folder) as p:
                m1 = p.models()[0]
                first[s] = sorted(i for i in p.labelled_ids() if p.image(i).round is None)
                chosen[s] = [i for i, _, _ in p.round(1).items]
                assert [r.params["seed"] for r in p.rounds()] == [seed + r for r in range(1, ROUNDS + 1)]
                assert [r.strategy for r in p.rounds()] == [s] * ROUNDS
                models[s] = (m1.sha1, m1.train_size, m1.round)
                weights = torch.load(p.checkpoint_path(m1), map_location="cpu", weights_only=False)
            configs[s] = torch.load(folder / "checkpoints" / "run" / "last.pt", map_location="cpu",
                                    weights_only=False)["train_config"]  # fmt: skip
            first[s + "_weights"] = weights["model_state"]
        hybrid, random_ = STRATEGIES
        assert first[hybrid] == first[random_] and len(first[hybrid]) == INITIAL
        assert models[hybrid] == models[random_] and models[hybrid][1:] == (INITIAL, None)
        wa, wb = first[hybrid + "_weights"], first[random_ + "_weights"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert configs[hybrid] == configs[random_] and configs[hybrid]["seed"] == seed
        initial_sets.append(first[hybrid])
        assert chosen[hybrid] != chosen[random_], f"seed {seed}: both strategies chose {chosen[hybrid]}"
        assert not set(chosen[hybrid]) & {14, 15, 16}  # test images are never selected
        for folder in projects.values():  # round 1's montage (the report shows it); no later ones by default
            assert (folder / "exports" / "round_1" / "chosen.png").is_file()
            assert not (folder / "exports" / "round_2").exists()
    assert initial_sets[0] != initial_sets[1]  # each seed draws its own initial set


# --- results.csv -------------------------------------------------------------------------------------------
def test_results_have_one_row_per_cell_test_set_and_tta(grid, data):
    out, result = grid
    columns, rows = _rows(out)
    assert tuple(columns) == COLUMNS
    assert rows == result.rows
    stems = [t.stem for t in data[2]]
    keys = [(r["strategy"], r["seed"], r["round"], r["test_set"], r["tta"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(ARMS) * SEEDS * (ROUNDS + 1) * len(stems)
    assert {k[3] for k in keys} == set(stems) and {k[4] for k in keys} == {"clean"}
    for s in STRATEGIES:
        for seed in range(SEEDS):
            mine = [r for r in rows if (r["strategy"], r["seed"], r["test_set"]) == (s, str(seed), stems[0])]
            assert [int(r["round"]) for r in mine] == list(range(ROUNDS + 1))
            assert [int(r["labelled_images"]) for r in mine] == [
                INITIAL + r * BUDGET for r in range(ROUNDS + 1)
            ]
            cost = [float(r["annotation_seconds"]) for r in mine]
            people = [int(r["labelled_people"]) for r in mine]
            assert cost[0] == 0 and all(a < b for a, b in zip(cost, cost[1:], strict=False))
            for c, n in zip(cost[1:], people[1:], strict=True):
                assert 15 * (n - people[0]) - 1e-3 <= c <= 20 * (n - people[0]) + 1e-3
            assert float(mine[0]["selection_seconds"]) == 0 and all(
                float(r["training_seconds"]) > 0 for r in mine
            )
    for r in rows:
        for k in ("count_acc", "count_exact", "AP", "PCK"):
            assert r[k] == "" or 0 <= float(r[k]) <= 1
    for seed in range(SEEDS):  # round 0 is the same model on the same labels for every strategy
        zero = [
            _without_timing([r])[0] | {"strategy": ""}
            for r in rows
            if r["round"] == "0" and r["seed"] == str(seed)
        ]
        assert zero[: len(stems)] == zero[len(stems) : 2 * len(stems)] == zero[2 * len(stems) :]


def test_the_static_arm_trains_the_initial_set_with_the_schedule_the_others_get(grid, data):
    """The compute control: no new labels, and per round the same epochs and batches as the strategies' sessions."""
    from activepose.pose.train import read_sessions

    out, _ = grid
    _, rows = _rows(out)
    stem = data[2][0].stem
    for seed in range(SEEDS):
        static = [r for r in rows if (r["strategy"], r["seed"], r["test_set"]) == ("static", str(seed), stem)]
        random_ = [
            r for r in rows if (r["strategy"], r["seed"], r["test_set"]) == ("random", str(seed), stem)
        ]
        assert [int(r["labelled_images"]) for r in static] == [INITIAL] * (ROUNDS + 1)
        assert [r["schedule_images"] for r in static] == [r["labelled_images"] for r in random_]
        assert [float(r["annotation_seconds"]) for r in static] == [0.0] * (ROUNDS + 1)
        ours = read_sessions(out / "seeds" / str(seed) / "static_run")
        theirs = read_sessions(out / "projects" / f"random-seed{seed}" / "checkpoints" / "run")
        assert [s["session"] for s in ours] == [s["session"] for s in theirs] == list(range(1, ROUNDS + 2))
        assert {s["images"] for s in ours} == {INITIAL}
        assert [s["images"] for s in theirs] == [INITIAL + r * BUDGET for r in range(ROUNDS + 1)]
        # the schedule grows with the others' labels (more batches per epoch) and the control gets it too
        assert [(s["epochs"], s["steps"]) for s in ours] == [(s["epochs"], s["steps"]) for s in theirs]
        assert theirs[-1]["steps"] > theirs[0]["steps"]
        assert [r["train_steps"] for r in static] == [str(s["steps"]) for s in ours]
        assert all(r["train_stop"] in ("max_epochs", "converged", "early_stopping") for r in static + random_)
        assert all(r["model_kept"] in ("new", "previous") for r in static + random_)
        for r in range(1, ROUNDS + 1):
            assert (out / "seeds" / str(seed) / "static_run" / f"round_{r}.pt").is_file()


def test_a_finished_grid_run_again_does_nothing(grid, data):
    out, _ = grid
    before = (out / "results.csv").read_bytes()
    dbs = {p: p.stat().st_mtime_ns for p in (out / "projects").glob("*/project.db")}
    again = simulate(_config(data), out)
    assert again.cells_run == 0 and again.cells_before == again.cells_total
    assert (out / "results.csv").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in dbs} == dbs


# --- refusals ----------------------------------------------------------------------------------------------
def test_bad_grids_are_refused_before_any_work(tmp_path, data, grid):
    runner = CliRunner()
    out = tmp_path / "g"
    res = runner.invoke(app, [str(a) for a in _args(data, out)] + ["--rounds", "5"])  # 4 + 5 x 3 > 16 images
    assert res.exit_code == 2, res.output
    assert "= 19 images, but" in " ".join(res.output.split()) and not out.exists()
    # fits the file's 16 images, not the 13 usable ones (3 are test images): refused before any training
    with pytest.raises(ConfigError, match="only 13 of 16 pool images can be used"):
        simulate(_config(data, rounds=4), out)
    assert not out.exists()
    for bad, match in ((dict(strategies=("hybrid", "best")), "unknown strategy 'best'"),
                       (dict(seeds=0), "--seeds must be >= 1"), (dict(initial=0), "--initial must be >= 1")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            _config(data, **bad)
    # another grid into a finished grid's folder: exit 2 naming the difference, nothing changed
    done, _ = grid
    before = (done / "results.csv").read_bytes()
    res = runner.invoke(app, [str(a) for a in _args(data, done)] + ["--budget", "2"])
    assert res.exit_code == 2 and "holds another simulation grid" in res.output, res.output
    assert "budget: 3 in grid.json, 2 now" in " ".join(res.output.split())
    assert (done / "results.csv").read_bytes() == before


# --- resume after SIGKILL ------------------------------------------------------------------------------------
_MAIN = "import activepose.commands.simulate; from activepose.cli import app; app()"


def _cli(*args, kill=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEPOSE_KILL_AT"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **({"ACTIVEPOSE_KILL_AT": kill} if kill else {}))
    return subprocess.run([sys.executable, "-c", _MAIN, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_killed_grid_resumes_to_the_uninterrupted_results(tmp_path, data, grid):
    """Killed twice (mid-training, mid-selection), then run to the end: the rows equal the uninterrupted grid's.

    One seed here: a seed's cells do not depend on the other seeds of the grid, so they equal seed 0's rows of
    the two-seed grid run in-process.
    """
    out = tmp_path / "grid"
    args = _args(data, out, seeds=1)
    # train:6 = the 2nd epoch of random-seed0's round 1 (the initial model and hybrid's round 1 trained before)
    proc = _cli(*args, kill="train:6")
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    _, rows = _rows(out)
    assert {(r["strategy"], r["round"]) for r in rows} == {
        ("hybrid", "0"),
        ("random", "0"),
        ("static", "0"),
        ("hybrid", "1"),
    }
    with Project.open(out / "projects" / "random-seed0") as p:
        assert p.round(1).state == "labelled"  # killed mid-training
    # resumed (random's round 1 finishes its training), then killed while hybrid's round 2 is being chosen
    proc = _cli(*args, kill="select:2")
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    with Project.open(out / "projects" / "hybrid-seed0") as p:
        assert len(p.rounds()) == 1
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert (
        "mean clean count_acc / PCK" in text and f"results: {out / 'results.csv'}" in text and "next:" in text
    )
    columns, rows = _rows(out)
    assert tuple(columns) == COLUMNS
    expected = [r for r in _rows(grid[0])[1] if r["seed"] == "0"]
    assert _without_timing(rows) == _without_timing(expected)
    assert all(r["selection_seconds"] != "" and r["training_seconds"] != "" for r in rows)
    for folder in (out / "projects").iterdir():
        with Project.open(folder) as p:
            assert [r.state for r in p.rounds()] == ["closed"] * ROUNDS


# --- presets -----------------------------------------------------------------------------------------------
def test_presets_fill_the_grid_options_not_given_and_name_what_is_missing():
    from activepose.workflow.presets import PRESETS, simulation_settings

    paper = simulation_settings("paper")
    assert (paper["initial"], paper["budget"]) == (2000, 1000)  # the paper's schedule
    cpu = simulation_settings("cpu", budget=50)
    assert cpu["budget"] == 50 and cpu["rounds"] >= 4 and cpu["tta"] == "clean,blur"
    with pytest.raises(ConfigError, match="give --initial, --budget, --rounds"):
        simulation_settings(None)
    assert simulation_settings(None, initial=4, budget=3, rounds=2)["tta"] == "all"
    # the paper preset is the paper's training: VGG-tiny at 368 px, batch 4, Adam 1e-4, patience 35
    t = resolve_train_config(None, "paper")
    assert (t.backbone, t.input_size, t.batch_size, t.lr, t.patience) == ("vgg_tiny", 368, 4, 1e-4, 35)
    c = resolve_train_config(None, "cpu")
    assert c.frozen_trunk and c.train_crop < c.input_size and c.augment is not None and c.cached_views > 0
    assert set(PRESETS) >= {"paper", "cpu", "small", "gpu"}
    # converged rounds: the cpu and gpu presets stop by validation PCK, with a cap that grows with the labels
    g = resolve_train_config(None, "gpu")
    for t in (c, g):
        assert (t.lr_schedule, t.val_metric) == ("plateau", "pck") and t.steps_per_image is not None
    assert not g.frozen_trunk and g.augment is not None and g.precision == "bf16" and g.batch_size >= 32
    assert g.num_workers > 0
    gpu = simulation_settings("gpu")
    assert (gpu["initial"], gpu["budget"], gpu["rounds"]) == (cpu["initial"], 300, cpu["rounds"])
    # footage: the cpu learner, small budgets on video frames, clean + blur + dark
    f, footage = resolve_train_config(None, "footage"), simulation_settings("footage")
    assert f.frozen_trunk and (f.lr_schedule, f.val_metric) == ("plateau", "pck")
    assert f.min_epochs * f.steps_per_epoch >= 320  # cold start from 32 frames needs the batches
    assert (footage["initial"], footage["budget"], footage["rounds"]) == (32, 32, 4)
    assert set(footage["tta"].split(",")) == {"clean", "blur", "dark"}


def test_simulate_without_a_schedule_or_preset_is_refused(tmp_path, data):
    _, gt, tests = data
    res = CliRunner().invoke(app, ["simulate", "--pool", str(gt), "--test", str(tests[0]), "--out",
                                   str(tmp_path / "g"), "--budget", "3", *TINY])  # fmt: skip
    assert res.exit_code == 2 and "give --initial, --rounds" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "g").exists()


# --- what each strategy chose ----------------------------------------------------------------------------
def test_choices_say_what_each_strategy_chose_per_round(grid, data):
    from activepose.experiment.choices import choices_table, round_choices
    from activepose.pose.coco import load_coco
    from activepose.pose.evaluate import gt_person_count

    out, _ = grid
    _, gt_path, _ = data
    gt = load_coco(gt_path)
    people_of = {Path(f.file_name).name: gt_person_count(f.keypoints) for f in gt.frames}
    choices = round_choices(out)
    assert sorted((c.strategy, c.seed, c.round) for c in choices) == sorted(
        (s, seed, r) for s in STRATEGIES for seed in range(SEEDS) for r in range(1, ROUNDS + 1)
    )
    for c in choices:
        with Project.open(out / "projects" / f"{c.strategy}-seed{c.seed}", readonly=True) as p:
            ids = [i for i, _, _ in p.round(c.round).items]
            assert c.images == len(ids) == BUDGET
            assert c.people == sum(people_of[p.image_path(i).name] for i in ids)  # the oracle's labels
        if c.strategy == "hybrid":
            assert c.candidates is not None and 0 <= c.uncertain <= c.candidates
            assert 0 <= c.pass_rate <= 1
        else:
            assert c.uncertain is None and math.isnan(c.pass_rate)
    table = choices_table(choices)
    assert [(r["strategy"], r["round"]) for r in table] == sorted({(c.strategy, c.round) for c in choices})
    assert all(r["seeds"] == SEEDS for r in table)
    write_report(out)
    assert "What each strategy chose" in (out / "report.html").read_text()
    with (out / "choices.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(choices)


def test_a_strategy_can_be_added_to_a_grid_and_starts_from_the_same_initial_model(grid, data, tmp_path):
    import shutil

    done, _ = grid
    out = tmp_path / "grid"
    shutil.copytree(done, out)
    before = _rows(out)[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        simulate(_config(data, strategies=(*STRATEGIES, "diversity")), out)
    finally:
        torch.set_num_threads(threads)
    after = _rows(out)[1]
    assert [r for r in after if r["strategy"] != "diversity"] == before  # nothing else changed
    added = [r for r in after if r["strategy"] == "diversity"]
    assert {(int(r["seed"]), int(r["round"])) for r in added} == {
        (s, r) for s in range(SEEDS) for r in range(ROUNDS + 1)
    }
    for row in (r for r in added if r["round"] == "0"):
        twin = next(b for b in before if b["strategy"] == "random" and b["seed"] == row["seed"] and b["round"] == "0"
                    and b["test_set"] == row["test_set"] and b["tta"] == row["tta"])  # fmt: skip
        assert {k: row[k] for k in METRIC_KEYS} == {k: twin[k] for k in METRIC_KEYS}
    with pytest.raises(ConfigError, match="holds another simulation grid"):  # fewer strategies: refused
        simulate(_config(data, strategies=("hybrid",)), out)


def test_a_grid_without_the_control_has_no_static_arm(data):
    assert "static" not in _config(data, control=False).strategies
    assert _config(data).strategies == ARMS
    assert _config(data, strategies=("static", "random")).strategies == ("static", "random")


METRIC_KEYS = ("labelled_images", "count_acc", "count_exact", "AP", "PCK")


def test_rows_carry_the_per_round_diagnostics(grid):
    """Why a strategy won or lost: the uncertainty's informativeness on the test set (every model) and on the
    batch just labelled (its selector, rounds >= 1), the filter's pass rate and the batch's coverage (hybrid);
    nothing for the static arm, which chooses nothing. Each figure is computed once (kept as JSON)."""
    out, _ = grid
    _, rows = _rows(out)
    clean = [r for r in rows if r["tta"] == "clean"]
    for row in clean:
        strategy, r = row["strategy"], int(row["round"])
        if strategy == "static":
            assert all(row[c] == "" for c in ("batch_auroc", "pass_rate", "coverage"))
            continue
        for c in ("test_spearman", "batch_spearman"):
            if row[c]:
                assert -1.0 <= float(row[c]) <= 1.0
        if r >= 1:
            # coverage where the strategy computed embeddings (random does not: it needs no extractor)
            assert (row["coverage"] != "") == (strategy == "hybrid") and float(row["coverage"] or 0) >= 0
            assert (row["pass_rate"] != "") == (strategy == "hybrid")
            if strategy == "hybrid":
                assert 0.0 <= float(row["pass_rate"]) <= 1.0
            folder = out / "projects" / f"{strategy}-seed{row['seed']}" / "exports"
            assert (folder / f"diagnostics_v2_round_{r}.json").is_file()
        else:
            assert row["batch_auroc"] == row["pass_rate"] == ""
    page = (out / "report.html").read_text()
    assert "Why: per-round diagnostics" in page and 'class="verdict"' in page


def test_an_older_results_csv_gets_the_diagnostics_on_resume(grid, data, tmp_path):
    """A grid finished before the diagnostic columns existed: running it again adds them to its finished cells
    from the stored projects (no training), the same values as a grid that had them from the start."""
    import shutil

    from activepose.experiment.diagnostics import COLUMNS as DIAG

    out, _ = grid
    copy = tmp_path / "grid"
    shutil.copytree(out, copy)
    header, rows = _rows(copy)
    old = [c for c in header if c not in DIAG]
    with (copy / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=old, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result = simulate(_config(data), copy)
    assert result.cells_run == 0
    header2, rows2 = _rows(copy)
    assert set(DIAG) <= set(header2)
    assert _without_timing(rows2) == _without_timing(rows)


def test_a_grid_carried_without_its_projects_and_with_relative_paths_resumes(
    grid, data, tmp_path, monkeypatch
):
    """Finished seeds kept elsewhere as results.csv + grid.json (data paths relative to where the grid runs, no
    projects, no cache): running the command again there finds every cell done and changes nothing."""
    import json

    out, _ = grid
    copy = tmp_path / "carried"
    copy.mkdir()
    (copy / "results.csv").write_bytes((out / "results.csv").read_bytes())
    stored = json.loads((out / "grid.json").read_text())
    here = Path(data[1]).parent.parent
    cfg = stored["config"]
    cfg["pool"] = os.path.relpath(cfg["pool"], here)
    cfg["tests"] = [os.path.relpath(t, here) for t in cfg["tests"]]
    assert not Path(cfg["pool"]).is_absolute()
    (copy / "grid.json").write_text(json.dumps(stored))
    before = (copy / "results.csv").read_bytes()
    monkeypatch.chdir(here)
    result = simulate(_config(data), copy)
    assert result.cells_run == 0 and result.cells_before == result.cells_total
    assert (copy / "results.csv").read_bytes() == before
    assert not (copy / "projects").exists()
    # a relative path that names other data is still another grid
    cfg["pool"] = "elsewhere/pool.json"
    (copy / "grid.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="holds another simulation grid"):
        simulate(_config(data), copy)
