"""Commands about a model on files: train, lr-find, predict, evaluate (each also works on a PROJECT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..fileio import atomic_write_json
from ..pose.coco import results_to_coco
from ..pose.evaluate import SCALE_KEY, report_table
from ..pose.skeleton import same_keypoints
from ..workflow import common, models, presets, rounds
from . import options as o
from .app import RichReporter, command, console, next_step


@command()
@o.training_options
def train(
    project: Annotated[
        Path | None,
        typer.Argument(
            help="Project folder: train on all its labels, resuming its run; records the model.",
            metavar="PROJECT",
            show_default=False,
        ),  # fmt: skip
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="COCO keypoint JSON of labelled images.", metavar="FILE"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (checkpoints, history).", metavar="DIR")
    ] = None,
    max_images: o.MaxImages = None,
    grayscale: Annotated[
        bool, typer.Option(metavar="", help="Train on grayscale input, as the paper's data.")
    ] = False,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", metavar="", help="Disable training augmentation.")
    ] = False,
    new_session: Annotated[
        bool, typer.Option(metavar="", help="Start a new session even when the data did not change.")
    ] = False,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    training: o.TrainingOptions = None,
) -> None:
    """Train a pose model; the same command again resumes it, new data continues it (a new session)."""
    from ..pose.train import train as run_train

    if project is not None and (data is not None or out is not None):
        raise ConfigError("with a PROJECT folder, --data and --out come from the project")
    if project is None and (data is None or out is None):
        raise ConfigError("give a PROJECT folder, or --data and --out")
    run_dir = project / rounds.RUN_DIR if project is not None else out
    cfg = training.config(run_dir, device, seed=seed, grayscale=grayscale, no_augment=no_augment)
    if project is not None:
        if max_images is not None:
            raise ConfigError("--max-images is for --data; a project trains on all its labels")
        with common.opened(project) as proj, RichReporter() as rep:
            console.print(f"training [bold]{cfg.backbone}[/] on the labels of {project} -> {run_dir}")
            res = rounds.train_round(proj, cfg, rep, new_session=new_session)
        _trained(res.result, run_dir)
        what = (
            f"model {res.model_id} recorded"
            if res.new_model
            else f"model {res.model_id} was already recorded"
        )
        console.print(
            f"{what} ({res.train_size} training images)"
            + (f"; round {res.round_id} is {res.round_state}" if res.round_id else "")
        )
        next_step(f"activepose evaluate {project}")
        return
    # Image headers are read up front: a corrupt file fails here, named, not in a worker mid-epoch.
    coco = common.seeded_subset(common.load_data(data, read_headers=True), max_images, seed)
    console.print(
        f"training [bold]{cfg.backbone}[/] on {len(coco)} images of {data} ({coco.skeleton.name}) -> {out}"
    )
    with RichReporter() as rep:
        result = run_train(cfg, coco, out, rep, new_session=new_session)
    _trained(result, out)
    next_step(f"activepose evaluate --model {out / 'best.pt'} --data TEST.json")


def _trained(result, run_dir: Path) -> None:
    console.print(training_line(result) + f"; checkpoints in {run_dir}")


def training_line(result) -> str:
    """Return one line on a training session: its epochs and batches, why it stopped, what it kept."""
    what = (
        "best val loss"
        if not result.history or result.history[-1].get("val_pck") is None
        else "best val score"
    )
    line = (
        f"session {result.session}: {result.epochs_run} epochs ({result.steps} batches), {what} "
        f"{result.best_val_loss:.5f}, stopped: {result.stopped.replace('_', ' ')}"
    )
    if result.kept == "previous":
        line += " — no epoch beat the previous model on validation, so best.pt is still that model"
    return line


@command("lr-find")
def lr_find_cmd(
    data: Annotated[Path, typer.Option("--data", "-d", help="COCO keypoint JSON.", metavar="FILE")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the curve as PNG + JSON here.", metavar="DIR")
    ] = None,
    preset: o.Preset = None,
    backbone: o.Backbone = None,
    width: o.Width = None,
    head_channels: o.HeadChannels = None,
    input_size: o.InputSize = None,
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    start_lr: Annotated[float, typer.Option(help="Smallest learning rate tried.", metavar="LR")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Largest learning rate tried.", metavar="LR")] = 1.0,
    steps: Annotated[int, typer.Option(help="Batches in the range test.", metavar="N")] = 100,
    max_images: o.MaxImages = None,
    device: o.Device = "auto",
) -> None:
    """Run the learning-rate range test (the paper recommends it) and suggest a starting learning rate."""
    from ..pose.train import lr_find

    if not 0 < start_lr < end_lr:
        raise ConfigError(f"need 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}")
    if steps < 2:
        raise ConfigError(f"--steps must be >= 2, got {steps}")
    cfg = presets.resolve_train_config(None, preset, backbone=backbone, width=width, head_channels=head_channels,
                                       input_size=input_size, batch_size=batch_size, num_workers=workers, device=device)  # fmt: skip
    coco = common.seeded_subset(common.load_data(data), max_images)
    with RichReporter() as rep:
        res = lr_find(cfg, coco, start_lr=start_lr, end_lr=end_lr, num_steps=steps,
                      on_step=lambda i, lr_, loss: rep.progress("lr range test", i + 1, steps, f"lr {lr_:.1e} loss {loss:.5f}"))  # fmt: skip
    console.print(f"suggested learning rate: [bold]{res.suggested_lr:.2e}[/] (steepest descent); "
                  f"min-loss/10 rule: {res.min_loss_lr:.2e}")  # fmt: skip
    if out is not None:
        from ..fileio import atomic_write_json
        from ..workflow.plots import plot_lr_find

        atomic_write_json(out / "lr_find.json", res.__dict__, indent=1)
        plot_lr_find(res, out / "lr_find.png")
        console.print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.json'}")
    next_step(f"activepose train --lr {res.suggested_lr:.1e} ...")


@command()
def predict(
    model: Annotated[
        Path,
        typer.Option("--model", "-m", help="Checkpoint (best.pt / last.pt / model_N.pt).", metavar="FILE"),
    ],
    images: Annotated[
        Path, typer.Option("--images", "-i", help="Image folder or COCO JSON.", metavar="PATH")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="COCO results JSON to write.", metavar="FILE")],
    overlays: Annotated[
        Path | None, typer.Option(help="Write skeleton overlays into this folder.", metavar="DIR")
    ] = None,
    input_size: o.ModelInput = None,
    scale: o.Scale = None,
    batch_size: o.EvalBatch = o.EVAL_BATCH,
    min_parts: o.MinParts = None,
    min_score: o.MinScore = None,
    device: o.Device = "auto",
) -> None:
    """Predict poses for a folder of images (or a COCO file's images) and write COCO results JSON."""
    import cv2

    from ..pose.predict import describe_scale, draw_overlay

    # validates before loading anything
    rounds.EvalOptions(batch_size=batch_size, input_size=input_size, scale=scale)
    loaded = models.load(model, device)
    plan, note = models.input_scale(loaded, input_size, scale)
    if note:
        console.print(f"[yellow]note[/] {note}", soft_wrap=True)
    if images.is_dir():
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in common.IMAGE_EXTS)
        entries = [(i + 1, p) for i, p in enumerate(files)]
    elif images.is_file():
        coco = common.load_data(images)
        same_keypoints(str(images), coco.skeleton, loaded.skeleton)
        entries = [(f.image_id, coco.image_path(f)) for f in coco]
    else:
        raise ConfigError(f"{images}: no such folder or file")
    if not entries:
        raise ConfigError(f"{images}: no images found")

    sizes: list[tuple[int, int]] = []

    def on_image(image_id, path, image, pred) -> None:
        sizes.append((image.shape[1], image.shape[0]))
        if overlays is None:
            return
        vis = draw_overlay(image, pred[0], loaded.skeleton, pred[1])
        overlays.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(overlays / f"{Path(path).stem}.jpg"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))

    with RichReporter() as rep:
        results, unreadable = models.predict_files(
            loaded, entries, batch_size=batch_size, reporter=rep, scale=plan,
            decoder=models.decoder_for(loaded.skeleton, min_parts, min_score), on_image=on_image,
        )  # fmt: skip
    atomic_write_json(out, results_to_coco(results))
    if images.is_dir():
        atomic_write_json(
            out.with_suffix(".images.json"), {i: str(p) for i, p in entries if i in results}, indent=1
        )
    people = sum(len(r[1]) for r in results.values())
    console.print(f"scale: {describe_scale(plan.summary(sizes))}", markup=False)
    console.print(
        f"{len(results)} images, {people} people -> {out}" + (f"; overlays in {overlays}" if overlays else "")
    )
    for s in unreadable:
        console.print(f"[yellow]skipped[/] {s}", soft_wrap=True, markup=False)
    next_step(f"activepose evaluate --model {model} --data TEST.json   (accuracy on labelled images)")


@command()
def evaluate(
    project: Annotated[
        Path | None,
        typer.Argument(
            help="Project folder: evaluate its newest model on its test set, record it, close the round.",
            metavar="PROJECT",
            show_default=False,
        ),  # fmt: skip
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Checkpoint (best.pt / last.pt).", metavar="FILE")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="COCO keypoint JSON with ground truth (a project's: its test set).",
            metavar="FILE",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the metrics JSON here.", metavar="FILE")
    ] = None,
    tta: o.Tta = "all",
    max_images: o.EvalMaxImages = None,
    batch_size: o.EvalBatch = o.EVAL_BATCH,
    input_size: o.ModelInput = None,
    scale: o.Scale = None,
    min_parts: o.MinParts = None,
    min_score: o.MinScore = None,
    device: o.Device = "auto",
) -> None:
    """Evaluate a model: person count accuracy, OKS AP/AR, PCK@0.2, clean and under test-time augmentations."""
    from ..pose.predict import describe_scale

    opts = rounds.EvalOptions(test=data, ttas=o.parse_tta(tta), max_images=max_images, batch_size=batch_size,
                              input_size=input_size, min_parts=min_parts, min_score=min_score, device=device,
                              scale=scale)  # fmt: skip
    if project is not None:
        if model is not None:
            raise ConfigError("with a PROJECT folder the model is the project's newest (drop --model)")
        with common.opened(project) as proj, RichReporter() as rep:
            res = rounds.evaluate_round(proj, opts, rep)
        report, title, written = (
            res.report,
            f"model {res.model_id} of {project} on {res.test}",
            res.metrics_file,
        )
        if out is not None:
            written = atomic_write_json(out, report, indent=1)
    else:
        if model is None or data is None:
            raise ConfigError("give a PROJECT folder, or --model and --data")
        loaded = models.load(model, device)
        with RichReporter() as rep:
            report = rounds.evaluate_model_on(loaded, data, opts, rep)
        title, written = f"{model} on {data}", atomic_write_json(out, report, indent=1) if out else None
    table = report_table(report)
    table.title = title
    console.print(table)
    if SCALE_KEY in report:
        console.print(f"scale: {describe_scale(report[SCALE_KEY])}", markup=False)
    if written is not None:
        console.print(f"wrote {written}")
    if project is not None:
        if res.round_id is not None:
            console.print(
                f"round {res.round_id} evaluated and closed; learning curve in {project / 'exports'}"
            )
        next_step(f"activepose select {project} --budget N   (or: activepose run {project} ...)")
    else:
        next_step(
            f"activepose predict --model {model} --images DIR --out pred.json --overlays vis/   (look at them)"
        )
