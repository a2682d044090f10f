"""The `activepose` command line: one subcommand per user action. The CLI owns all output (rich)."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import faults

app = typer.Typer(
    help="Hybrid active learning for bottom-up human pose estimation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# Logs and pipes get wide lines so that the metrics table is never cut; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 160)
LOG = logging.getLogger("activepose")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )


# Options shared by several commands: one definition, one help text.
Backbone = Annotated[str, typer.Option(help="Backbone: vgg_tiny, mobilenet_v2, resnet18.")]
Width = Annotated[float | None, typer.Option(help="Backbone channel multiplier (vgg_tiny), e.g. 0.5.")]
HeadChannels = Annotated[int, typer.Option(help="Channels of the OpenPose stage convs.")]
Patience = Annotated[int, typer.Option(help="Early-stopping patience in epochs.")]
LrStep = Annotated[int, typer.Option(help="Step decay: epochs between learning-rate drops.")]
LrGamma = Annotated[float, typer.Option(help="Step decay factor.")]
Pretrained = Annotated[bool, typer.Option(help="Use ImageNet weights for the backbone when available.")]
Workers = Annotated[int, typer.Option(help="Data-loading worker processes.")]
Extractor = Annotated[str, typer.Option(help="Embeddings: mobilenet_v2, resnet50, pose_backbone.")]
ExtractorWeights = Annotated[Path | None, typer.Option(help="Weights file for the extractor (resnet50).")]
AnnBackend = Annotated[str, typer.Option(help="ANN backend: annoy, faiss, exact.")]
ThHm = Annotated[float, typer.Option(help="Heatmap peak threshold thHM.")]
ThKp = Annotated[
    int | None, typer.Option(help="Keypoint count threshold thKP (default: 6 of 18, scaled to K).")
]
Fill = Annotated[str, typer.Option(help="hybrid with too few uncertain images: diversity or uncertainty.")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # never break paths
    raise typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _load(path: Path, skeleton: str | None = None, check_images: bool = True, read_headers: bool = False):
    from .coco import CocoError, load_coco
    from .skeleton import SkeletonError, get_skeleton

    try:
        return load_coco(
            path,
            skeleton=get_skeleton(skeleton) if skeleton else None,
            check_images=check_images,
            read_image_headers=read_headers,
        )
    except (CocoError, SkeletonError) as exc:
        _fail(str(exc))


def _limit(data, max_images: int | None, seed: int = 0):
    if max_images is None or max_images >= len(data):
        return data
    import numpy as np

    ids = sorted(np.random.default_rng(seed).choice(data.image_ids, size=max_images, replace=False).tolist())
    return data.subset(ids)


class _RichTrainCallbacks:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.loss = math.nan

    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"session {session} epoch {epoch}", total=num_batches, info="")

    def on_batch_end(self, loss: float) -> None:
        self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        self.progress.update(self.task, advance=1, info=f"loss {self.loss:.5f}")

    def on_epoch_end(self, record, improved: bool) -> None:
        mark = "[green]*[/]" if improved else " "
        self.progress.console.print(
            f"{mark} session {record.session} epoch {record.epoch:3d}  train {record.train_loss:.5f}  "
            f"val {record.val_loss:.5f}  lr {record.lr:.2e}  {record.images / max(record.seconds, 1e-9):.1f} img/s"
        )


@app.command()
def train(
    project: Annotated[
        Path | None,
        typer.Argument(help="Project folder: train on all its labels, resuming its run; records the model."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="COCO keypoint JSON with the labelled images.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (checkpoints, history).")
    ] = None,
    backbone: Backbone = "vgg_tiny",
    width: Width = None,
    head_channels: HeadChannels = 128,
    epochs: Annotated[int, typer.Option(help="Maximum epochs in this session.")] = 200,
    batch_size: Annotated[int, typer.Option()] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate (see `activepose lr-find`).")] = 1e-4,
    patience: Patience = 35,
    lr_step: LrStep = 30,
    lr_gamma: LrGamma = 0.5,
    input_size: Annotated[int, typer.Option(help="Network input side in pixels (multiple of 8).")] = 256,
    max_images: Annotated[
        int | None, typer.Option(help="Use a seeded random subset of this many images.")
    ] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Cap batches per epoch.")] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Stop after the epoch crossing this wall time (resumable; with a PROJECT it ends the session "
            "and records the model)."
        ),
    ] = None,
    val_fraction: Annotated[float, typer.Option()] = 0.1,
    grayscale: Annotated[bool, typer.Option(help="Train on grayscale input, as the paper's data.")] = False,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Disable training augmentation.")] = False,
    pretrained: Pretrained = True,
    new_session: Annotated[
        bool, typer.Option(help="Start a new session even when the data did not change.")
    ] = False,
    workers: Workers = 2,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Train a pose model; re-running the same command resumes it, new data continues it (a new session)."""
    from .data import AugmentConfig
    from .train import TrainConfig
    from .train import train as run_train

    if input_size % 8:
        _fail(f"--input-size must be a multiple of 8, got {input_size}")
    proj = None
    if project is not None:
        if data is not None or out is not None:
            _fail("with a PROJECT folder, --data and --out come from the project")
        proj, coco = _project_training_set(project)
        data, out = project, project / "checkpoints" / "run"
    elif data is None or out is None:
        _fail("give a PROJECT folder, or --data and --out")
    else:
        # Image headers are read up front: a corrupt file fails here, named, not in a worker mid-epoch.
        coco = _load(data, read_headers=True)
    coco = _limit(coco, max_images, seed)
    cfg = TrainConfig(
        backbone=backbone, width=width, head_channels=head_channels, max_epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
        lr_step_epochs=lr_step, lr_gamma=lr_gamma, input_size=input_size, steps_per_epoch=steps_per_epoch,
        max_minutes=max_minutes, val_fraction=val_fraction, grayscale=grayscale, pretrained=pretrained,
        num_workers=workers, seed=seed, device=device, budget_ends_session=proj is not None,
        augment=AugmentConfig(grayscale=grayscale) if not no_augment else None,
    )  # fmt: skip
    console.print(
        f"training [bold]{backbone}[/] on {len(coco)} images of {data} ({coco.skeleton.name}) -> {out}"
    )
    with _project_lock(project, "train") if proj is not None else nullcontext():
        with _progress() as progress:
            result = run_train(cfg, coco, out, _RichTrainCallbacks(progress), new_session=new_session)
        console.print(
            f"session {result.session}: {result.epochs_run} epochs, best val loss {result.best_val_loss:.5f}, "
            f"stopped by {result.stopped.replace('_', ' ')}; checkpoints in {out}"
        )
        if proj is not None:
            _record_project_model(proj, out / "best.pt", len(coco))


def _project_training_set(project: Path):
    """Return (open project, its labelled images as a data set); fails clearly when nothing is labelled."""
    proj = _open_project(project)
    ids = proj.labelled_ids()
    if not ids:
        _fail(f"{project}: no labelled images to train on (import labels or label a round first)")
    return proj, proj.to_coco(ids)


def _record_project_model(proj, best: Path, train_size: int) -> None:
    """Copy the session's best weights to checkpoints/model_<n>.pt and record them once (re-runs add nothing)."""
    import shutil

    from .fileio import atomic_write, file_sha1

    digest = file_sha1(best)
    for m in proj.models():
        if m.metrics.get("sha1") == digest:
            console.print(f"model {m.id} ({m.checkpoint}) already recorded")
            return
    current = proj.current_round()
    n = len(proj.models()) + 1
    target = proj.folder / "checkpoints" / f"model_{n}.pt"

    def copy(fh) -> None:
        with best.open("rb") as src:
            shutil.copyfileobj(src, fh)

    atomic_write(target, copy)
    faults.point("record")
    round_id = current.id if current is not None else None
    model_id = proj.add_model(target, train_size, round=round_id, metrics={"sha1": digest}, mark_trained=True)
    console.print(f"recorded model {model_id}: {target} (trained on {train_size} images)")
    if current is not None and current.state == "labelled":
        console.print(f"round {current.id} trained")


@app.command("lr-find")
def lr_find_cmd(
    data: Annotated[Path, typer.Option("--data", "-d", help="COCO keypoint JSON.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the curve as PNG + JSON here.")
    ] = None,
    backbone: Backbone = "vgg_tiny",
    width: Width = None,
    head_channels: HeadChannels = 128,
    start_lr: Annotated[float, typer.Option()] = 1e-7,
    end_lr: Annotated[float, typer.Option()] = 1.0,
    steps: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 4,
    input_size: Annotated[int, typer.Option()] = 256,
    max_images: Annotated[int | None, typer.Option()] = None,
    workers: Workers = 2,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Run the learning-rate range test (the paper recommends it) and suggest a starting learning rate."""
    from .train import TrainConfig, lr_find

    coco = _limit(_load(data), max_images)
    cfg = TrainConfig(
        backbone=backbone,
        width=width,
        head_channels=head_channels,
        batch_size=batch_size,
        input_size=input_size,
        num_workers=workers,
        device=device,
    )
    with _progress() as progress:
        task = progress.add_task("lr range test", total=steps, info="")
        res = lr_find(
            cfg, coco, start_lr=start_lr, end_lr=end_lr, num_steps=steps,
            on_step=lambda i, lr_, loss: progress.update(task, completed=i + 1, info=f"lr {lr_:.1e} loss {loss:.5f}"),
        )  # fmt: skip
    console.print(
        f"suggested learning rate: [bold]{res.suggested_lr:.2e}[/] (steepest descent); "
        f"min-loss/10 rule: {res.min_loss_lr:.2e}"
    )
    if out is not None:
        from .plots import plot_lr_find

        out.mkdir(parents=True, exist_ok=True)
        (out / "lr_find.json").write_text(json.dumps(res.__dict__, indent=1))
        plot_lr_find(res, out / "lr_find.png")
        console.print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.json'}")


def _decoder_for(skeleton, min_parts: int | None, min_score: float | None):
    from .decode import Decoder, DecoderConfig

    cfg = DecoderConfig()
    changes = {}
    if min_parts is not None:
        changes["min_parts"] = min_parts
    if min_score is not None:
        changes["min_person_score"] = min_score
    if changes:
        import dataclasses

        cfg = dataclasses.replace(cfg, **changes)
    return Decoder(skeleton, cfg)


def _load_model(checkpoint: Path, device: str):
    from .checkpoint import CheckpointError, load_model, resolve_device

    try:
        return load_model(checkpoint, resolve_device(device))
    except CheckpointError as exc:
        _fail(str(exc))


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (best.pt / last.pt).")],
    images: Annotated[Path, typer.Option("--images", "-i", help="Image folder or COCO JSON.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="COCO results JSON to write.")],
    overlays: Annotated[Path | None, typer.Option(help="Write skeleton overlays into this folder.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Default: the training input size.")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    min_parts: Annotated[int | None, typer.Option(help="Decoder: minimum parts per person.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Decoder: minimum person score.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Predict poses for a folder of images (or a COCO file's images) and write COCO results JSON."""
    import cv2

    from .coco import results_to_coco
    from .fileio import ImageReadError, atomic_write_json, read_image
    from .predict import draw_overlay, predict_images

    net, skeleton, state = _load_model(model, device)
    size = input_size or state.get("train_config", {}).get("input_size", 256)
    decoder = _decoder_for(skeleton, min_parts, min_score)
    if images.is_dir():
        exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in exts)
        entries = [(i + 1, p) for i, p in enumerate(files)]
    else:
        coco = _load(images)
        entries = [(f.image_id, coco.image_path(f)) for f in coco]
    if not entries:
        _fail(f"{images}: no images found")
    results: dict[int, tuple] = {}
    id_map, skipped = {}, []
    with _progress() as progress:
        task = progress.add_task("predicting", total=len(entries), info="")
        for start in range(0, len(entries), batch_size):
            chunk, arrays = [], []
            for image_id, path in entries[start : start + batch_size]:
                try:
                    arrays.append(read_image(path))
                    chunk.append((image_id, path))
                except ImageReadError as exc:
                    skipped.append(str(exc))
            preds = (
                predict_images(net, arrays, decoder, input_size=size, device=next(net.parameters()).device)
                if arrays
                else []
            )
            for (image_id, path), img, pred in zip(chunk, arrays, preds, strict=True):
                results[image_id] = pred
                id_map[image_id] = str(path)
                if overlays is not None:
                    overlays.mkdir(parents=True, exist_ok=True)
                    vis = draw_overlay(img, pred[0], skeleton, pred[1])
                    cv2.imwrite(
                        str(overlays / f"{Path(path).stem}.jpg"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR)
                    )
            progress.update(task, advance=len(entries[start : start + batch_size]), info="")
    atomic_write_json(out, results_to_coco(results))
    if images.is_dir():
        atomic_write_json(out.with_suffix(".images.json"), id_map, indent=1)
    people = sum(len(r[1]) for r in results.values())
    console.print(f"{len(results)} images, {people} people -> {out}")
    for s in skipped:
        console.print(f"[yellow]skipped[/] {escape(s)}", soft_wrap=True)


@app.command()
def evaluate(
    project: Annotated[
        Path | None,
        typer.Argument(
            help="Project folder: evaluate its newest model on its test set, record it, close the round."
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Checkpoint (best.pt / last.pt).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="COCO keypoint JSON with ground truth.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the metrics JSON here.")] = None,
    tta: Annotated[str, typer.Option(help="Comma-separated TTAs, 'all' or 'none'.")] = "all",
    input_size: Annotated[int | None, typer.Option(help="Default: the training input size.")] = None,
    max_images: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    min_parts: Annotated[int | None, typer.Option()] = None,
    min_score: Annotated[float | None, typer.Option()] = None,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Evaluate a model: person count accuracy, OKS AP/AR, PCK@0.2, clean and under test-time augmentations."""
    proj = latest = None
    if project is not None:
        proj = _open_project(project)
        latest = proj.latest_model()
        if latest is None:
            _fail(f"{project}: no model yet (run `activepose train {project}`)")
        model = model or proj.checkpoint_path(latest)
        data = data or (Path(proj.meta["test"]) if "test" in proj.meta else None)
        if data is None:
            _fail(f"{project}: no test set (give --data TEST.json, or create the project with --test)")
        out = out or proj.folder / "exports" / f"metrics_model_{latest.id}.json"
    elif model is None or data is None:
        _fail("give a PROJECT folder, or --model and --data")
    net, skeleton, state = _load_model(model, device)
    coco = _limit(_load(data), max_images)
    if list(coco.skeleton.keypoints) != list(skeleton.keypoints):
        _fail(
            f"{data}: keypoints {list(coco.skeleton.keypoints)} differ from the model's {list(skeleton.keypoints)}"
        )
    size = input_size or state.get("train_config", {}).get("input_size", 256)
    report = run_evaluation(net, coco, _decoder_for(skeleton, min_parts, min_score), size, tta, batch_size,
                            str(next(net.parameters()).device))  # fmt: skip
    _show_report(report, out, title=f"{model} on {data} ({len(coco)} images)")
    if proj is not None:
        faults.point("evaluate")
        # Metrics stay next to the weights' fingerprint; the round the model came from is done (one transaction).
        current = proj.current_round()
        closing = (
            current is not None
            and current.state in ("trained", "evaluated")
            and current.model_id == latest.id
        )
        proj.set_model_metrics(
            latest.id, {**latest.metrics, **report}, close_round=current.id if closing else None
        )
        if closing:
            console.print(f"round {current.id} evaluated and closed")


def run_evaluation(net, coco, decoder, input_size: int, tta: str, batch_size: int, device: str) -> dict:
    from .evaluate import EvalConfig, evaluate_model
    from .tta import TTA_NAMES

    names = (
        TTA_NAMES
        if tta == "all"
        else ("clean",)
        if tta == "none"
        else tuple(t.strip() for t in tta.split(","))
    )
    unknown = [n for n in names if n not in TTA_NAMES]
    if unknown:
        _fail(f"unknown TTA {unknown}; choose from {', '.join(TTA_NAMES)}")
    cfg = EvalConfig(input_size=input_size, batch_size=batch_size, ttas=names, device=device)
    with _progress() as progress:
        task = progress.add_task("evaluating", total=len(coco) * len(names), info="")
        return evaluate_model(net, coco, decoder, cfg, progress=lambda n: progress.update(task, advance=n))


def _show_report(report: dict, out: Path | None, title: str) -> None:
    from .evaluate import report_table
    from .fileio import atomic_write_json

    table = report_table(report)
    table.title = title
    console.print(table)
    if out is not None:
        atomic_write_json(out, report, indent=1)
        console.print(f"wrote {out}")


@app.command()
def select(
    budget: Annotated[int, typer.Option("--budget", "-b", help="How many images to choose.")],
    project: Annotated[
        Path | None,
        typer.Argument(help="Project folder: choose among its unlabelled images and open a round with them."),
    ] = None,
    pool: Annotated[
        Path | None, typer.Option("--pool", "-p", help="COCO JSON of the unlabelled pool (labels ignored).")
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help="random, uncertainty, diversity, coreset, hybrid.")
    ] = "hybrid",
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Pose checkpoint (for uncertainty / hybrid).")
    ] = None,
    labelled: Annotated[Path | None, typer.Option(help="COCO JSON of already labelled images.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the chosen ids and scores here.")
    ] = None,
    extractor: Extractor = "mobilenet_v2",
    weights: ExtractorWeights = None,
    ann: AnnBackend = "annoy",
    th_hm: ThHm = 0.3,
    th_kp: ThKp = None,
    fill: Fill = "diversity",
    cache: Annotated[Path | None, typer.Option(help="Cache folder for scores and embeddings.")] = None,
    montage: Annotated[
        Path | None, typer.Option(help="Write montages (chosen samples; low vs high activation) here.")
    ] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Pose model input size (default: its training size).")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Choose the next images to label: hybrid (uncertainty -> features -> ANN diversity) or a baseline."""
    from rich.table import Table

    from .checkpoint import resolve_device
    from .fileio import atomic_write_json
    from .sampling.strategies import SelectionConfig, SelectionContext, SelectionError, select_batch
    from .sampling.uncertainty import UncertaintyConfig

    proj = None
    if (project is None) == (pool is None):
        _fail("give either a PROJECT folder or --pool POOL.json")
    if project is not None:
        proj = _open_project(project)
        current = proj.current_round()
        if current is not None:
            # One round at a time: a re-run after a crash or by accident must not open a second one.
            _fail(
                f"{project}: round {current.id} ({current.strategy}, {len(current.items)} images) is still "
                f"{current.state}; label it (`activepose label`) and close it before selecting again"
            )
        unlabelled, labelled_ids = proj.unlabelled_ids(), proj.labelled_ids()
        if budget > len(unlabelled):  # before any model or image is loaded; names every state's count
            counts = proj.counts()
            _fail(
                f"{project}: budget {budget} is larger than the {counts['unlabelled']} unlabelled images left ("
                + ", ".join(f"{n} {state}" for state, n in counts.items())
                + ")"
            )
        pool_set = proj.to_coco(unlabelled)
        lab_set = proj.to_coco(labelled_ids) if labelled_ids else None
        latest = proj.latest_model()
        if model is None and latest is not None:  # the project's newest model scores the pool
            model = proj.checkpoint_path(latest)
        cache = cache or proj.folder / "caches"
    else:
        pool_set = _load(pool)
        lab_set = _load(labelled) if labelled is not None else None
    net, size = None, input_size or 256
    if model is not None:
        net, skeleton, state = _load_model(model, device)
        size = input_size or state.get("train_config", {}).get("input_size", 256)
        if list(skeleton.keypoints) != list(pool_set.skeleton.keypoints):
            _fail(
                f"{pool}: keypoints {list(pool_set.skeleton.keypoints)} differ from the model's {list(skeleton.keypoints)}"
            )
    cfg = SelectionConfig(
        uncertainty=UncertaintyConfig(th_hm=th_hm, th_kp=th_kp, input_size=size), extractor=extractor,
        weights=weights, ann_backend=ann, fill=fill, cache_dir=cache, seed=seed,
    )  # fmt: skip
    with _progress() as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            faults.point("select")
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, info="")
            progress.update(tasks[stage], completed=done)

        ctx = SelectionContext(pool_set, lab_set, net, cfg, device=resolve_device(device), progress=report)
        try:
            result = select_batch(strategy, ctx, budget)
        except (SelectionError, FileNotFoundError) as exc:
            _fail(str(exc))
    stats = result.stats
    if proj is not None:
        from .store import StoreError

        params = {"th_hm": th_hm, "th_kp": th_kp, "extractor": extractor, "ann": ann, "fill": fill, "seed": seed,
                  "model": str(model) if model else None, "stats": stats}  # fmt: skip
        try:
            round_id = proj.open_round(
                strategy, params, list(zip(result.ids, result.scores, strict=True)), budget=budget
            )
        except StoreError as exc:
            _fail(str(exc))
        console.print(f"opened round {round_id} in {project} with {len(result.ids)} images")
    table = Table(title=f"{strategy}: {len(result.ids)} of {stats['candidates']} unlabelled images")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "pool / labelled / candidates", f"{stats['pool']} / {stats['labelled']} / {stats['candidates']}"
    )
    if "uncertain" in stats:
        table.add_row(f"uncertain (< thKP keypoints >= thHM {th_hm:g})", str(stats["uncertain"]))
    if "filled" in stats:
        table.add_row(f"filled by {fill} (too few uncertain)", str(stats["filled"]))
    if "coverage" in stats:
        table.add_row(
            "coverage: max / mean distance",
            f"{stats['coverage']['max']:.4f} / {stats['coverage']['mean']:.4f}",
        )
    for stage, sec in stats["seconds"].items():
        table.add_row(f"time: {stage}", f"{sec:.2f} s")
    console.print(table)
    if out is not None:
        payload = {"strategy": strategy, "budget": budget, "pool": str(pool), "model": str(model) if model else None,
                   "ids": result.ids, "scores": result.scores, "stats": stats}  # fmt: skip
        atomic_write_json(out, payload, indent=1)
        console.print(f"wrote {out}")
    if montage is not None:
        from .sampling.montage import activation_montage, selection_montage

        paths = [
            selection_montage(pool_set, ctx.candidate_ids, result.ids, montage / "chosen.png", seed=seed)
        ]
        if ctx._uncertainty is not None:
            u = ctx._uncertainty
            paths.append(
                activation_montage(pool_set, u.image_ids, u.peaks, th_hm, montage / "activations.png")
            )
        console.print("wrote " + ", ".join(map(str, paths)))


@app.command()
def subset(
    data: Annotated[Path, typer.Argument(help="COCO keypoint JSON to draw from.")],
    size: Annotated[int, typer.Option("--size", "-n", help="How many images to keep.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Write the subset here.")],
    rest: Annotated[
        Path | None, typer.Option(help="Also write the images not drawn (a disjoint split) here.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a seeded random subset of a COCO file (ids and labels kept), e.g. a pool sample or an initial set.

    Image file names are rewritten relative to the output file's folder, so the subset works from anywhere.
    """
    import dataclasses
    import os

    from .coco import save_coco

    coco = _load(data, check_images=False)
    if not 0 < size <= len(coco):
        _fail(f"{data}: --size must be between 1 and its {len(coco)} images, got {size}")
    chosen = _limit(coco, size, seed)
    drawn = set(chosen.image_ids)
    others = coco.subset([i for i in coco.image_ids if i not in drawn])
    written = []
    for part, path in ((chosen, out), (others, rest)):
        if path is None:
            continue
        folder = path.resolve().parent
        frames = [dataclasses.replace(f, file_name=Path(os.path.relpath(coco.image_path(f).resolve(), folder)).as_posix())
                  for f in part]  # fmt: skip
        written.append(f"{len(frames)} images ({sum(f.num_people for f in frames)} people) -> {path}")
        save_coco(dataclasses.replace(part, frames=frames, root=folder, path=path), path)
    console.print("wrote " + "; ".join(written))


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images/ and annotations.json.")],
    num_images: Annotated[int, typer.Option("--num-images", "-n")] = 200,
    skeleton: Annotated[str, typer.Option(help="coco17, coco18, lsp14.")] = "lsp14",
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    max_people: Annotated[int, typer.Option()] = 4,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate a synthetic multi-person COCO keypoint data set (deterministic per seed)."""
    from .synthetic import SyntheticConfig, make_synthetic_coco

    path = make_synthetic_coco(
        out,
        skeleton,
        SyntheticConfig(num_images=num_images, image_size=(size, size), max_people=max_people),
        seed=seed,
    )
    console.print(f"wrote {num_images} images -> {path}")


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="COCO keypoint JSON to validate.")],
    images: Annotated[bool, typer.Option(help="Also open every image header (size, readability).")] = True,
    skeleton: Annotated[str | None, typer.Option(help="Expected skeleton (preset or JSON).")] = None,
) -> None:
    """Validate a COCO keypoint file: ids, keypoint counts, coordinates, image files."""
    from .coco import CocoError, load_coco
    from .skeleton import SkeletonError, get_skeleton

    try:
        coco = load_coco(
            data, skeleton=get_skeleton(skeleton) if skeleton else None, read_image_headers=images
        )
    except (CocoError, SkeletonError) as exc:
        _fail(str(exc))
    console.print(
        f"[green]ok[/] {data}: {len(coco)} images, {coco.num_people} people, skeleton {coco.skeleton.name} "
        f"({coco.skeleton.num_keypoints} keypoints, {coco.skeleton.num_limbs} limbs)"
    )


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the demo writes data, model and results.")
    ] = Path("demo"),
    minutes: Annotated[float, typer.Option(help="Training time budget.")] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate synthetic data, train for about a minute, evaluate (clean + TTAs) and print the table."""
    from .checkpoint import load_model
    from .synthetic import SyntheticConfig, make_synthetic_coco
    from .train import TrainConfig
    from .train import train as run_train

    t0 = time.monotonic()
    size = 128
    train_json = out / "data" / "train" / "annotations.json"
    test_json = out / "data" / "test" / "annotations.json"
    if not train_json.exists():
        make_synthetic_coco(
            train_json.parent, "lsp14", SyntheticConfig(num_images=400, image_size=(size, size)), seed=seed
        )
    if not test_json.exists():
        make_synthetic_coco(
            test_json.parent,
            "lsp14",
            SyntheticConfig(num_images=100, image_size=(size, size)),
            seed=seed + 10_000,
        )
    train_set, test_set = _load(train_json), _load(test_json)
    console.print(f"synthetic data: {len(train_set)} training / {len(test_set)} test images ({train_set.num_people} / "
                  f"{test_set.num_people} people) in {out / 'data'}")  # fmt: skip
    # ImageNet-initialised MobileNetV2 with slim heads: the backbone that learns most in a CPU minute.
    cfg = TrainConfig(
        backbone="mobilenet_v2", head_channels=64, input_size=size, batch_size=8, lr=1e-3, max_epochs=1000,
        patience=1000, lr_step_epochs=1000, max_minutes=minutes, steps_per_epoch=25, seed=seed,
    )  # fmt: skip
    run_dir = out / "run"
    with _progress() as progress:
        result = run_train(
            cfg, train_set, run_dir, _RichTrainCallbacks(progress), new_session=(run_dir / "last.pt").exists()
        )
    console.print(f"trained {result.epochs_run} epochs ({result.stopped.replace('_', ' ')})")
    net, skeleton, _ = load_model(run_dir / "best.pt")
    report = run_evaluation(net, test_set, _decoder_for(skeleton, None, None), size, "all", 16, "cpu")
    _show_report(
        report, out / "metrics.json", title=f"demo: mobilenet_v2 after {minutes:g} min on synthetic data"
    )
    console.print(f"demo finished in {time.monotonic() - t0:.0f} s; results in {out}")


# --- the active-learning project --------------------------------------------------------------------------
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_MAX_SHOWN = 20


@contextmanager
def _project_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold PROJECT/.lock (one loop / training per project at a time); a busy project is a clear error."""
    from .lock import ProjectBusy, project_lock

    try:
        with project_lock(folder, what):
            yield
    except ProjectBusy as exc:
        _fail(str(exc))


def _open_project(folder: Path):
    from .store import Project, StoreError

    try:
        return Project.open(folder)
    except StoreError as exc:
        _fail(str(exc))


def _parallel(fn, items: list, description: str) -> list:
    """Return [fn(item)] in order, computed on a thread pool with a progress bar (fn must not raise)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    out = []
    with _progress() as progress, ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        task = progress.add_task(description, total=len(items), info="")
        for result in pool.map(fn, items):
            out.append(result)
            progress.update(task, advance=1)
    return out


def _hash_file(path: Path) -> tuple[str | None, str | None]:
    from .fileio import file_sha1

    try:
        return file_sha1(path), None
    except OSError as exc:
        return None, f"{path}: cannot read ({exc})"


def _probe_image(path: Path) -> tuple[tuple[int, int, str] | None, str | None]:
    """Return ((width, height, sha1), None) for a readable image, else (None, why)."""
    from .fileio import ImageReadError, file_sha1, image_size

    try:
        width, height = image_size(path)
        return (width, height, file_sha1(path)), None
    except (ImageReadError, OSError) as exc:
        return None, str(exc)


def _print_list(title: str, items: list[str]) -> None:
    if not items:
        return
    console.print(f"[yellow]{title}[/] ({len(items)}):")
    for item in items[:_MAX_SHOWN]:
        console.print(f"  - {escape(item)}", soft_wrap=True)
    if len(items) > _MAX_SHOWN:
        console.print(f"  ... and {len(items) - _MAX_SHOWN} more")


def _stored_path(path: Path, project: Path) -> str:
    """Image path as stored: relative to the project folder (project and data move together), else absolute."""
    import os

    absolute = path.resolve()
    try:
        return Path(os.path.relpath(absolute, project)).as_posix()
    except ValueError:  # another drive
        return str(absolute)


@app.command()
def init(
    project: Annotated[Path, typer.Argument(help="Project folder to create (must not exist, or be empty).")],
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool", help="COCO JSON of the unlabelled pool: its image ids are kept, its labels ignored."
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Image folder: every jpg/jpeg/png/bmp/webp/tif under it, ids 1..n by relative path.",
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="COCO JSON of an initial labelled set (pool images only).")
    ] = None,
    skeleton: Annotated[
        str | None,
        typer.Option(
            help="coco17, coco18, lsp14 or a COCO JSON (required with --images; default: the pool's)."
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            "--test",
            help="COCO JSON of test-only images (never selected or labelled for training; their labels stay in "
            "this file). A test image whose content equals a pool image's marks that pool image 'test'; any "
            "other is added to the project as a 'test' image with a new id after the largest pool id.",
        ),
    ] = None,
) -> None:
    """Create an active-learning project: a folder with project.db (SQLite) and checkpoints/, caches/, exports/.

    The project is built in a temporary sibling folder and renamed into place at the end: an error or a crash
    never leaves a half-made project. Image paths are stored relative to the project folder.
    """
    import os
    import shutil

    from .skeleton import SkeletonError, get_skeleton
    from .store import DB_NAME, Project, StoreError

    if (pool is None) == (images is None):
        _fail("give exactly one of --pool POOL.json or --images DIR")
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        what = "a project already exists there" if (project / DB_NAME).exists() else "the folder is not empty"
        _fail(f"{project}: refusing to initialise: {what}")
    project.parent.mkdir(parents=True, exist_ok=True)
    target = project.parent.resolve() / project.name

    # (stored path, width, height, sha1, id)
    entries: list[tuple[str, int, int, str | None, int]] = []
    skipped: list[str] = []
    meta: dict[str, str] = {}
    if pool is not None:
        pool_set = _load(pool, skeleton)
        skel = pool_set.skeleton
        paths = [pool_set.image_path(f) for f in pool_set]
        hashes = _parallel(_hash_file, paths, "hashing pool")
        problems = [why for _, why in hashes if why]
        if problems:
            _fail(f"{pool}: {len(problems)} unreadable image file(s): " + "; ".join(problems[:_MAX_SHOWN]))
        for f, p, (digest, _) in zip(pool_set, paths, hashes, strict=True):
            entries.append((_stored_path(p, target), f.width, f.height, digest, f.image_id))
        meta["pool"] = str(pool.resolve())
    else:
        if skeleton is None:
            _fail("--skeleton is required with --images (coco17, coco18, lsp14 or a COCO JSON)")
        try:
            skel = get_skeleton(skeleton)
        except SkeletonError as exc:
            _fail(str(exc))
        if not images.is_dir():
            _fail(f"{images}: not a folder")
        files = sorted(
            (p for p in images.rglob("*") if p.is_file()), key=lambda p: p.relative_to(images).as_posix()
        )
        candidates = []
        for p in files:
            if p.suffix.lower() in IMAGE_EXTS:
                candidates.append(p)
            else:
                skipped.append(f"{p}: not an image file ({p.suffix or 'no extension'})")
        probes = _parallel(_probe_image, candidates, "reading image headers")
        for p, (info, why) in zip(candidates, probes, strict=True):
            if info is None:
                skipped.append(why)
                continue
            entries.append((_stored_path(p, target), info[0], info[1], info[2], len(entries) + 1))
        if not entries:
            _fail(f"{images}: no readable images found")
        meta["images"] = str(images.resolve())

    test_ids: list[int] = []
    if test is not None:
        test_set = _load(test)
        if list(test_set.skeleton.keypoints) != list(skel.keypoints):
            _fail(
                f"{test}: keypoints {list(test_set.skeleton.keypoints)} differ from the project's {list(skel.keypoints)}"
            )
        by_hash: dict[str, list[int]] = {}
        for _, _, _, digest, image_id in entries:
            by_hash.setdefault(digest, []).append(image_id)
        test_paths = [test_set.image_path(f) for f in test_set]
        hashes = _parallel(_hash_file, test_paths, "hashing test images")
        problems = [why for _, why in hashes if why]
        if problems:
            _fail(f"{test}: {len(problems)} unreadable image file(s): " + "; ".join(problems[:_MAX_SHOWN]))
        next_id = max((e[4] for e in entries), default=0) + 1
        extra = []
        for f, p, (digest, _) in zip(test_set, test_paths, hashes, strict=True):
            if digest in by_hash:
                test_ids += by_hash[digest]  # every copy of it in the pool
                continue
            extra.append((_stored_path(p, target), f.width, f.height, digest, next_id))
            by_hash[digest] = [next_id]
            test_ids.append(next_id)
            next_id += 1
        entries += extra
        test_ids = sorted(set(test_ids))
        meta["test"] = str(test.resolve())

    tmp = target.parent / f".{target.name}.init-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    imported = None
    try:
        with Project.create(tmp, skel, entries, meta=meta) as proj:
            if test_ids:
                proj.set_image_state(test_ids, "test")
            if labels is not None:
                imported = proj.import_coco(labels)
            counts = proj.counts()
        if project.exists():
            project.rmdir()  # an empty folder (checked above); the rename needs it gone or empty
        os.rename(tmp, target)
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{project}: cannot create the project ({exc})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"created project {project} ({skel.name}, {skel.num_keypoints} keypoints): {len(entries)} images, "
        f"{counts['labelled']} labelled, {counts['test']} test, {counts['unlabelled']} unlabelled, "
        f"{len(skipped)} file(s) skipped"
    )
    if imported is not None:
        console.print(escape(imported.message), soft_wrap=True)
    _print_list("skipped files", skipped)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _metrics_text(metrics: dict) -> str:
    """count_acc / AP / PCK (in %) from a metrics dict: flat, or an evaluation report {tta: {...}} (clean)."""
    flat = metrics.get("clean") if isinstance(metrics.get("clean"), dict) else metrics
    shown = []
    for key in ("count_acc", "AP", "PCK"):
        value = flat.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            shown.append(f"{key} {100 * value:.1f}")
    if not shown:
        return "not evaluated" if metrics else "-"
    return ", ".join(shown)


@app.command()
def status(project: Annotated[Path, typer.Argument(help="Project folder.")]) -> None:
    """Show the project's rounds (state, labels, label cost, model metrics) and its images per state."""
    from rich.table import Table

    with _open_project(project) as proj:
        rounds, models = proj.rounds(), proj.models()
        summary, counts = proj.round_summary(), proj.counts()
    by_id = {m.id: m for m in models}
    table = Table(title=f"{project}: {len(rounds)} round(s)")
    for col, justify in (("round", "right"), ("strategy", "left"), ("budget", "right"), ("state", "left"),
                         ("labelled", "right"), ("people", "right"), ("label cost", "right"),
                         ("model (train images)", "left"), ("clean metrics, %", "left")):  # fmt: skip
        table.add_column(col, justify=justify)

    def model_cells(model) -> tuple[str, str]:
        return (f"{model.id} ({model.train_size})", _metrics_text(model.metrics)) if model else ("-", "-")

    def cost(s: dict) -> str:  # labels imported from files carry no time: say so rather than "0 s"
        if s["people"] and not s["timed"]:
            return "unknown"
        return _duration(s["seconds"]) + ("" if s["timed"] == s["people"] else " (partly unknown)")

    empty = {"images": 0, "people": 0, "seconds": 0.0, "timed": 0}
    initial = next((m for m in reversed(models) if m.round is None), None)
    if None in summary or initial is not None:
        s = summary.get(None, empty)
        table.add_row("-", "initial labels", "", "", str(s["images"]), str(s["people"]), cost(s),
                      *model_cells(initial))  # fmt: skip
    for r in rounds:
        s = summary.get(r.id, empty)
        model = by_id.get(r.model_id) if r.model_id is not None else None
        if model is None:
            model = next((m for m in reversed(models) if m.round == r.id), None)
        table.add_row(
            str(r.id), r.strategy, str(r.budget), r.state,
            f"{s['images']}/{len(r.items)}" + (f" ({s['skipped']} skipped)" if s.get("skipped") else ""), str(s["people"]),
            cost(s), *model_cells(model),
        )  # fmt: skip
    console.print(table)
    total = sum(s["seconds"] for s in summary.values())
    console.print(
        "images: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + f"; total {sum(counts.values())}"
    )
    untimed = sum(s["people"] - s["timed"] for s in summary.values())
    note = f"; {untimed} person label(s) without a recorded time not counted" if untimed else ""
    console.print(f"total label cost: {_duration(total)} ({total:.0f} s){note}")


@app.command()
def export(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    round_id: Annotated[int, typer.Option("--round", "-r", help="Round to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (JSON).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="coco or label-studio.")] = "coco",
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint whose predictions become pre-annotations (default: the newest model).",
        ),
    ] = None,
    predictions_on: Annotated[
        bool,
        typer.Option(
            "--predictions/--no-predictions",
            help="Pre-annotate with a model's predictions (when there is one).",
        ),
    ] = True,
    paths: Annotated[
        str, typer.Option(help="Image paths: relative (to --out's folder) or absolute.")
    ] = "relative",
    url_prefix: Annotated[
        str, typer.Option(help="Label Studio: prefix of image URLs, e.g. /data/local-files/?d=")
    ] = "",
    input_size: Annotated[int | None, typer.Option(help="Default: the model's training input size.")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Write a round's images for labelling (COCO or Label Studio tasks), pre-annotated with model predictions.

    The predictions come from --model, else from the project's newest model (none yet: no pre-annotations;
    --no-predictions: none). Label Studio also gets its labelling config next to the file (<stem>.config.xml).
    """
    from .fileio import ImageReadError, atomic_write_bytes, read_image
    from .oracle import export_round, label_studio_config
    from .predict import predict_images
    from .store import StoreError

    if fmt not in ("coco", "label-studio"):
        _fail(f"unknown --format {fmt!r}; use coco or label-studio")
    if paths not in ("relative", "absolute"):
        _fail(f"unknown --paths {paths!r}; use relative or absolute")
    with _open_project(project) as proj:
        try:
            ids = [i for i, _, _ in proj.round(round_id).items]
        except StoreError as exc:
            _fail(str(exc))
        predictions, skipped = None, []
        latest = proj.latest_model()
        if model is None and predictions_on and latest is not None:
            model = proj.checkpoint_path(latest)
            console.print(f"pre-annotating with the project's newest model {latest.id} ({model})")
        if model is not None and predictions_on:
            net, skeleton, state = _load_model(model, device)
            if list(skeleton.keypoints) != list(proj.skeleton.keypoints):
                _fail(f"{model}: keypoints {list(skeleton.keypoints)} differ from the project's "
                      f"{list(proj.skeleton.keypoints)}")  # fmt: skip
            size = input_size or state.get("train_config", {}).get("input_size", 256)
            decoder = _decoder_for(skeleton, None, None)
            predictions = {}
            with _progress() as progress:
                task = progress.add_task("predicting", total=len(ids), info="")
                for start in range(0, len(ids), batch_size):
                    chunk, arrays = [], []
                    for image_id in ids[start : start + batch_size]:
                        try:
                            arrays.append(read_image(proj.image_path(image_id)))
                            chunk.append(image_id)
                        except ImageReadError as exc:
                            skipped.append(str(exc))
                    preds = predict_images(net, arrays, decoder, input_size=size) if arrays else []
                    predictions.update(zip(chunk, preds, strict=True))
                    progress.update(task, advance=len(ids[start : start + batch_size]))
        try:
            written = export_round(proj, round_id, out, fmt, predictions, paths=paths, url_prefix=url_prefix,
                                   model_version=model.name if predictions is not None else "activepose")  # fmt: skip
        except StoreError as exc:
            _fail(str(exc))
        config = None
        if fmt == "label-studio":
            config = atomic_write_bytes(
                out.with_name(f"{out.stem}.config.xml"), label_studio_config(proj.skeleton).encode()
            )
    people = sum(len(p[1]) for p in (predictions or {}).values())
    extra = f" with {people} predicted people" if predictions is not None else ""
    console.print(
        f"round {round_id}: {len(ids)} images{extra} -> {written}" + (f" (config {config})" if config else "")
    )
    _print_list("no prediction (unreadable image)", skipped)


@app.command()
def label(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    oracle: Annotated[str, typer.Option(help="simulated (ground truth) or file (an import).")] = "simulated",
    ground_truth: Annotated[
        Path | None, typer.Option("--ground-truth", help="simulated: COCO JSON with the pool's true labels.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="file: the labelled file to import.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="file: coco or label-studio.")] = "coco",
    include_empty: Annotated[
        bool, typer.Option(help="file (coco): images without annotations count as labelled with nobody.")
    ] = False,
    seed: Annotated[int, typer.Option(help="simulated: seed of the per-person labelling time.")] = 0,
    skip: Annotated[
        list[int] | None,
        typer.Option(
            help="Image id of the open round that cannot be labelled (repeatable): it stops blocking "
            "the round and is never selected again."
        ),  # fmt: skip
    ] = None,
) -> None:
    """Label the open round with an oracle; when all its images are labelled (or skipped) it becomes 'labelled'.

    All-or-nothing per call (bad input changes nothing); re-running adds nothing new. `--skip ID` alone only
    marks images skipped.
    """
    from .oracle import SimulatedOracle, import_label_studio
    from .store import StoreError

    skip_only = bool(skip) and ground_truth is None and labels is None
    if oracle not in ("simulated", "file"):
        _fail(f"unknown --oracle {oracle!r}; use simulated or file")
    if oracle == "simulated" and ground_truth is None and not skip_only:
        _fail("--oracle simulated needs --ground-truth GT.json")
    if oracle == "file" and labels is None and not skip_only:
        _fail("--oracle file needs --labels FILE.json")
    if fmt not in ("coco", "label-studio"):
        _fail(f"unknown --format {fmt!r}; use coco or label-studio")
    with _open_project(project) as proj:
        current = proj.current_round()
        if current is None:
            _fail(f"{project}: no open round to label")
        r = current.id
        if current.state != "open":
            if skip:
                _fail(
                    f"{project}: round {r} is {current.state!r}; only an open round's images can be skipped"
                )
            console.print(f"round {r} is already {current.state!r}: nothing new added")
            return
        try:
            if skip:
                n_skipped = proj.skip_images(r, skip)
                console.print(
                    f"skipped {n_skipped} image(s) of round {r}"
                    + (" (the rest already were)" if n_skipped < len(set(skip)) else "")
                )
            if skip_only:
                n, message = 0, ""
            elif oracle == "simulated":
                gt = _load(ground_truth, check_images=False)
                n = SimulatedOracle(gt, seed=seed).label(proj, r)
                message = f"simulated oracle labelled {n} image(s) of round {r}"
            elif fmt == "coco":
                result = proj.import_coco(labels, round=r, include_empty=include_empty)
                n, message = result.new_labels, result.message
            else:
                res = import_label_studio(proj, labels, round_id=r)
                n = res.new_labels
                message = f"{labels}: {res.images} image(s), {res.people} people, {n} new label(s)"
                if res.skipped_tasks:
                    message += f"; {len(res.skipped_tasks)} task(s) without an annotation skipped"
            if message:
                console.print(escape(message), soft_wrap=True)
                if n == 0:
                    console.print("nothing new added")
            items = [i for i, _, _ in proj.round(r).items]
            states = [proj.image(i).state for i in items]
            left = [i for i, st in zip(items, states, strict=True) if st not in ("labelled", "skipped")]
            if not left:
                proj.set_round_state(r, "labelled")
        except StoreError as exc:
            _fail(str(exc))
    state = "labelled" if not left else "open"
    skipped = states.count("skipped")
    console.print(
        f"round {r}: {states.count('labelled')}/{len(items)} images labelled"
        + (f", {skipped} skipped" if skipped else "")
        + f"; round is {state}"
    )


_NEEDS_MODEL = frozenset({"uncertainty", "hybrid"})


@app.command("run")
def run_loop(
    project: Annotated[Path, typer.Argument(help="Project folder (from `activepose init`).")],
    rounds: Annotated[
        int,
        typer.Option(
            help="Stop when the project has this many closed rounds (earlier rounds count: the same command "
            "again finishes an interrupted run and then does nothing)."
        ),
    ],
    budget: Annotated[int, typer.Option("--budget", "-b", help="Images chosen per round.")],
    oracle: Annotated[str, typer.Option(help="simulated (reveals --ground-truth).")] = "simulated",
    ground_truth: Annotated[
        Path | None, typer.Option("--ground-truth", help="COCO JSON with the pool's true labels.")
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help="random, uncertainty, diversity, coreset, hybrid.")
    ] = "hybrid",
    test: Annotated[
        Path | None, typer.Option("--test", help="Test set (default: the project's, from `init --test`).")
    ] = None,
    tta: Annotated[str, typer.Option(help="Evaluation TTAs: comma-separated, 'all' or 'none'.")] = "all",
    eval_max_images: Annotated[
        int | None, typer.Option(help="Evaluate on a seeded subset of the test set.")
    ] = None,
    backbone: Backbone = "vgg_tiny",
    width: Width = None,
    head_channels: HeadChannels = 128,
    input_size: Annotated[int, typer.Option(help="Network input side in pixels (multiple of 8).")] = 256,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per round's training session.")] = 200,
    batch_size: Annotated[int, typer.Option()] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    patience: Patience = 35,
    lr_step: LrStep = 30,
    lr_gamma: LrGamma = 0.5,
    max_minutes: Annotated[
        float | None, typer.Option(help="Training time per round (ends the session, records the model).")
    ] = None,
    pretrained: Pretrained = True,
    extractor: Extractor = "mobilenet_v2",
    weights: ExtractorWeights = None,
    ann: AnnBackend = "annoy",
    th_hm: ThHm = 0.3,
    th_kp: ThKp = None,
    fill: Fill = "diversity",
    workers: Workers = 2,
    seed: Annotated[int, typer.Option(help="Seeds training, selection (seed + round) and oracle cost.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Run the active-learning loop: select -> label -> train -> evaluate, round after round.

    Every step stores its outcome in the project in one transaction, and the next step is read back from the
    project: after a crash, kill -9 or Ctrl-C, the same command continues where it stopped (a round is never
    opened twice, no label is lost or stored twice, training resumes from its last epoch). Before the first
    round, initial labels are trained on and evaluated; with no labels at all, round 1 is chosen by diversity.
    Writes exports/learning_curve.png and .json at the end.
    """
    from .loop import ACTIONS, next_step

    if oracle != "simulated":
        _fail(
            f"unknown --oracle {oracle!r}: the loop runs with 'simulated' (humans label with `activepose label`)"
        )
    if ground_truth is None:
        _fail("--oracle simulated needs --ground-truth GT.json")
    if rounds < 0 or budget < 1:
        _fail(f"--rounds must be >= 0 and --budget >= 1, got {rounds} and {budget}")
    if input_size % 8:
        _fail(f"--input-size must be a multiple of 8, got {input_size}")
    with _open_project(project) as proj:
        if test is None and "test" not in proj.meta:
            _fail(
                f"{project}: no test set to evaluate rounds on (give --test TEST.json, or init with --test)"
            )
    _load(ground_truth, check_images=False)  # a broken ground truth fails now, not after the first training

    def loop() -> None:
        last = None
        while True:
            with _open_project(project) as proj:
                step = next_step(proj, rounds)
                has_model = proj.latest_model() is not None
            assert step.action in ACTIONS
            if step.action == "done":
                console.print(f"[bold green]done:[/] {step.reason}")
                break
            if (step.action, step.round) == last:  # every step must move the project forward
                _fail(f"{project}: step {step.action!r} did not advance the project ({step.reason})")
            last = (step.action, step.round)
            where = f"round {step.round}" if step.round is not None else "initial labels"
            console.rule(f"[bold]{where}: {step.action}[/] ({step.reason})")
            t0 = time.monotonic()
            if step.action == "select":
                chosen = strategy
                if strategy in _NEEDS_MODEL and not has_model:
                    chosen = "diversity"
                    console.print(
                        f"no model yet: round {step.round} is chosen by diversity instead of {strategy}"
                    )
                select(
                    budget=budget, project=project, strategy=chosen, extractor=extractor, weights=weights, ann=ann,
                    th_hm=th_hm, th_kp=th_kp, fill=fill, seed=seed + step.round, device=device,
                    montage=project / "exports" / f"round_{step.round}",
                )  # fmt: skip
            elif step.action == "label":
                label(project=project, oracle="simulated", ground_truth=ground_truth, seed=seed)
            elif step.action == "train":
                train(
                    project=project, backbone=backbone, width=width, head_channels=head_channels, epochs=epochs,
                    batch_size=batch_size, lr=lr, patience=patience, lr_step=lr_step, lr_gamma=lr_gamma,
                    input_size=input_size, max_minutes=max_minutes, pretrained=pretrained, workers=workers,
                    seed=seed, device=device,
                )  # fmt: skip
            else:
                evaluate(project=project, data=test, tta=tta, max_images=eval_max_images, device=device)
            console.print(f"{step.action} took {_duration(time.monotonic() - t0)}")

    t_start = time.monotonic()
    try:
        with _project_lock(project, "run"):
            loop()
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted:[/] every finished step is stored; run the same command to continue"
        )
        raise typer.Exit(code=130) from None
    curve = _write_learning_curve(project)
    status(project)
    if curve is not None:
        console.print(f"wrote {curve} and {curve.with_suffix('.json')}")
    console.print(f"loop finished in {_duration(time.monotonic() - t_start)}")


def _write_learning_curve(project: Path) -> Path | None:
    """Write exports/learning_curve.{json,png}: each evaluated model's metrics against its training-set size."""
    from .fileio import atomic_write_json
    from .loop import is_evaluated
    from .plots import plot_learning_curve

    with _open_project(project) as proj:
        summary, models = proj.round_summary(), proj.models()
    points = []
    for m in models:
        if not is_evaluated(m.metrics):
            continue
        # label cost so far: initial labels plus every round up to the model's own
        cost = sum(
            s["seconds"] for r, s in summary.items() if r is None or (m.round is not None and r <= m.round)
        )
        metrics = {k: v for k, v in m.metrics.items() if isinstance(v, dict)}
        points.append({"model": m.id, "round": m.round, "train_size": m.train_size, "label_seconds": cost,
                       "metrics": metrics})  # fmt: skip
    if not points:
        return None
    out = project / "exports" / "learning_curve.png"
    atomic_write_json(out.with_suffix(".json"), points, indent=1)
    return plot_learning_curve(points, out)


if __name__ == "__main__":
    app()
