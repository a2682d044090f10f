"""Commands that run whole jobs: `run` (the active-learning loop on a project) and `demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..workflow import common, labelling, rounds
from . import options as o
from .app import RichReporter, command, console, duration, next_step
from .model import _train_config


@command("run")
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
        typer.Option(help="simulated: reveals --ground-truth (humans: `activepose label`).", metavar="NAME"),
    ] = "simulated",
    strategy: o.Strategy = o.DEFAULTS["strategy"],
    test: Annotated[
        Path | None,
        typer.Option("--test", help="Test set (default: the project's, from `init --test`).", metavar="FILE"),
    ] = None,
    tta: o.Tta = "all",
    eval_max_images: o.EvalMaxImages = None,
    preset: o.Preset = None,
    backbone: o.Backbone = None,
    width: o.Width = None,
    head_channels: o.HeadChannels = None,
    input_size: o.InputSize = None,
    epochs: o.Epochs = None,
    batch_size: o.BatchSize = None,
    lr: o.Lr = None,
    patience: o.Patience = None,
    lr_step: o.LrStep = None,
    lr_gamma: o.LrGamma = None,
    max_minutes: o.MaxMinutes = None,
    pretrained: o.Pretrained = None,
    workers: o.Workers = None,
    extractor: o.Extractor = o.DEFAULTS["extractor"],
    weights: o.ExtractorWeights = None,
    ann: o.AnnBackend = o.DEFAULTS["ann"],
    th_hm: o.ThHm = o.DEFAULTS["th_hm"],
    th_kp: o.ThKp = None,
    fill: o.Fill = o.DEFAULTS["fill"],
    seed: Annotated[
        int, typer.Option(help="Seeds training, selection (seed + round) and the oracle's cost.", metavar="N")
    ] = 0,
    device: o.Device = "auto",
) -> None:
    """Run the active-learning loop: select -> label -> train -> evaluate, round after round.

    Every step stores its outcome in the project in one transaction and the next step is read back from it:
    after a crash, kill -9 or Ctrl-C the same command continues where it stopped. Before the first round,
    initial labels are trained on and evaluated; with no labels at all, round 1 is chosen by diversity.
    Writes exports/learning_curve.png and .json.
    """
    from ..loop import RunOptions, run
    from ..sampling.strategies import SelectionConfig
    from ..sampling.uncertainty import UncertaintyConfig
    from .project import status

    if oracle != "simulated":
        raise ConfigError(
            f"unknown --oracle {oracle!r}: the loop runs with 'simulated' (humans label with `activepose label`)"
        )
    if ground_truth is None:
        raise ConfigError("--oracle simulated needs --ground-truth GT.json")
    # Every option is checked here, before the first step: a typo never costs a trained round.
    train_cfg = _train_config(
        project / rounds.RUN_DIR, preset, False, False, backbone=backbone, width=width, head_channels=head_channels,
        input_size=input_size, max_epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, lr_step_epochs=lr_step,
        lr_gamma=lr_gamma, max_minutes=max_minutes, pretrained=pretrained, num_workers=workers, seed=seed, device=device,
    )  # fmt: skip
    selection = SelectionConfig(uncertainty=UncertaintyConfig(th_hm=th_hm, th_kp=th_kp), extractor=extractor,
                                weights=weights, ann_backend=ann, fill=fill, seed=seed)  # fmt: skip
    opts = RunOptions(
        budget=budget, oracle=labelling.SimulatedLabeller(ground_truth, seed=seed), train=train_cfg,
        select=rounds.SelectOptions(budget=budget, strategy=strategy, selection=selection, device=device),
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


@command()
def demo(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Where the demo writes data, model and results.", metavar="DIR"),
    ] = Path("demo"),
    minutes: Annotated[float, typer.Option(help="Training time budget.", metavar="MIN")] = 1.0,
    seed: o.Seed = 0,
) -> None:
    """Generate synthetic data, train for about a minute, evaluate (clean + TTAs) and print the table."""
    from ..evaluate import report_table
    from ..fileio import atomic_write_json
    from ..synthetic import SyntheticConfig, make_synthetic_coco
    from ..train import TrainConfig, train
    from ..workflow import models

    if minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes:g}")
    t0 = time.monotonic()
    size = 128
    sets = {}
    for name, n, s in (("train", 400, seed), ("test", 100, seed + 10_000)):
        path = out / "data" / name / "annotations.json"
        if not path.exists():
            make_synthetic_coco(
                path.parent, "lsp14", SyntheticConfig(num_images=n, image_size=(size, size)), seed=s
            )
        sets[name] = common.load_data(path)
    console.print(f"synthetic data: {len(sets['train'])} training / {len(sets['test'])} test images "
                  f"({sets['train'].num_people} / {sets['test'].num_people} people) in {out / 'data'}")  # fmt: skip
    # ImageNet-initialised MobileNetV2 with slim heads: the backbone that learns most in a CPU minute.
    cfg = TrainConfig(backbone="mobilenet_v2", head_channels=64, input_size=size, batch_size=8, lr=1e-3, max_epochs=1000,
                      patience=1000, lr_step_epochs=1000, max_minutes=minutes, steps_per_epoch=25, seed=seed)  # fmt: skip
    run_dir = out / "run"
    with RichReporter() as rep:
        result = train(cfg, sets["train"], run_dir, rep, new_session=(run_dir / "last.pt").exists())
        console.print(f"trained {result.epochs_run} epochs ({result.stopped.replace('_', ' ')})")
        loaded = models.load(run_dir / "best.pt", "cpu")
        report = rounds.evaluate_model_on(loaded, out / "data" / "test" / "annotations.json",
                                          rounds.EvalOptions(batch_size=16, device="cpu"), rep)  # fmt: skip
    table = report_table(report)
    table.title = f"demo: mobilenet_v2 after {minutes:g} min on synthetic data"
    console.print(table)
    atomic_write_json(out / "metrics.json", report, indent=1)
    console.print(f"demo finished in {time.monotonic() - t0:.0f} s; results in {out} (metrics.json)")
    next_step("activepose init PROJECT --pool POOL.json --test TEST.json, then activepose run PROJECT ...")
