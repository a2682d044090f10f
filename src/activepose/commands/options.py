"""Every option that more than one command takes, declared once (help, metavar); defaults come from the
library's config classes at the parameter (None for training options: the preset / the run's own / TrainConfig)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..config import (
    RECOMMENDED_STRATEGY,
    STRATEGIES,
    AugmentConfig,
    EvalOptions,
    SelectionConfig,
    TrainConfig,
    UncertaintyConfig,
)
from ..config import parse_ttas as parse_tta  # noqa: F401  (the --tta option's parser)
from ..workflow.presets import PRESETS, resolve_train_config

T = TrainConfig  # defaults shown in help


def _train(help_: str, metavar: str | None = None, default=None, **kw):
    shown = f"{default}" if default is not None else None
    return typer.Option(help=help_ + (f" (default: {shown}, or the preset's / the run's own)" if shown else ""),
                        metavar=metavar, show_default=False, rich_help_panel="Training", **kw)  # fmt: skip


# --- data and projects -------------------------------------------------------------------------------------------
ProjectArg = Annotated[
    Path, typer.Argument(help="Project folder (made by `activepose init`).", metavar="PROJECT")
]
Device = Annotated[
    str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.", metavar="DEVICE")
]
Seed = Annotated[int, typer.Option(help="Random seed.", metavar="N")]
MaxImages = Annotated[
    int | None, typer.Option(help="Use a seeded random subset of this many images.", metavar="N")
]
GroundTruth = Annotated[
    Path | None,
    typer.Option(
        "--ground-truth",
        help="COCO JSON with the pool's true labels (the simulated oracle).",
        metavar="GT.json",
    ),
]
AcceptPredictions = Annotated[
    bool,
    typer.Option(
        "--accept-predictions", help="Allow importing model predictions (annotations with a score) as labels."
    ),
]

# --- video input (init --videos, add-videos) ----------------------------------------------------------------------
Videos = Annotated[
    list[Path] | None,
    typer.Option(
        "--videos",
        help="A video file or a folder of them (mp4, mkv, avi, mov, webm, ...); repeat for more. Frames are "
        "decoded once into the project, each with its video, frame index and time.",
        metavar="FILE|DIR",
    ),
]
Every = Annotated[
    int | None, typer.Option(help="Keep every N-th frame of each video (default: every frame).", metavar="N")
]
Fps = Annotated[
    float | None,
    typer.Option(help="Keep at most F frames per second of video time (by timestamp).", metavar="F"),
]
MaxFrames = Annotated[int | None, typer.Option(help="Keep at most M frames per video.", metavar="M")]
KeepNearDuplicates = Annotated[
    bool,
    typer.Option(
        "--keep-near-duplicates",
        help="Keep frames nearly identical to the last kept frame of their video (left out by default).",
    ),
]

_VIDEO = {  # CLI name -> (annotation, default)
    "videos": (Videos, None),
    "every": (Every, None),
    "fps": (Fps, None),
    "max_frames": (MaxFrames, None),
    "keep_near_duplicates": (KeepNearDuplicates, False),
}


@dataclass(frozen=True)
class VideoInput:
    """The video options of `init` / `add-videos`: the files or folders, and how frames are taken from them."""

    values: dict

    @property
    def sources(self) -> tuple[Path, ...]:
        return tuple(self.values["videos"] or ())

    def options(self):
        from ..workflow.footage import VideoOptions

        v = self.values
        return VideoOptions.from_options(v["every"], v["fps"], v["max_frames"], v["keep_near_duplicates"])


# --- training (None = not given) -----------------------------------------------------------------------------------
Preset = Annotated[
    str | None,
    typer.Option(
        help=f"Named training settings: {', '.join(PRESETS)} (cpu: frozen ImageNet MobileNetV2 trunk, 256 px, bf16; "
        "footage: cpu with sessions for small budgets on video frames; paper: VGG-tiny, 368 px, batch 4).",
        metavar="NAME",
        rich_help_panel="Training",
    ),  # fmt: skip
]
Backbone = Annotated[str | None, _train("Backbone: vgg_tiny, mobilenet_v2, resnet18.", "NAME", T.backbone)]
Width = Annotated[float | None, _train("Backbone channel multiplier (vgg_tiny), e.g. 0.5.", "X")]
HeadChannels = Annotated[
    int | None, _train("Channels of the OpenPose stage convolutions.", "N", T.head_channels)
]
InputSize = Annotated[
    int | None, _train("Network input side in pixels (a multiple of 8).", "PX", T.input_size)
]
Epochs = Annotated[int | None, _train("Maximum epochs per training session.", "N", T.max_epochs)]
BatchSize = Annotated[int | None, _train("Images per training batch.", "N", T.batch_size)]
Lr = Annotated[float | None, _train("Adam learning rate (see `activepose lr-find`).", "LR", T.lr)]
Patience = Annotated[int | None, _train("Early-stopping patience in epochs.", "N", T.patience)]
LrStep = Annotated[
    int | None, _train("Step decay: epochs between learning-rate drops.", "N", T.lr_step_epochs)
]
LrGamma = Annotated[float | None, _train("Step decay factor.", "X", T.lr_gamma)]
LrSchedule = Annotated[
    str | None,
    _train(
        "Learning-rate schedule per session: step (decay every --lr-step epochs), onecycle (warm-up, then a "
        "cosine to ~0 at the session's epoch cap) or plateau (warm-up, then x --lr-gamma at each validation "
        "plateau; the session ends converged at the last).",
        "NAME",
        T.lr_schedule,
    ),  # fmt: skip
]
MaxMinutes = Annotated[
    float | None,
    _train("Stop after the epoch that crosses this wall time (a project records the model).", "MIN"),
]
StepsPerEpoch = Annotated[int | None, _train("Cap on batches per epoch.", "N")]
ValFraction = Annotated[
    float | None, _train("Fraction of images held out for validation.", "X", T.val_fraction)
]
Pretrained = Annotated[
    bool | None, _train("Use ImageNet weights for the backbone when available.", "", T.pretrained)
]
Workers = Annotated[int | None, _train("Data-loading worker processes.", "N", T.num_workers)]
FrozenTrunk = Annotated[
    bool | None,
    _train(
        "Train only the heads: the ImageNet trunk's features are computed once per image and cached (augmentation "
        "is then flips and --train-crop windows only).",
        "",
        T.frozen_trunk,
    ),
]
TrainCrop = Annotated[
    int | None,
    _train(
        "With --frozen-trunk: train on windows of this many input pixels around people.", "PX", T.train_crop
    ),
]
Precision = Annotated[
    str | None,
    _train(
        "fp32, or bf16 (autocast; about 2-3x faster on CPUs with AVX-512 BF16, else fp32).",
        "NAME",
        T.precision,
    ),
]
TrainBlocks = Annotated[
    int | None,
    _train("With --frozen-trunk: also train the trunk's last N blocks (on cached features of those before).", "N",
           T.train_blocks),
]  # fmt: skip
CachedViews = Annotated[
    int | None,
    _train("With --frozen-trunk: cache this many augmented views (rotation, zoom, shift, colour, flip) per training "
           "image; items pick a view at random.", "N", T.cached_views),
]  # fmt: skip
TrunkLrScale = Annotated[
    float | None,
    _train(
        "Learning rate of the pretrained trunk weights that train, as a fraction of --lr.",
        "X",
        T.trunk_lr_scale,
    ),
]
ValMetric = Annotated[
    str | None,
    _train("What early stopping and the best checkpoint follow: loss, or pck (PCK@0.2 of the decoded validation "
           "people).", "NAME", T.val_metric),
]  # fmt: skip
StepsPerImage = Annotated[
    float | None,
    _train("Step cap that grows with the labels: at most X x (labelled images) batches per session (whole epochs, "
           "at most --epochs).", "X"),
]  # fmt: skip
MinEpochs = Annotated[
    int | None,
    _train(
        "Fewest epochs of a session with --steps-per-image, and before a plateau can count.",
        "N",
        T.min_epochs,
    ),
]
LrPatience = Annotated[
    int | None,
    _train("plateau schedule: epochs without a better validation score before the rate drops (x --lr-gamma).", "N",
           T.lr_patience),
]  # fmt: skip
LrDrops = Annotated[
    int | None,
    _train("plateau schedule: rate drops before the next plateau ends the session.", "N", T.lr_drops),
]
WarmupSteps = Annotated[
    int | None, _train("plateau schedule: batches of linear warm-up from lr/25.", "N", T.warmup_steps)
]
Restart = Annotated[
    str | None,
    _train("Where a session on grown labels starts: warm (the last model) or initial (the run's first weights); "
           "either way the last model is kept unless the session beats it on validation.", "NAME", T.restart),
]  # fmt: skip
FeatureCache = Annotated[
    str | None, _train("Folder of cached trunk features (--frozen-trunk).", "DIR", T.feature_cache)
]

# --- selection ------------------------------------------------------------------------------------------------------
S = SelectionConfig
Strategy = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help=f"{', '.join(STRATEGIES[:-1])} or {STRATEGIES[-1]} (docs/selection.md).",
        metavar="NAME",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
Budget = Annotated[int, typer.Option("--budget", "-b", help="Images to choose per round.", metavar="N",
                                     rich_help_panel="Selection")]  # fmt: skip
Extractor = Annotated[
    str,
    typer.Option(
        help="Embeddings: mobilenet_v2, resnet50, pose_backbone.", metavar="NAME", rich_help_panel="Selection"
    ),
]
ExtractorWeights = Annotated[
    Path | None,
    typer.Option(
        help="Weights file for the extractor (resnet50; default: the torch hub cache).",
        metavar="FILE",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
AnnBackend = Annotated[
    str, typer.Option(help="ANN backend: annoy, faiss, exact.", metavar="NAME", rich_help_panel="Selection")
]
RankedPool = Annotated[
    float,
    typer.Option(
        help="ranked-hybrid: ANN diversity among the X x budget most uncertain candidates.",
        metavar="X",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
MaxCandidates = Annotated[
    int | None,
    typer.Option(
        help="Consider only a seeded random sample of this many unlabelled images per round (default: all).",
        metavar="N",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
SpreadVideos = Annotated[
    bool,
    typer.Option(
        "--spread-videos/--no-spread-videos",
        help="Spread each batch across videos (no video gets a second frame while another has fewer), for any "
        "strategy.",
        metavar="",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
VideoPattern = Annotated[
    str | None,
    typer.Option(
        help="Images without a COCO 'video': their video is the first group of this regex in the file name, "
        "e.g. 'frames/(.+?)/' (see docs/selection.md).",
        metavar="REGEX",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
MinFrameDistance = Annotated[
    float,
    typer.Option(
        help="With --spread-videos: skip frames closer than this (embedding distance) to a labelled or chosen "
        "frame of the same video.",
        metavar="D",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
ThHm = Annotated[
    float,
    typer.Option(help="Heatmap peak threshold thHM, in (0, 1].", metavar="X", rich_help_panel="Selection"),
]
ThKp = Annotated[
    int | None,
    typer.Option(
        help="Keypoint count threshold thKP (default: 6 of 18, scaled to the skeleton).",
        metavar="N",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
Fill = Annotated[
    str,
    typer.Option(
        help="hybrid with too few uncertain images: fill by diversity or uncertainty.",
        metavar="RULE",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
DEFAULTS = {"strategy": RECOMMENDED_STRATEGY, "extractor": S.extractor, "ann": S.ann_backend, "th_hm": UncertaintyConfig.th_hm,
            "fill": S.fill, "ranked_pool": S.ranked_pool}  # fmt: skip

# --- evaluation -----------------------------------------------------------------------------------------------------
Tta = Annotated[
    str,
    typer.Option(
        help="Test-time augmentations: comma-separated names, 'all' or 'none'.",
        metavar="LIST",
        rich_help_panel="Evaluation",
    ),  # fmt: skip
]
EvalMaxImages = Annotated[
    int | None,
    typer.Option(
        help="Evaluate on a seeded subset of this many test images.",
        metavar="N",
        rich_help_panel="Evaluation",
    ),  # fmt: skip
]
EvalBatch = Annotated[
    int, typer.Option(help="Images per forward pass.", metavar="N", rich_help_panel="Evaluation")
]
ModelInput = Annotated[
    int | None,
    typer.Option(
        help="Network input side (default: the model's training size).",
        metavar="PX",
        rich_help_panel="Evaluation",
    ),  # fmt: skip
]
Scale = Annotated[
    str | None,
    typer.Option(
        help="Network input per image: auto (each image x the model's training scale, so people appear as "
        "large as in training), fixed (every image letterboxed to the input size) or a factor such as 0.5 "
        "(default: auto when the model records its training scale, else fixed; fixed when --input-size is "
        "given).",
        metavar="auto|fixed|X",
        rich_help_panel="Evaluation",
    ),  # fmt: skip
]
MinParts = Annotated[
    int | None,
    typer.Option(help="Decoder: minimum parts per person.", metavar="N", rich_help_panel="Evaluation"),
]
MinScore = Annotated[
    float | None,
    typer.Option(help="Decoder: minimum person score.", metavar="X", rich_help_panel="Evaluation"),
]
EVAL_BATCH = EvalOptions.batch_size


# --- the training options as one group: declared here once, added to train / run / simulate by a decorator ----------
_TRAINING = {  # CLI name -> (annotation, TrainConfig field)
    "preset": (Preset, None),
    "backbone": (Backbone, "backbone"),
    "width": (Width, "width"),
    "head_channels": (HeadChannels, "head_channels"),
    "input_size": (InputSize, "input_size"),
    "epochs": (Epochs, "max_epochs"),
    "batch_size": (BatchSize, "batch_size"),
    "lr": (Lr, "lr"),
    "patience": (Patience, "patience"),
    "lr_step": (LrStep, "lr_step_epochs"),
    "lr_gamma": (LrGamma, "lr_gamma"),
    "lr_schedule": (LrSchedule, "lr_schedule"),
    "max_minutes": (MaxMinutes, "max_minutes"),
    "steps_per_epoch": (StepsPerEpoch, "steps_per_epoch"),
    "val_fraction": (ValFraction, "val_fraction"),
    "pretrained": (Pretrained, "pretrained"),
    "workers": (Workers, "num_workers"),
    "frozen_trunk": (FrozenTrunk, "frozen_trunk"),
    "train_crop": (TrainCrop, "train_crop"),
    "feature_cache": (FeatureCache, "feature_cache"),
    "precision": (Precision, "precision"),
    "train_blocks": (TrainBlocks, "train_blocks"),
    "cached_views": (CachedViews, "cached_views"),
    "trunk_lr_scale": (TrunkLrScale, "trunk_lr_scale"),
    "val_metric": (ValMetric, "val_metric"),
    "steps_per_image": (StepsPerImage, "steps_per_image"),
    "min_epochs": (MinEpochs, "min_epochs"),
    "lr_patience": (LrPatience, "lr_patience"),
    "lr_drops": (LrDrops, "lr_drops"),
    "warmup_steps": (WarmupSteps, "warmup_steps"),
    "restart": (Restart, "restart"),
}


@dataclass(frozen=True)
class TrainingOptions:
    """The training options a user typed (None: not given), turned into a TrainConfig by `config`."""

    values: dict

    def config(self, run_dir: Path | None, device: str, seed: int | None = None, grayscale: bool = False,
               no_augment: bool = False):  # fmt: skip
        """Return the TrainConfig: these options > the preset > the run's own (in `run_dir`) > the defaults."""

        given = {field: self.values[name] for name, (_, field) in _TRAINING.items() if field is not None}
        cfg = resolve_train_config(run_dir, self.values["preset"], grayscale=grayscale or None, device=device,
                                   seed=seed, **given)  # fmt: skip
        if no_augment:
            return dataclasses.replace(cfg, augment=None)
        if grayscale:
            return dataclasses.replace(cfg, augment=AugmentConfig(grayscale=True))
        return cfg


def _option_group(keyword: str, table: dict, make):
    """Return a decorator adding the options of `table` (name -> (annotation, default, ...)) to a command after its
    own, and calling it with `keyword=make(values)` instead."""

    def decorator(fn):
        hints = typing.get_type_hints(
            fn, include_extras=True
        )  # resolved now: typer then needs no string lookups
        own = [p.replace(annotation=hints.get(name, p.annotation))
               for name, p in inspect.signature(fn).parameters.items() if name != keyword]  # fmt: skip
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=spec[1], annotation=spec[0])
                 for name, spec in table.items()]  # fmt: skip

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name, spec[1]) for name, spec in table.items()}
            return fn(*args, **{keyword: make(values)}, **kwargs)

        params = own + added
        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must see this signature, not the command's own
        return wrapper

    return decorator


video_options = _option_group("video", _VIDEO, VideoInput)
training_options = _option_group(
    "training", {k: (a, None) for k, (a, _) in _TRAINING.items()}, TrainingOptions
)


Engine = Annotated[
    str,
    typer.Option(
        help="Where the pool is scored (uncertainty, signals, embeddings): local, or ray (Ray Data; the same "
        "caches and selection).",
        metavar="NAME",
        rich_help_panel="Selection",
    ),  # fmt: skip
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="--engine ray: the cluster, e.g. ray://head:10001 or auto (default: a local Ray on 127.0.0.1, "
        "started and stopped per scoring).",
        metavar="ADDR",
        rich_help_panel="Selection",
    ),  # fmt: skip
]


# --- the selection options as one group: added to select / run / simulate -----------------------------------------
_SELECTION = {  # CLI name -> (annotation, default)
    "extractor": (Extractor, DEFAULTS["extractor"]),
    "weights": (ExtractorWeights, None),
    "ann": (AnnBackend, DEFAULTS["ann"]),
    "th_hm": (ThHm, DEFAULTS["th_hm"]),
    "th_kp": (ThKp, None),
    "fill": (Fill, DEFAULTS["fill"]),
    "max_candidates": (MaxCandidates, None),
    "ranked_pool": (RankedPool, DEFAULTS["ranked_pool"]),
    "spread_videos": (SpreadVideos, False),
    "video_pattern": (VideoPattern, None),
    "min_frame_distance": (MinFrameDistance, 0.0),
    "engine": (Engine, "local"),
    "ray_address": (RayAddress, None),
}


@dataclass(frozen=True)
class SelectionOptions:
    """The selection options of a command, turned into a SelectionConfig by `config` (validated there)."""

    values: dict

    def config(self, seed: int = 0, cache_dir: Path | None = None) -> SelectionConfig:
        v = self.values
        return SelectionConfig(uncertainty=UncertaintyConfig(th_hm=v["th_hm"], th_kp=v["th_kp"]),
                               extractor=v["extractor"], weights=v["weights"], ann_backend=v["ann"], fill=v["fill"],
                               cache_dir=cache_dir, seed=seed, max_candidates=v["max_candidates"],
                               ranked_pool=v["ranked_pool"], spread_videos=v["spread_videos"],
                               video_pattern=v["video_pattern"], min_frame_distance=v["min_frame_distance"],
                               engine=v["engine"], ray_address=v["ray_address"])  # fmt: skip


selection_options = _option_group("selection", _SELECTION, SelectionOptions)
