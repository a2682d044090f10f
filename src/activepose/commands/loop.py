"""Commands that run whole jobs: `run` (the active-learning loop on a project) and `demo`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config import RECOMMENDED_STRATEGY, SyntheticConfig, check_strategy_name
from ..errors import ConfigError
from ..experiment.grid import SimulationConfig
from ..loop import RunOptions, run
from ..oracle.simulated import SimulatedLabeller
from ..pose.synthetic import make_synthetic_coco
from ..workflow import rounds
from ..workflow.presets import resolve_train_config
from . import options as o
from .annotate import AllowHost, Host, Port, Token, TokenFile, server_token
from .app import RichReporter, command, console, duration, next_step
from .project import status
from .simulate import run_simulation


@command("run")
@o.training_options
@o.selection_options
def run_loop(
    project: o.ProjectArg,
    rounds_: Annotated[
        int,
        typer.Option(
            "--rounds",
            metavar="N",
            help="Stop when the project has this many closed rounds (earlier rounds "
            "count: the same command again finishes an interrupted run, then does nothing).",
        ),  # fmt: skip
    ],
    budget: o.Budget,
    ground_truth: o.GroundTruth = None,
    oracle: Annotated[
        str,
        typer.Option(
            help="simulated: reveals --ground-truth; web: people label each round on the labelling page "
            "(served on --host/--port until the round is complete).",
            metavar="NAME",
        ),
    ] = "simulated",
    strategy: o.Strategy = o.DEFAULTS["strategy"],
    test: Annotated[
        Path | None,
        typer.Option("--test", help="Test set (default: the project's, from `init --test`).", metavar="FILE"),
    ] = None,
    tta: o.Tta = "all",
    eval_max_images: o.EvalMaxImages = None,
    seed: Annotated[
        int, typer.Option(help="Seeds training, selection (seed + round) and the oracle's cost.", metavar="N")
    ] = 0,
    device: o.Device = "auto",
    host: Host = "127.0.0.1",
    port: Port = 8000,
    token: Token = None,
    token_file: TokenFile = None,
    allow_host: AllowHost = None,
    training: o.TrainingOptions = None,
    selection: o.SelectionOptions = None,
) -> None:
    """Run the active-learning loop: select -> label -> train -> evaluate, round after round.

    Every step stores its outcome in the project in one transaction and the next step is read back from it:
    after a crash, kill -9 or Ctrl-C the same command continues where it stopped. Before the first round,
    initial labels are trained on and evaluated; with no labels at all, round 1 is chosen by diversity.
    Writes exports/learning_curve.png and .json.
    """

    if oracle not in ("simulated", "web"):
        raise ConfigError(f"unknown --oracle {oracle!r}: use simulated (with --ground-truth) or web")
    if oracle == "simulated" and ground_truth is None:
        raise ConfigError("--oracle simulated needs --ground-truth GT.json")
    # Every option is checked here, before the first step: a typo never costs a trained round.
    train_cfg = training.config(project / rounds.RUN_DIR, device, seed=seed)
    selection_cfg = selection.config(seed=seed)
    if oracle == "web":
        from ..web.labeller import WebLabeller
        from ..web.server import check_host

        token = server_token(token, token_file)
        check_host(host, token, port)
        labeller = WebLabeller(host=host, port=port, token=token, allow_hosts=tuple(allow_host or ()), device=device,
                               on_ready=lambda url: console.print(f"[bold green]labelling page:[/] {url}"))  # fmt: skip
    else:
        labeller = SimulatedLabeller(ground_truth, seed=seed)
    opts = RunOptions(
        budget=budget, oracle=labeller, train=train_cfg,
        select=rounds.SelectOptions(budget=budget, strategy=strategy, selection=selection_cfg, device=device),
        evaluate=rounds.EvalOptions(test=test, ttas=o.parse_tta(tta), max_images=eval_max_images, device=device),
        seed=seed,
    )  # fmt: skip
    with RichReporter() as rep:
        outcome = run(project, rounds_, opts, rep)
    console.print(f"[bold green]done:[/] {outcome.reason}")
    status(project)
    if outcome.curve is not None:
        console.print(f"wrote {outcome.curve} and {outcome.curve.with_suffix('.json')}")
    console.print(f"loop finished in {duration(outcome.seconds)}")
    next_step(
        f"activepose run {project} --rounds {rounds_ + 1} ... to go on; results in {project / 'exports'}"
    )


# The demo's generated footage: videos of this many frames; pool and test frames (whole videos).
DEMO_FRAMES_PER_VIDEO, DEMO_POOL, DEMO_TEST = 20, 240, 80


@command()
def demo(
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            help="Real data: COCO JSON of the pool (its labels play the oracle) (default: generated).",
            metavar="POOL.json",
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            "--test", help="Real data: COCO JSON of the test set (default: generated).", metavar="TEST.json"
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Where the demo writes data, projects, results and report.", metavar="DIR"
        ),
    ] = Path("demo"),
    seeds: Annotated[
        int, typer.Option(help="Repetitions (each with its own initial set and model).", metavar="N")
    ] = 3,
    rounds_: Annotated[
        int, typer.Option("--rounds", help="Active-learning rounds per strategy and seed.", metavar="N")
    ] = 3,
    initial: Annotated[int, typer.Option(help="Initially labelled images.", metavar="N")] = 16,
    budget: o.Budget = 16,
    epochs: Annotated[
        int,
        typer.Option(
            help="Most training epochs per round (a round stops earlier when validation plateaus; every "
            "round continues the last weights).",
            metavar="N",
        ),
    ] = 16,
    eval_max_images: o.EvalMaxImages = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            "-s",
            help="The strategy compared with random (default: the recommended one).",
            metavar="NAME",
        ),  # fmt: skip
    ] = RECOMMENDED_STRATEGY,
    device: o.Device = "auto",
) -> None:
    """Active learning, shown: the recommended strategy vs random on built-in generated footage (or
    --pool/--test), with the compute control, a learning-curve table, the paired differences and a report.

    A small `activepose simulate`: per seed one initial labelled set and model shared by the strategies, then
    rounds of select -> label (the true labels) -> train (to a validation plateau) -> evaluate (clean and
    blurred), and the compute control `static` (the initial labels trained each round like the others). The
    generated data looks like footage: short "videos", each one scene whose people move a little from frame to
    frame. The same command again reuses what is done.
    """

    if (pool is None) != (test is None):
        raise ConfigError("give both --pool and --test (real data), or neither (generated data)")
    check_strategy_name(strategy)
    if strategy == "random":
        raise ConfigError(
            "--strategy random is the demo's reference; name another strategy to compare with it"
        )
    size, generated = 96, pool is None
    if generated:  # footage of 96 px with 1-3 people, seeded: the same every time
        pool, test = out / "data" / "pool" / "pool.json", out / "data" / "test" / "test.json"
        for path, n, seed in ((pool, DEMO_POOL, 0), (test, DEMO_TEST, 10_000)):
            if not path.exists():
                cfg = SyntheticConfig(num_images=n, image_size=(size, size), max_people=3,
                                      frames_per_video=DEMO_FRAMES_PER_VIDEO)  # fmt: skip
                written = make_synthetic_coco(path.parent, "lsp14", cfg, seed=seed)
                shutil.copyfile(
                    written, path
                )  # named for what it is: the test set's name appears in the report
        console.print(
            f"generated footage: {DEMO_POOL // DEMO_FRAMES_PER_VIDEO} pool videos ({DEMO_POOL} frames) and "
            f"{DEMO_TEST // DEMO_FRAMES_PER_VIDEO} test videos ({DEMO_TEST} frames) of {size} px in {out / 'data'}"
        )
    # Rounds trained to convergence: a plateau schedule on validation loss (the rate halves at the first plateau,
    # the session ends at the second), the best epoch kept, epochs of 6 batches however few the labels (16
    # labels are 2 batches: one pass per epoch would leave the initial model nearly untrained), 4 to --epochs.
    train = resolve_train_config(preset="small", max_epochs=epochs, patience=epochs, lr=1e-3, device=device,
                                 lr_schedule="plateau", lr_patience=2, lr_drops=1, lr_gamma=0.5, warmup_steps=10,
                                 steps_per_epoch=6, min_epochs=4,
                                 **({"input_size": size} if generated else {}))  # fmt: skip
    cfg = SimulationConfig(
        pool=pool, tests=(test,), initial=initial, budget=budget, rounds=rounds_,
        strategies=(strategy, "random"), seeds=seeds, train=train, ttas=("clean", "blur"),
        eval_max_images=eval_max_images, device=device,
    )  # fmt: skip
    run_simulation(cfg, out / "simulation", command=["activepose", "demo", *map(str, sys.argv[2:])])
