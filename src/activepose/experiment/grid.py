"""The simulation grid: strategies x seeds of simulated active learning, fair by construction and resumable.

Per seed `s` there is ONE initial labelled set (a seeded subset of the pool, `initial` images with people)
and ONE initial model trained once on it (`DIR/seeds/<s>/initial_run`). Every strategy gets its own project
(`DIR/projects/<strategy>-seed<s>`, made by `workflow.create_project` with that initial set as its labels and
the first test file as its test set) into which the initial run is copied and recorded as its first model
(the same weights, the same sha1, for every strategy of the seed). From there each project is driven by
`activepose.loop.run` one round at a time with the simulated oracle (ground truth: the pool file), so the
simulation has no round logic of its own. Everything that decides a result is seeded by `s`: the initial
set, training (`TrainConfig.seed = s`), selection (seed `s + round`, as `loop.run` does) and the oracle's
label cost; every strategy trains with the same `TrainConfig`.

The compute control `static` (added unless `control=False`) is not a project: per seed its run
(`seeds/<s>/static_run`) retrains the initial set each round with the schedule the strategies get that round and
no new labels (`_static_cell`), so "strategy - static" is what the labels bought beyond the extra training.

A *cell* is one (strategy, seed, round); round 0 is the initial model. When a cell is complete its rows (one
per test file and TTA) are added to `DIR/results.csv`, which is rewritten atomically; a re-run skips the cells
it holds, and a cell interrupted mid-round continues from its project's stored state (the loop does that).

results.csv's columns, and its reader and writer, are `results.py`'s; the folder's names are `layout.py`'s.

Layout of DIR: `grid.json` (the config, the command, the activepose version), `results.csv`, `.lock`,
`seeds/<s>/` (`initial.json`, `initial_run/`, `metrics_<test>.json`: the initial model on each test file),
`projects/<strategy>-seed<s>/` (ordinary projects: `activepose status` works on them; the rounds' models
on the other test files are in `exports/metrics_model_<id>_<test>.json`), `cache/` (embeddings, uncertainty
scores and frozen-trunk features shared by every project), and the report when written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import (
    STATIC_ARM,
    STRATEGIES,
    TTA_NAMES,
    EvalOptions,
    SelectionConfig,
    SelectOptions,
    TrainConfig,
    check_device,
)
from ..errors import ConfigError, StateError
from ..fileio import ImageReadError, atomic_write, atomic_write_json, probe_image
from ..lock import project_lock
from ..loop import RunOptions, run
from ..oracle.simulated import SimulatedLabeller
from ..pose.coco import CocoKeypoints, save_coco
from ..pose.skeleton import same_keypoints
from ..project.schema import DB_NAME
from ..project.store import Project
from ..workflow.common import load_data, parallel_map
from ..workflow.create import ProjectSource, create_project
from ..workflow.curve import is_evaluated
from ..workflow.models import load, record_model
from ..workflow.reporting import SILENT, Reporter
from ..workflow.rounds import RUN_DIR, evaluate_model_on
from .diagnostics import cell_diagnostics
from .layout import CACHE, GRID_FILE, PROJECTS, RESULTS_FILE, project_name
from .results import METRIC_COLUMNS, Results, check_rewritable, load_results, row_text, write_results

# Settings that change no result: a resumed grid may change them (another device, more workers, montages).
UNCOMPARED_KEYS = frozenset(
    {
        "device",
        "train.device",
        "train.num_workers",
        "train.feature_cache",
        "montages",
        "selection.engine",
        "selection.ray_address",
    }  # where scoring runs does not change what a grid measures
)


@dataclass
class SimulationConfig:
    """One simulation grid. Invalid values raise ConfigError naming the option, before any work.

    `seeds`: a count n (seeds 0..n-1) or a list of seeds (each >= 0). `train` is the training every project
    uses (its `seed` is replaced by each grid seed); `selection` the selection settings (its `seed` is
    replaced by seed + round; its `cache_dir` must be unset: every project of the grid caches embeddings,
    uncertainty scores and trunk features in `DIR/cache`, keyed by image content and model, so a pool image's
    embedding or trunk features are computed once for the whole grid).
    `device` is used for selection and evaluation; training uses `train.device`.
    """

    pool: Path
    tests: Sequence[Path]
    initial: int
    budget: int
    rounds: int
    strategies: Sequence[str] = ("hybrid", "random")
    seeds: int | Sequence[int] = 3
    train: TrainConfig = field(default_factory=TrainConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    ttas: Sequence[str] = TTA_NAMES
    eval_max_images: int | None = None
    device: str = "auto"
    montages: bool = (
        False  # every round's selection montages (exports/round_<r>/); round 1's are always written
    )
    # The compute control: a `static` arm per seed (see `_static_cell`), added unless False or already named.
    control: bool = True

    def __post_init__(self) -> None:

        self.pool = Path(self.pool)
        self.tests = tuple(
            Path(t) for t in ([self.tests] if isinstance(self.tests, str | Path) else self.tests)
        )
        self.strategies = tuple(self.strategies)
        if self.control and STATIC_ARM not in self.strategies and self.strategies:
            self.strategies = (*self.strategies, STATIC_ARM)
        self.ttas = tuple(self.ttas)
        if isinstance(self.seeds, bool):
            raise ConfigError(f"--seeds must be a count or a list of seeds, got {self.seeds!r}")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")
            self.seeds = tuple(range(self.seeds))
        else:
            self.seeds = tuple(int(s) for s in self.seeds)
            if not self.seeds:
                raise ConfigError("--seeds names no seed")
            if min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(
                    f"--seeds must be distinct seeds >= 0, got {', '.join(map(str, self.seeds))}"
                )
        if not self.strategies:
            raise ConfigError("--strategies names no strategy")
        unknown = [s for s in self.strategies if s not in STRATEGIES and s != STATIC_ARM]
        if unknown:
            raise ConfigError(
                f"unknown strategy {', '.join(map(repr, unknown))} in --strategies; choose from "
                f"{', '.join(STRATEGIES)} (and {STATIC_ARM}, the compute control)"
            )
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"--strategies repeats a strategy: {','.join(self.strategies)}")
        for name, value, low in (("--initial", self.initial, 1), ("--budget", self.budget, 1),
                                 ("--rounds", self.rounds, 1)):  # fmt: skip
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        if self.eval_max_images is not None and self.eval_max_images < 1:
            raise ConfigError(f"--eval-max-images must be >= 1, got {self.eval_max_images}")
        EvalOptions(ttas=self.ttas, max_images=self.eval_max_images)  # validates the TTA names
        check_device(self.device)
        if self.selection.cache_dir is not None:
            raise ConfigError(
                "the selection cache_dir must be unset: the simulated projects share the grid's DIR/cache"
            )
        if not self.tests:
            raise ConfigError("give at least one --test TEST.json")
        stems = [t.stem for t in self.tests]
        if len(set(stems)) != len(stems):
            raise ConfigError(
                f"--test files must have distinct names (results name a test set by its file stem): {', '.join(stems)}"
            )
        for path in (self.pool, *self.tests):
            if not path.is_file():
                raise ConfigError(f"{path}: no such file")
        pool = load_data(self.pool, check_images=False)
        need = self.initial + self.rounds * self.budget
        if need > len(pool):
            raise ConfigError(
                f"--initial {self.initial} + --rounds {self.rounds} x --budget {self.budget} = {need} images, but "
                f"{self.pool} has {len(pool)}; lower --initial, --rounds or --budget"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the grid as plain JSON values (paths absolute), as stored in grid.json."""
        sel = dataclasses.asdict(self.selection)
        sel.pop("seed", None)  # replaced by seed + round
        return json.loads(json.dumps({
            "pool": str(self.pool.resolve()), "tests": [str(t.resolve()) for t in self.tests],
            "strategies": list(self.strategies), "seeds": list(self.seeds), "initial": self.initial,
            "budget": self.budget, "rounds": self.rounds, "train": {k: v for k, v in self.train.to_dict().items()
                                                                    if k != "seed"},
            "selection": sel, "ttas": list(self.ttas), "eval_max_images": self.eval_max_images,
            "device": self.device, "montages": self.montages, "control": self.control,
        }, default=str))  # fmt: skip

    def train_config(self, seed: int, cache: Path | None = None):
        """Return the TrainConfig of every project of `seed` (and of its initial model).

        `cache`: the grid's cache folder; frozen-trunk features go to `cache/trunk` unless `train` names a folder.
        """
        cfg = dataclasses.replace(self.train, seed=seed, budget_ends_session=True)
        if cache is not None and cfg.feature_cache is None:
            cfg = dataclasses.replace(cfg, feature_cache=str(cache / "trunk"))
        return cfg

    def eval_options(self, test: Path | None):

        return EvalOptions(test=test, ttas=self.ttas, max_images=self.eval_max_images, device=self.device)


@dataclass
class SimulationResult:
    out_dir: Path
    results: Path  # results.csv
    rows: list[dict[str, str]]  # every row of results.csv (strings, as written)
    cells_total: int
    cells_run: int  # cells this call completed
    cells_before: int  # cells already complete when it started
    seconds: float
    report: Path | None = None  # report.html (activepose.experiment.outputs), when that module exists
    # results.csv as read once at the end (`rows` is its text)
    parsed: Results = field(default_factory=Results)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _setting_defaults() -> dict[str, Any]:
    """Return the flattened defaults of the training and selection settings (as `to_dict` writes them)."""
    train = json.loads(json.dumps(TrainConfig().to_dict(), default=str))
    selection = json.loads(json.dumps(dataclasses.asdict(SelectionConfig()), default=str))
    return _flatten({"train": train, "selection": selection})


def grid_differences(stored: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """Return 'key: stored X, asked Y' for every grid setting that differs (`UNCOMPARED_KEYS` ignored).

    A setting a grid.json does not hold (written before that setting existed) counts as its default.
    """
    a, b = _flatten(stored), _flatten(asked)
    defaults = _setting_defaults()
    for k in set(b) - set(a):
        if k in defaults:
            a[k] = defaults[k]
    return [
        f"{k}: {a.get(k, '(unset)')!r} in {GRID_FILE}, {b.get(k, '(unset)')!r} now"
        for k in sorted(set(a) | set(b))
        if k not in UNCOMPARED_KEYS and a.get(k) != b.get(k)
    ]


def _check_out_dir(out_dir: Path, cfg: SimulationConfig) -> bool:
    """Raise ConfigError unless `out_dir` is new, empty or holds this very grid; return whether it holds it."""
    grid = out_dir / GRID_FILE
    if grid.is_file():
        try:
            stored = json.loads(grid.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{grid}: unreadable grid file ({exc})") from exc
        asked = cfg.to_dict()
        # Data paths stored relative (a grid folder carried to another machine) are relative to where it runs.
        for key in ("pool", "tests"):
            value = stored.get(key)
            if isinstance(value, str):
                stored[key] = str(Path(value).resolve())
            elif isinstance(value, list):
                stored[key] = [str(Path(v).resolve()) if isinstance(v, str) else v for v in value]
        # More strategies on the same grid are fine: per seed they start from the same initial set and model.
        if set(stored.get("strategies", ())) <= set(asked["strategies"]):
            stored = {**stored, "strategies": asked["strategies"]}
        diff = grid_differences(stored, asked)
        if diff:
            raise ConfigError(
                f"{out_dir} holds another simulation grid; use another --out, or the same settings to resume it: "
                + "; ".join(diff)
            )
        return True
    # hidden entries: the folder's lock and temporary files, left by a run killed before it wrote grid.json
    if out_dir.exists() and (
        not out_dir.is_dir() or any(not p.name.startswith(".") for p in out_dir.iterdir())
    ):
        raise ConfigError(
            f"{out_dir}: not empty and holds no {GRID_FILE}: refusing to write a simulation there"
        )
    return False


# --- the pool ------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    pool: CocoKeypoints
    candidates: list[int]  # usable pool ids with people: the initial sets are drawn from these
    test_ids: list[int]  # pool ids whose image is in a test file (never selected, never labelled)
    skipped: list[str]


def _plan(cfg: SimulationConfig, reporter: Reporter) -> _Plan:
    """Probe the pool and test images (as project creation does) and check that the grid fits the pool."""

    def probe(path: Path):
        try:
            return probe_image(path), None
        except (ImageReadError, OSError) as exc:
            return None, str(exc)

    pool = load_data(cfg.pool, check_images=False)
    test_hashes: set[str] = set()
    for test in cfg.tests:
        data = load_data(test, check_images=False)
        same_keypoints(str(test), data.skeleton, pool.skeleton, f"the pool's ({cfg.pool})")
        probes = parallel_map(probe, [data.image_path(f) for f in data], f"reading {test.name}", reporter)
        bad = [why for info, why in probes if info is None]
        if bad:
            raise ConfigError(f"{test}: {len(bad)} unreadable test image(s): " + "; ".join(bad[:5]))
        test_hashes |= {info[2] for info, _ in probes}
    probes = parallel_map(probe, [pool.image_path(f) for f in pool], "reading pool images", reporter)
    usable, test_ids, skipped = [], [], []
    for f, (info, why) in zip(pool, probes, strict=True):
        if info is None:
            skipped.append(f"image id {f.image_id}: {why}")
        elif (info[0], info[1]) != (f.width, f.height):
            skipped.append(f"image id {f.image_id}: {cfg.pool.name} says {f.width}x{f.height}, the file is "
                           f"{info[0]}x{info[1]}")  # fmt: skip
        elif info[2] in test_hashes:
            test_ids.append(f.image_id)
        else:
            usable.append(f)
    need = cfg.initial + cfg.rounds * cfg.budget
    if need > len(usable):
        raise ConfigError(
            f"--initial {cfg.initial} + --rounds {cfg.rounds} x --budget {cfg.budget} = {need} images, but only "
            f"{len(usable)} of {len(pool)} pool images can be used ({len(test_ids)} are test images, "
            f"{len(skipped)} unreadable); lower --initial, --rounds or --budget"
        )
    candidates = [f.image_id for f in usable if f.num_people > 0]
    if cfg.initial > len(candidates):
        raise ConfigError(
            f"--initial {cfg.initial}: only {len(candidates)} usable pool images have people in them"
        )
    return _Plan(pool, sorted(candidates), sorted(test_ids), skipped)


# --- per seed: the initial set and model ---------------------------------------------------------------------
def _initial_set(cfg: SimulationConfig, plan: _Plan, seed: int, folder: Path) -> Path:
    """Write (once) and return `folder/initial.json`: the seed's initial labelled set, drawn from the pool."""
    import numpy as np

    path = folder / "initial.json"
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    ids = sorted(int(i) for i in rng.choice(plan.candidates, size=cfg.initial, replace=False))
    subset = plan.pool.subset(ids)
    folder.mkdir(parents=True, exist_ok=True)
    frames = [
        dataclasses.replace(f, file_name=Path(os.path.relpath(plan.pool.image_path(f).resolve(),
                                                             folder.resolve())).as_posix())
        for f in subset
    ]  # fmt: skip
    save_coco(dataclasses.replace(subset, frames=frames, root=folder, path=path), path)
    return path


def _initial_model(cfg: SimulationConfig, seed: int, folder: Path, initial: Path, reporter: Reporter) -> Path:
    """Train (or resume, or find finished) the seed's initial model; return its run folder."""
    from ..pose.train import train

    run_dir = folder / "initial_run"
    # budget_ends_session (as in train_round): a time budget completes the session, so the copy that every
    # strategy starts from is never half of one
    train(cfg.train_config(seed, folder.parents[1] / CACHE), load_data(initial), run_dir, reporter)
    return run_dir


def _evaluate_cached(path: Path, loaded_fn, test: Path, opts, reporter: Reporter) -> dict:
    """Return {tta: metrics} of a model on `test`, read from `path` or computed and written there."""

    if path.is_file():
        return json.loads(path.read_text())
    report = evaluate_model_on(loaded_fn(), test, opts, reporter)
    atomic_write_json(path, report, indent=1)
    return json.loads(path.read_text())  # as stored (NaN -> null), so a fresh and a cached read agree


def _initial_metrics(
    cfg: SimulationConfig, folder: Path, run_dir: Path, reporter: Reporter
) -> dict[str, dict]:
    """Return {test stem: {tta: metrics}} of the seed's initial model on every test file (cached per file)."""

    loaded: list[Any] = []

    def model():
        if not loaded:
            loaded.append(load(run_dir / "best.pt", cfg.device))
        return loaded[0]

    return {
        t.stem: _evaluate_cached(folder / f"metrics_{t.stem}.json", model, t, cfg.eval_options(t), reporter)
        for t in cfg.tests
    }


# --- per (strategy, seed): the project ----------------------------------------------------------------------
def _copy_file(src: Path, dst: Path) -> None:
    def copy(fh) -> None:
        with src.open("rb") as s:
            shutil.copyfileobj(s, fh)

    atomic_write(dst, copy)


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a run folder's files; last.pt last, so a copy cut short is never taken for a complete one."""
    files = [f for f in sorted(src.iterdir()) if f.is_file() and not f.name.startswith(".")]
    for f in sorted(files, key=lambda f: f.name == "last.pt"):
        _copy_file(f, dst / f.name)


def _setup_project(cfg: SimulationConfig, plan: _Plan, folder: Path, initial: Path, run_dir: Path,
                   metrics: dict[str, dict], reporter: Reporter) -> None:  # fmt: skip
    """Create the project (once), copy the seed's initial run in, record it as model 1 and its evaluation."""

    if not (folder / "project.db").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        create_project(folder, ProjectSource(pool=cfg.pool, labels=initial, test=cfg.tests[0]), reporter)
        reporter.note(f"created {folder}")
    with Project.open(folder) as project:
        others = [i for i in plan.test_ids if project.image(i).state == "unlabelled"]
        if others:  # pool images of the other test files: never selected either
            project.set_image_state(others, "test")
        if not project.models():
            labelled = len(project.labelled_ids())
            if labelled != cfg.initial:
                raise StateError(f"{folder}: {labelled} initial labels stored, expected {cfg.initial}")
            _copy_run(run_dir, folder / RUN_DIR)
            record_model(project, folder / RUN_DIR / "best.pt", labelled, reporter)
        first = project.models()[0]
        stem = cfg.tests[0].stem
        exports = folder / "exports"
        # the initial model's metrics on the other test files, where later rounds cache theirs
        for t in cfg.tests[1:]:
            target = exports / f"metrics_model_{first.id}_{t.stem}.json"
            if not target.is_file():
                atomic_write_json(target, metrics[t.stem], indent=1)
        if not is_evaluated(first.metrics):
            atomic_write_json(exports / f"metrics_model_{first.id}.json", metrics[stem], indent=1)
            project.record_evaluation(first.id, metrics[stem])


def _session_seconds(run_dir: Path, session: int) -> float:
    path = run_dir / "history.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    return float(sum(h.get("seconds", 0.0) for h in history if h.get("session") == session))


def _cell_rows(cfg: SimulationConfig, folder: Path, strategy: str, seed: int, r: int,
               reporter: Reporter) -> list[dict[str, str]]:  # fmt: skip
    """Return the rows of cell (strategy, seed, r) from the project's stored state (evaluating as needed)."""

    with Project.open(folder) as project:
        models = {m.id: m for m in project.models()}
        if r == 0:
            model, selection = project.models()[0], 0.0
        else:
            info = project.round(r)
            if info.state != "closed" or info.model_id is None:
                raise StateError(f"{folder}: round {r} is {info.state!r}, not closed")
            model = models[info.model_id]
            selection = float(((info.params.get("stats") or {}).get("seconds") or {}).get("total") or 0.0)
        summary = project.round_summary()
        ckpt = project.checkpoint_path(model)
    empty = {"images": 0, "people": 0, "seconds": 0.0}
    parts = [summary.get(None, empty)] + [summary.get(k, empty) for k in range(1, r + 1)]
    images = sum(int(p["images"]) for p in parts)
    people = sum(int(p["people"]) for p in parts)
    annotation = sum(float(p["seconds"]) for p in parts[1:])
    training = _session_seconds(folder / RUN_DIR, r + 1)
    session = _session(folder / RUN_DIR, r + 1)
    per_test = {cfg.tests[0].stem: {k: v for k, v in model.metrics.items() if isinstance(v, dict)}}
    loaded: list[Any] = []

    def load_model():
        if not loaded:
            loaded.append(load(ckpt, cfg.device))
        return loaded[0]

    for t in cfg.tests[1:]:
        target = folder / "exports" / f"metrics_model_{model.id}_{t.stem}.json"
        per_test[t.stem] = _evaluate_cached(target, load_model, t, cfg.eval_options(t), reporter)
    diagnostics = cell_diagnostics(folder, r, ckpt, model.id, cfg.tests[0], cfg.eval_options(cfg.tests[0]),
                                   cfg.selection, folder.parent.parent / CACHE, cfg.device)  # fmt: skip
    values = {"strategy": strategy, "seed": seed, "round": r, "labelled_images": images, "labelled_people": people,
              "annotation_seconds": annotation, "selection_seconds": selection, "training_seconds": training,
              "schedule_images": images, **_session_values(session), **diagnostics}  # fmt: skip
    return _rows(cfg, values, per_test)


def _rows(cfg: SimulationConfig, values: dict[str, Any], per_test: dict[str, dict]) -> list[dict[str, str]]:
    """Return a cell's results.csv rows: `values` + each test file's and TTA's metrics from `per_test`."""
    rows = []
    for t in cfg.tests:
        for tta in cfg.ttas:
            m = per_test[t.stem].get(tta, {})
            rows.append(
                row_text({**values, "test_set": t.stem, "tta": tta, **{k: m.get(k) for k in METRIC_COLUMNS}})
            )
    return rows


def _session(run_dir: Path, session: int) -> dict[str, Any]:
    """Return the summary of a run's completed session (`pose.train.read_sessions`; {} when there is none)."""
    from ..pose.train import read_sessions

    return next((s for s in read_sessions(run_dir) if s.get("session") == session), {})


def _session_values(session: dict[str, Any]) -> dict[str, Any]:
    return {"train_steps": session.get("steps"), "train_stop": session.get("stopped"),
            "model_kept": session.get("kept")}  # fmt: skip


def _add_diagnostics(cfg: SimulationConfig, out_dir: Path, rows: list[dict[str, str]],
                     reporter: Reporter) -> list[dict[str, str]]:  # fmt: skip
    """Complete finished cells whose rows lack the diagnostics (a results.csv written before they existed, or
    figures undefined there): their rows are made again from the stored projects; each figure is computed once
    and kept, so a later run only reads it again."""
    stale = sorted({(r["strategy"], int(r["seed"]), int(r["round"])) for r in rows
                    if r["strategy"] != STATIC_ARM and not r.get("test_auroc")},
                   key=lambda c: (c[1], c[2], c[0]))  # fmt: skip
    # A results.csv carried without its projects (e.g. finished seeds kept from another machine): what cannot
    # be computed again is left as it is.
    stale = [c for c in stale if (out_dir / PROJECTS / project_name(c[0], c[1]) / DB_NAME).is_file()]
    if not stale:
        return rows
    reporter.note(
        f"adding the per-round diagnostics to {len(stale)} finished cell(s) of an older results.csv"
    )
    for strategy, seed, r in stale:
        folder = out_dir / PROJECTS / project_name(strategy, seed)
        new = _cell_rows(
            cfg,
            folder,
            strategy,
            seed,
            r,
            _CellReporter(reporter, f"{project_name(strategy, seed)} round {r}"),
        )
        rows = [
            row
            for row in rows
            if (row["strategy"], int(row["seed"]), int(row["round"])) != (strategy, seed, r)
        ] + new
        write_results(out_dir / RESULTS_FILE, rows, cfg.strategies, [t.stem for t in cfg.tests], cfg.ttas)
    return rows


# --- per seed: the compute control ---------------------------------------------------------------------------
STATIC_RUN = "static_run"


def _static_cell(cfg: SimulationConfig, seed: int, seed_dir: Path, initial: Path, run_dir: Path,
                 metrics: dict[str, dict], r: int, reporter: Reporter) -> list[dict[str, str]]:  # fmt: skip
    """Train (or resume, or find) the static arm's round `r` and return its rows.

    The static arm's run (`seeds/<s>/static_run`) starts as a copy of the seed's initial run; its round r is
    session r + 1 on the initial set alone, trained with the TrainConfig every arm uses and the step cap of the
    labels the other arms have after round r (`cap_images`: initial + r x budget), so the only difference from
    them is the labels. Each round's model is kept as `round_<r>.pt` and evaluated like theirs.
    """
    from ..pose.train import BEST, LAST, load_checkpoint, train

    data = load_data(initial)
    people = sum(f.num_people for f in data)
    if r == 0:
        per_test, session = metrics, _session(run_dir, 1)
    else:
        static = seed_dir / STATIC_RUN
        if not (static / LAST).is_file():
            _copy_run(run_dir, static)
        t = load_checkpoint(static / LAST)["train"]
        if t["session"] < r + 1 or not t["complete"]:
            if t["session"] > r + 1:
                raise StateError(f"{static}: holds session {t['session']}, beyond round {r}")
            # a completed earlier session: start round r's; an unfinished session r + 1: resume it
            cap = cfg.initial + r * cfg.budget
            train(cfg.train_config(seed, seed_dir.parents[1] / CACHE), data, static, reporter,
                  new_session=t["complete"], cap_images=cap)  # fmt: skip
        snapshot = static / f"round_{r}.pt"
        if not snapshot.is_file():
            _copy_file(static / BEST, snapshot)
        session = _session(static, r + 1)
        loaded: list[Any] = []

        def model():
            if not loaded:
                loaded.append(load(snapshot, cfg.device))
            return loaded[0]

        per_test = {
            t.stem: _evaluate_cached(static / f"metrics_round_{r}_{t.stem}.json", model, t, cfg.eval_options(t),
                                     reporter)
            for t in cfg.tests
        }  # fmt: skip
    values = {"strategy": STATIC_ARM, "seed": seed, "round": r, "labelled_images": len(data),
              "labelled_people": people, "annotation_seconds": 0.0, "selection_seconds": 0.0,
              "training_seconds": float(session.get("seconds") or 0.0) if r else 0.0,
              "schedule_images": cfg.initial + r * cfg.budget, **_session_values(session)}  # fmt: skip
    return _rows(cfg, values, per_test)


# --- results.csv ---------------------------------------------------------------------------------------------
def _read_results(path: Path) -> list[dict[str, str]]:
    """Return the text rows of the grid's results.csv ([] when there is none yet); ConfigError when the grid
    could not write it back as it is (see `results.check_rewritable`)."""
    results = load_results(path) if path.is_file() else Results()
    check_rewritable(results, path)
    return results.text


# --- the grid ------------------------------------------------------------------------------------------------
class _CellReporter(Reporter):
    """Forwards to the caller's reporter; the loop's own 'overall' bar becomes a 'cell' bar, notes are prefixed."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def progress(self, stage: str, done: int, total: int | None, info: str = "") -> None:
        self.inner.progress("cell" if stage == "overall" else stage, done, total, info)

    def note(self, text: str) -> None:
        self.inner.note(f"[{self.prefix}] {text}")

    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None:
        self.inner.on_epoch_start(session, epoch, num_batches)

    def on_batch_end(self, loss: float) -> None:
        self.inner.on_batch_end(loss)

    def on_epoch_end(self, record, improved: bool) -> None:
        self.inner.on_epoch_end(record, improved)


def _run_options(cfg: SimulationConfig, strategy: str, seed: int, oracle, montages: bool, cache: Path):

    selection = dataclasses.replace(cfg.selection, cache_dir=cache)
    return RunOptions(
        budget=cfg.budget, oracle=oracle, train=cfg.train_config(seed, cache),
        select=SelectOptions(budget=cfg.budget, strategy=strategy, selection=selection, device=cfg.device,
                             montages=montages),
        evaluate=cfg.eval_options(None), seed=seed,
    )  # fmt: skip


def _write_grid(out_dir: Path, cfg: SimulationConfig, command: Sequence[str] | None) -> None:
    atomic_write_json(out_dir / GRID_FILE, {
        "config": cfg.to_dict(), "command": list(command) if command is not None else None,
        "activepose": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=1)  # fmt: skip


def _write_report(out_dir: Path, results: Results) -> Path | None:
    try:
        from .outputs import write_report
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.outputs":
            raise
        return None
    return write_report(out_dir, results=results)


def simulate(
    cfg: SimulationConfig,
    out_dir: str | Path,
    reporter: Reporter = SILENT,
    command: Sequence[str] | None = None,
) -> SimulationResult:
    """Run (or resume) the grid into `out_dir`; return its results. `command` is recorded in grid.json.

    Refuses (ConfigError, nothing written) a folder holding another grid or other files, and a grid that
    does not fit in the pool's usable images, before any training. One simulation per folder at a time.
    """

    t_start = time.monotonic()
    out_dir = Path(out_dir)
    results = out_dir / RESULTS_FILE
    cells = [(s, seed, r) for seed in cfg.seeds for r in range(cfg.rounds + 1) for s in cfg.strategies]

    def cell(row: dict[str, str]) -> tuple[str, int, int]:
        return row["strategy"], int(row["seed"]), int(row["round"])

    # Every check before anything is written: another grid, a grid that does not fit the pool.
    done = {cell(row) for row in _read_results(results)} if _check_out_dir(out_dir, cfg) else set()
    plan = _plan(cfg, reporter) if any(c not in done for c in cells) else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with project_lock(out_dir, "simulate"):
        if _check_out_dir(out_dir, cfg):  # again under the lock: another simulation may have got here first
            rows = _read_results(results)
        else:
            _write_grid(out_dir, cfg, command)
            rows = []
        done = {cell(row) for row in rows}
        before = sum(c in done for c in cells)
        todo = [c for c in cells if c not in done]
        if todo and plan is None:
            plan = _plan(cfg, reporter)
        if plan is not None and plan.skipped:
            reporter.note(
                f"{len(plan.skipped)} unreadable pool image(s) left out: " + "; ".join(plan.skipped[:5])
            )
        rows = _add_diagnostics(cfg, out_dir, rows, reporter)
        reporter.progress("overall", before, len(cells), f"{before} of {len(cells)} cells already done")
        n_done, ran = before, 0
        for seed in cfg.seeds:
            seed_cells = [c for c in todo if c[1] == seed]
            if not seed_cells:
                continue
            seed_dir = out_dir / "seeds" / str(seed)
            initial = _initial_set(cfg, plan, seed, seed_dir)
            rep = _CellReporter(reporter, f"seed {seed}: initial model")
            run_dir = _initial_model(cfg, seed, seed_dir, initial, rep)
            metrics = _initial_metrics(cfg, seed_dir, run_dir, rep)
            oracle = SimulatedLabeller(cfg.pool, seed=seed)
            for strategy, _, r in seed_cells:
                rep = _CellReporter(reporter, f"{project_name(strategy, seed)} round {r}")
                if strategy == STATIC_ARM:
                    new = _static_cell(cfg, seed, seed_dir, initial, run_dir, metrics, r, rep)
                else:
                    folder = out_dir / PROJECTS / project_name(strategy, seed)
                    _setup_project(cfg, plan, folder, initial, run_dir, metrics, rep)
                    if r > 0:
                        # round 1's montages are the report's picture of what each strategy chose
                        opts = _run_options(
                            cfg, strategy, seed, oracle, cfg.montages or r == 1, out_dir / CACHE
                        )
                        run(folder, r, opts, rep)
                    new = _cell_rows(cfg, folder, strategy, seed, r, rep)
                rows = [row for row in rows if cell(row) != (strategy, seed, r)] + new
                write_results(results, rows, cfg.strategies, [t.stem for t in cfg.tests], cfg.ttas)
                n_done, ran = n_done + 1, ran + 1
                first = next((x for x in new if x["tta"] == "clean"), new[0])
                shown = ", ".join(
                    f"{k} {100 * float(first[k]):.1f}" for k in ("count_acc", "PCK") if first[k]
                )
                info = f"{strategy} seed {seed} round {r}"
                reporter.note(
                    f"{info}: {first['labelled_images']} labelled images; {first['tta']} {shown or 'n/a'}"
                )
                reporter.progress("overall", n_done, len(cells), f"{info} done")
        final = load_results(results) if results.is_file() else Results()
        report = _write_report(out_dir, final)
    return SimulationResult(
        out_dir, results, final.text, len(cells), ran, before, time.monotonic() - t_start, report, final
    )
