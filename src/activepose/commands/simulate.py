"""`activepose simulate`: does hybrid selection beat random on my data? A grid of simulated active learning."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import STATIC_ARM
from ..errors import ConfigError
from ..experiment.grid import SimulationConfig, simulate
from ..experiment.stats import summarise
from ..workflow.presets import simulation_settings
from . import options as o
from .app import RichReporter, command, console, duration, next_step


def parse_seeds(text: str) -> int | tuple[int, ...]:
    """Return a seed count ('3') or a list of seeds ('0,4,7') from a --seeds value."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--seeds must be a count (3) or comma-separated seeds (0,4,7), got {text!r}"
        ) from None
    if not values:
        raise ConfigError("--seeds names no seed")
    return values[0] if len(values) == 1 and "," not in str(text) else tuple(values)


@command("simulate")
@o.training_options
@o.selection_options
def simulate_cmd(
    pool: Annotated[
        Path,
        typer.Option(
            "--pool",
            help="COCO JSON of the pool with its true labels (the simulated oracle).",
            metavar="POOL.json",
        ),  # fmt: skip
    ],
    test: Annotated[
        list[Path],
        typer.Option(
            "--test", help="Test set; repeat for more (the first is each project's own).", metavar="FILE"
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder of the grid (the same command again resumes it).", metavar="DIR"
        ),  # fmt: skip
    ],
    initial: Annotated[
        int | None,
        typer.Option(
            "--initial",
            help="Initially labelled images (a seeded subset of the pool; default: the preset's).",
            metavar="N",
        ),  # fmt: skip
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            "-b",
            help="Images to choose per round (default: the preset's).",
            metavar="N",
            rich_help_panel="Selection",
        ),  # fmt: skip
    ] = None,
    rounds_: Annotated[
        int | None,
        typer.Option("--rounds", help="Rounds per strategy and seed (default: the preset's).", metavar="N"),
    ] = None,
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            help="Comma-separated strategies to compare.",
            metavar="LIST",
            rich_help_panel="Selection",
        ),  # fmt: skip
    ] = "hybrid,random",
    seeds: Annotated[
        str,
        typer.Option(
            "--seeds", help="How many seeds (3: seeds 0,1,2), or comma-separated seeds.", metavar="N|LIST"
        ),  # fmt: skip
    ] = "3",
    tta: Annotated[
        str | None,
        typer.Option(
            help="Test-time augmentations: comma-separated names, 'all' or 'none' (default: the preset's, "
            "else all).",
            metavar="LIST",
            rich_help_panel="Evaluation",
        ),  # fmt: skip
    ] = None,
    eval_max_images: o.EvalMaxImages = None,
    montages: Annotated[
        bool,
        typer.Option(
            "--montages",
            metavar="",
            help="Write every round's selection montages (round 1's are always written).",
            rich_help_panel="Selection",
        ),  # fmt: skip
    ] = False,
    control: Annotated[
        bool,
        typer.Option(
            "--control/--no-control",
            help="Add the compute control: a 'static' arm per seed, its initial set trained each round with the "
            "schedule the others get, and no new labels.",
            rich_help_panel="Selection",
        ),  # fmt: skip
    ] = True,
    device: o.Device = "auto",
    training: o.TrainingOptions = None,
    selection: o.SelectionOptions = None,
) -> None:
    """Compare selection strategies by simulated active learning: strategies x seeds, rounds 0..R.

    Per seed, one initial labelled set and one initial model are shared by every strategy; each strategy then
    runs the active-learning loop in its own project (DIR/projects/<strategy>-seed<s>) with the pool's true
    labels as the oracle, and every round's model is evaluated on every --test file. Writes DIR/results.csv
    (one row per strategy, seed, round, test set and TTA) and DIR/grid.json. Interrupted (crash, kill -9,
    Ctrl-C)? Run the same command again: finished cells are kept, an unfinished one continues.
    """

    # Every option is checked here, before any training.
    train_cfg = training.config(None, device)
    selection_cfg = selection.config()
    given = {"initial": initial, "budget": budget, "rounds": rounds_, "tta": tta,
             "eval_max_images": eval_max_images, "max_candidates": selection_cfg.max_candidates}  # fmt: skip
    s = simulation_settings(training.values["preset"], **given)
    cfg = SimulationConfig(
        pool=pool, tests=tuple(test), initial=s["initial"], budget=s["budget"], rounds=s["rounds"],
        strategies=tuple(x.strip() for x in strategies.split(",") if x.strip()), seeds=parse_seeds(seeds),
        train=train_cfg, selection=dataclasses.replace(selection_cfg, max_candidates=s["max_candidates"]),
        ttas=o.parse_tta(s["tta"]), eval_max_images=s["eval_max_images"], device=device, montages=montages,
        control=control,
    )  # fmt: skip
    run_simulation(cfg, out, command=["activepose", *sys.argv[1:]])


def run_simulation(cfg, out: Path, command: list[str] | None = None) -> None:
    """Run (or resume) a simulation grid with progress bars, then print its table and where its results are."""

    console.print(
        f"simulating {', '.join(cfg.strategies)} x {len(cfg.seeds)} seed(s) x rounds 0..{cfg.rounds} "
        f"({cfg.initial} initial + {cfg.budget} per round) -> {out}"
    )
    with RichReporter() as rep:
        result = simulate(cfg, out, rep, command=command)
    if result.cells_run == 0:
        console.print(
            f"[bold green]done:[/] all {result.cells_total} cells were already complete: nothing to do"
        )
    else:
        console.print(
            f"[bold green]done:[/] {result.cells_run} cell(s) run, {result.cells_total} in the grid, "
            f"in {duration(result.seconds)}"
        )
    first = cfg.tests[0].stem
    tta_shown = "clean" if "clean" in cfg.ttas else cfg.ttas[0]
    _print_summary(result.parsed, cfg.strategies, first, tta_shown)
    console.print(f"results: {result.results}")
    if result.report is not None:
        console.print(f"report: {result.report}")
    next_step(
        f"open {result.report or result.results}; more seeds or rounds: the same command with another --out"
    )


def _print_summary(results, strategies, test_set: str, tta: str, reference: str = "random"):
    """Print the grid's mean table, its verdict and the final paired differences (`results`: a loaded
    results.csv)."""
    console.print(_table(summarise(results.text, test_set, tta), strategies, test_set, tta))
    for line in comparison_lines(results, reference):
        console.print(line, markup=False, soft_wrap=True)


@command("report")
def report_cmd(
    grid_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of a simulation grid (its results.csv; grid.json when there).", metavar="DIR"
        ),
    ],
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            help="Also write the tables (curves with intervals, paired differences, label efficiency, "
            "diagnostics) as Markdown to FILE; - prints them.",
            metavar="FILE",
        ),  # fmt: skip
    ] = None,
    reference: Annotated[
        str, typer.Option("--reference", help="The strategy the others are compared with.", metavar="NAME")
    ] = "random",
) -> None:
    """Write a simulation grid's report again from its results.csv, and print its table and verdict.

    For a grid still running, one carried from another machine without its projects, or another reference
    strategy. Writes DIR/report.html, DIR/efficiency.csv, DIR/paired.csv and DIR/plots/; trains nothing.
    """
    from ..experiment.layout import GRID_FILE, RESULTS_FILE, load_grid
    from ..experiment.markdown import markdown_tables
    from ..experiment.outputs import write_report
    from ..experiment.results import load_results
    from ..experiment.stats import ordered_strategies
    from ..fileio import atomic_write_bytes

    results_path = grid_dir / RESULTS_FILE
    if not results_path.is_file():
        raise ConfigError(f"{results_path}: not found; give the folder of an `activepose simulate` grid")
    results = load_results(results_path)
    if not results.rows:
        raise ConfigError(f"{results_path}: holds no result rows yet")
    grid = load_grid(grid_dir / GRID_FILE)[0]
    strategies = ordered_strategies(results, grid, reference)
    if reference not in strategies:
        raise ConfigError(
            f"--reference {reference!r} is not in {results_path}; it holds {', '.join(strategies)}"
        )
    page = write_report(grid_dir, reference, results)
    test_set = results.test_sets()[0]
    ttas = results.ttas(test_set)
    _print_summary(results, strategies, test_set, "clean" if "clean" in ttas else ttas[0], reference)
    if markdown is not None:
        text = markdown_tables(results, grid, reference)
        if str(markdown) == "-":
            console.print(text, markup=False, soft_wrap=True, highlight=False)
        else:
            atomic_write_bytes(markdown, text.encode("utf-8"))
            console.print(f"markdown: {markdown}")
    console.print(f"report: {page}")
    next_step(f"open {page}; more seeds or rounds: the grid's own `activepose simulate` command again")


def comparison_lines(results, reference: str = "random", metric: str = "PCK") -> list[str]:
    """The verdict (see `stats.verdict`) of a loaded results.csv (`results.Results`) and, per strategy at its
    final round, the paired difference in `metric` to `reference` and to the compute control, with their 95 %
    intervals over seeds (first test set, clean). [] without results or without the reference strategy."""
    from ..experiment.stats import paired_differences, report_stats, verdict

    strategies = results.strategies()
    if reference not in strategies or not results.test_sets():
        return []
    stats = report_stats(results, {"strategies": strategies}, reference)
    t = stats.test_sets[0]
    lines = [f"verdict ({t.test_set}, {t.tta} {metric}): {verdict(t, reference, metric)}"]

    def show(p) -> str:
        d = p.diff
        span = f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" if math.isfinite(d.half_width) else " (one seed)"
        return f"{100 * d.mean:+.1f} pp{span}"

    for s in strategies:
        if s == STATIC_ARM:
            continue
        finals = [paired_differences(results, s, other, t.test_set, t.tta, metric)[-1:]
                  for other in (reference, STATIC_ARM) if other != s and other in strategies]  # fmt: skip
        finals = [f[0] for f in finals if f]
        if finals:
            shown = ", ".join(f"vs {p.reference} {show(p)}" for p in finals)
            lines.append(f"  {s}, final round ({finals[0].images:.0f} labels): {shown}")
    return lines


def _table(points: list[dict], strategies, test_set: str, tta: str) -> Table:
    images = sorted({p["labelled_images"] for p in points})
    by = {(p["strategy"], p["labelled_images"]): p for p in points}
    caption = (f"{STATIC_ARM}: the initial labels only, trained with the schedule of the row's labels (the compute "
               "control)") if STATIC_ARM in strategies else None  # fmt: skip
    table = Table(title=f"mean {tta} count_acc / PCK in % over seeds, on {test_set}", caption=caption)
    table.add_column("labelled images", justify="right")
    for s in strategies:
        table.add_column(s, justify="right")

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.1f}"

    for n in images:
        cells = []
        for s in strategies:
            p = by.get((s, n))
            cells.append(f"{pct(p['count_acc'])} / {pct(p['PCK'])}" if p else "")
        table.add_row(str(n), *cells)
    return table
