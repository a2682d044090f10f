"""Settings: the dataclasses that configure the engine, selection, evaluation and the labelling page,
validated once when made, without torch.

Every module that does the work imports its settings from here (the engine, selection, the application and
the CLI alike), so a setting has one definition, one default and one check. Nothing here imports torch or
the engine: `import activepose.config` is cheap, and `activepose --help` needs nothing more.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, SyntheticError

INPUT_SIZE = 256  # network input side in pixels (letterboxed square); a multiple of the stride 8
TH_HM = 0.3  # uncertainty: a keypoint is confident when its smoothed heatmap peak reaches thHM
PRECISIONS = ("fp32", "bf16")  # arithmetic of a model's forward passes (see `device.autocast_dtype`)
INIT_SCHEMES = ("glorot", "kaiming")  # weight initialisation of the OpenPose stages
LR_SCHEDULES = ("step", "onecycle", "plateau")  # learning-rate schedules
VAL_METRICS = ("loss", "pck")  # what a session's early stopping and best checkpoint follow
RESTARTS = ("warm", "initial")  # where a new session on grown data starts: last weights, or the run's first
# The backbones and which TrainConfig options each takes (beyond the common ones). The engine's registry
# (`pose.models.register_backbone`) adds a backbone registered elsewhere; a test keeps the built-ins in step.
BACKBONES: dict[str, tuple[str, ...]] = {
    "vgg_tiny": ("width",), "mobilenet_v2": (), "mobilenet_v2_deep": (), "resnet18": ()
}  # fmt: skip
# The compute control of a simulation grid: each seed's initial set trained with the schedule every other arm
# gets each round, without new labels (not a selection strategy: `activepose.experiment.grid` runs it).
STATIC_ARM = "static"
_DEVICE_FORM = re.compile(r"(auto|cpu|mps(:0)?|cuda(:\d+)?)")


def multiple_of_8(option: str, value: Any) -> list[str]:
    """Return ["OPTION must be a positive multiple of 8, got VALUE"] unless `value` is one (the model's stride)."""
    return (
        [] if value >= 8 and value % 8 == 0 else [f"{option} must be a positive multiple of 8, got {value}"]
    )


def at_least(option: str, value: Any, minimum: int) -> list[str]:
    """Return ["OPTION must be >= MINIMUM, got VALUE"] when `value` is below `minimum`, else []."""
    return [] if value >= minimum else [f"{option} must be >= {minimum}, got {value}"]


def check_device(device: Any) -> str:
    """Return the normalised `--device` string; ConfigError listing the valid forms when it is none of them.

    Only the form is checked (a config may be written on one machine and used on another); whether the
    device exists here is `device.resolve_device`'s job.
    """
    spec = str(device).strip().lower()
    if _DEVICE_FORM.fullmatch(spec) is None:
        forms = "auto, cpu, cuda, cuda:N" + (", mps" if platform.system() == "Darwin" else "")  # Apple's GPUs
        raise ConfigError(f"--device {str(device)!r} is not a device: use one of {forms}")
    return spec


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges (defaults: the paper's).

    - `rotate`: degrees, uniform in +-rotate.
    - `shift`: fraction of the width/height, uniform in +-shift per axis. The paper prints "0.62"; we read it
      as 0.0625, the default shift limit of the augmentation framework it used (a 62 % shift would push
      most people out of the image).
    - `scale`: zoom factor range (same factor for x and y).
    - `brightness`, `contrast`: multiplicative factor ranges (torchvision/ColorJitter semantics:
      brightness multiplies pixel values, contrast blends with the mean gray level).
    - `hflip`: probability of a horizontal flip; left/right keypoints swap via `Skeleton.flip_permutation`.
    - `grayscale`: convert to gray (3 equal channels) after the colour changes (the paper's data was gray).
    """

    rotate: float = 30.0
    shift: float = 0.0625
    scale: tuple[float, float] = (0.6, 1.4)
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    hflip: float = 0.5
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.rotate < 0 or self.shift < 0:
            raise ConfigError("AugmentConfig: rotate and shift are half-ranges and must be >= 0")
        for name in ("scale", "brightness", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(
                    f"AugmentConfig.{name} must be a range (lo, hi) with 0 < lo <= hi, got {(lo, hi)}"
                )
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"AugmentConfig.hflip is a probability, got {self.hflip}")

    @classmethod
    def geometry_only(cls, **kw: Any) -> AugmentConfig:
        """Return a config without colour changes (for tests and visual checks)."""
        return cls(brightness=(1.0, 1.0), contrast=(1.0, 1.0), **kw)


@dataclass(frozen=True)
class TargetConfig:
    """Target parameters: output `stride`, Gaussian `sigma` and PAF band half-width, both in output cells."""

    stride: int = 8
    sigma: float = 1.0
    paf_width: float = 1.0


@dataclass
class TrainConfig:
    """Everything a training session needs; defaults follow the paper (Adam 1e-4, batch 4, patience 35)."""

    backbone: str = "vgg_tiny"
    stages: int | None = None
    pretrained: bool = True
    init: str = "glorot"
    head_channels: int = 128  # channels of the OpenPose stage convs
    width: float | None = None  # backbone channel multiplier (vgg_tiny); None: the backbone's default
    input_size: int = INPUT_SIZE
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_step_epochs: int = 30  # step decay: multiply the learning rate by lr_gamma every lr_step_epochs
    lr_gamma: float = 0.5
    # "step" (the paper's step decay, per epoch) or "onecycle" (per batch: a linear warm-up from lr/25 over
    # the first 15 % of the session's steps, then half a cosine down to ~0 at `max_epochs`; every session,
    # so each warm-started round warms up and anneals again).
    lr_schedule: str = "step"
    max_epochs: int = 200
    patience: int = 35  # early stopping: epochs without a better validation score
    # What validation follows: "loss" (the last stage's L2 loss) or "pck" (PCK@0.2 of the decoded people of the
    # validation images: what the metrics measure; a model that finds nobody scores 0 however low its loss).
    val_metric: str = "loss"
    # A step cap that grows with the labelled set: a session runs at most steps_per_image x (training images)
    # batches (rounded up to whole epochs, at least min_epochs, at most max_epochs); None: max_epochs.
    steps_per_image: float | None = None
    min_epochs: int = 1
    # "plateau" schedule: after lr_patience epochs without a better validation score, multiply the rate by
    # lr_gamma; stop (converged) at the lr_drops + 1-th plateau. Warm-up over the first warmup_steps batches.
    lr_patience: int = 3
    lr_drops: int = 2
    warmup_steps: int = 0
    # Where a new session on grown data starts: "warm" (the last session's weights, the paper) or "initial"
    # (the weights session 1 started from, kept in run_dir/initial.pt). Either way the previous model is scored
    # on the new validation split first and is kept as best.pt unless the session beats it.
    restart: str = "warm"
    min_delta: float = 0.0
    val_fraction: float = 0.1
    max_val_images: int = 500
    # The previous model is kept (above) only when the validation split holds at least this many images: on fewer
    # (footage's first rounds: 1-10 held-out frames) the comparison is noise, and the session's best epoch is
    # handed on.
    keep_min_val: int = 20
    steps_per_epoch: int | None = None  # cap on batches per epoch (None: the whole training split)
    max_minutes: float | None = None  # stop (resumably) after the epoch that crosses this wall time
    budget_ends_session: bool = False  # True: hitting max_minutes completes the session (projects, the loop)
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    grayscale: bool = False
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    # Train only the neck and stages on cached ImageNet-trunk features (see activepose.pose.trunk); with it,
    # augmentation is the horizontal flip and `train_crop` (px, a multiple of the stride) windows only.
    frozen_trunk: bool = False
    # With frozen_trunk: the last N blocks of the trunk are trained too (on cached features of the blocks
    # before them); 0: only the neck and stages.
    train_blocks: int = 0
    # With frozen_trunk: this many augmented views per training image (the `augment` ranges, drawn once per
    # image and view), their trunk features cached like the plain input's; an item picks one view at random.
    cached_views: int = 0
    # The learning rate of ImageNet-pretrained weights that train, as a fraction of `lr` (the new layers' rate).
    trunk_lr_scale: float = 1.0
    train_crop: int | None = None
    feature_cache: str | None = (
        None  # folder of cached trunk features, made absolute (None: ~/.cache/activepose/trunk)
    )
    precision: str = "fp32"  # "bf16": autocast where the device runs it natively (activepose.device)
    targets: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        problems = train_config_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        if self.feature_cache is not None:  # checkpoints keep it: a relative folder would follow the cwd
            self.feature_cache = os.path.abspath(self.feature_cache)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        has_aug = "augment" in d
        aug = d.pop("augment", None)
        tgt = d.pop("targets", None)
        known = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: tuple(v) if k == "betas" else v for k, v in d.items() if k in known})
        if aug is not None:
            cfg.augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        elif has_aug:  # trained with --no-augment
            cfg.augment = None
        if tgt is not None:
            cfg.targets = TargetConfig(**tgt)
        return cfg


# TrainConfig field -> the option a user types (CLI spelling); fields not listed are `--field-name`.
OPTION_NAMES = {"max_epochs": "--epochs", "lr_step_epochs": "--lr-step", "num_workers": "--workers"}
# Options that fix the network (or its training resolution): they cannot change within a run directory.
ARCHITECTURE_OPTIONS = ("backbone", "width", "head_channels", "stages", "input_size")


def option_name(field_name: str) -> str:
    """Return the option spelling of a TrainConfig field, e.g. 'batch_size' -> '--batch-size'."""
    return OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def train_config_problems(cfg: TrainConfig) -> list[str]:
    """Return one short line per invalid value of `cfg`, naming the option as a user types it."""
    problems: list[str] = []

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            problems.append(f"{option_name(name)} must be {rule}, got {getattr(cfg, name)!r}")

    backbones = sorted(BACKBONES)
    if cfg.backbone not in backbones:
        problems.append(
            f"--backbone {cfg.backbone!r} is not a known backbone; choose from {', '.join(backbones)}"
        )
    elif cfg.width is not None and "width" not in BACKBONES[cfg.backbone]:
        takes = [b for b in backbones if "width" in BACKBONES[b]]
        problems.append(f"--width applies only to {', '.join(takes) or 'no backbone'}, not to {cfg.backbone}")
    need(cfg.stages is None or cfg.stages >= 1, "stages", ">= 1")
    need(cfg.init in INIT_SCHEMES, "init", " or ".join(INIT_SCHEMES))
    need(cfg.head_channels >= 1, "head_channels", ">= 1")
    need(cfg.width is None or 0 < cfg.width <= 16, "width", "in (0, 16]")
    need(cfg.input_size >= 8 and cfg.input_size % 8 == 0, "input_size", "a positive multiple of 8")
    need(cfg.batch_size >= 1, "batch_size", ">= 1")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), "lr", "> 0")
    need(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), "betas", "two numbers in [0, 1)")
    need(0 <= cfg.weight_decay < math.inf, "weight_decay", "a finite number >= 0")
    need(cfg.lr_step_epochs >= 1, "lr_step_epochs", ">= 1")
    need(0 < cfg.lr_gamma <= 1, "lr_gamma", "in (0, 1]")
    need(cfg.lr_schedule in LR_SCHEDULES, "lr_schedule", " or ".join(LR_SCHEDULES))
    need(cfg.max_epochs >= 0, "max_epochs", ">= 0")
    need(cfg.patience >= 0, "patience", ">= 0")
    need(cfg.val_metric in VAL_METRICS, "val_metric", " or ".join(VAL_METRICS))
    need(cfg.restart in RESTARTS, "restart", " or ".join(RESTARTS))
    need(cfg.steps_per_image is None or 0 < cfg.steps_per_image < math.inf, "steps_per_image", "> 0")
    need(cfg.min_epochs >= 1, "min_epochs", ">= 1")
    need(cfg.lr_patience >= 1, "lr_patience", ">= 1")
    need(cfg.lr_drops >= 0, "lr_drops", ">= 0")
    need(cfg.warmup_steps >= 0, "warmup_steps", ">= 0")
    need(cfg.train_blocks >= 0, "train_blocks", ">= 0")
    need(cfg.cached_views >= 0, "cached_views", ">= 0")
    need(0 < cfg.trunk_lr_scale <= 1, "trunk_lr_scale", "in (0, 1]")
    if cfg.cached_views and (not cfg.frozen_trunk or cfg.augment is None):
        problems.append("--cached-views needs --frozen-trunk and augmentation (it caches augmented inputs)")
    if cfg.train_blocks and not cfg.frozen_trunk:
        problems.append("--train-blocks needs --frozen-trunk (without it the whole trunk trains)")
    need(0 <= cfg.min_delta < math.inf, "min_delta", "a finite number >= 0")
    need(0 <= cfg.val_fraction < 1, "val_fraction", "in [0, 1)")
    need(cfg.max_val_images >= 0, "max_val_images", ">= 0")
    need(cfg.keep_min_val >= 0, "keep_min_val", ">= 0")
    need(cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1, "steps_per_epoch", ">= 1")
    # 0 is allowed: stop (resumably) after the first epoch.
    need(cfg.max_minutes is None or cfg.max_minutes >= 0, "max_minutes", ">= 0")
    need(cfg.num_workers >= 0, "num_workers", ">= 0")
    if cfg.train_crop is not None:
        need(cfg.train_crop >= 8 and cfg.train_crop % 8 == 0, "train_crop", "a positive multiple of 8")
        if not cfg.frozen_trunk:
            problems.append("--train-crop needs --frozen-trunk (it crops cached trunk features)")
    need(cfg.precision in PRECISIONS, "precision", " or ".join(PRECISIONS))
    if cfg.frozen_trunk and not cfg.pretrained:
        problems.append("--frozen-trunk needs ImageNet weights: a frozen random trunk learns nothing")
    try:
        check_device(cfg.device)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


# --- prediction and selection -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderConfig:
    """Decoder parameters (thresholds from OpenPose / OpenPose-plus).

    - peak_threshold: minimum smoothed heatmap value of a keypoint peak.
    - smooth_sigma: std (output cells) of the Gaussian smoothing before peak finding (0 = off). 0.5, not
      1.0: on the real sports_multi photos (long side 256) decoding the ground-truth targets recovers
      161/162 people at 0.5 but 153/162 at 1.0, whose blur merges same-type joints of people standing
      2-3 cells apart (and shifts them: p90 error 2.0 px vs 0.3 px). OpenPose smooths by 3 px at full
      resolution, ~0.4 cell at stride 8. `peak_confidences` must get the same value.
    - nms_kernel: max-pool NMS window (cells).
    - nms_saddle: also keep a peak beaten only by a diagonal neighbour when both cells between them are
      below nms_saddle x its value (see `find_peaks`; 0 = plain max-pool NMS). Separates two people's
      joints in diagonally adjacent cells; a single round blob never triggers it.
    - upsample: factor to bilinearly upsample the smoothed heatmaps before NMS. 1 (default) = none: the
      log-parabola sub-cell refinement already localises Gaussian-like peaks to ~0.01 cell at no cost,
      whereas upsampling multiplies the NMS work by upsample^2.
    - paf_samples: points sampled along each candidate limb for the line integral.
    - paf_score_threshold: per-sample PAF dot-product threshold.
    - paf_min_ratio: minimum fraction of samples above that threshold.
    - min_parts: minimum number of parts of a person (capped at K, so a 1-keypoint skeleton works).
    - min_person_score: minimum person score = (sum of part peak scores + connection scores) / parts.
    - max_people: keep at most this many people per image (highest scores).
    """

    peak_threshold: float = 0.05
    smooth_sigma: float = 0.5
    nms_kernel: int = 3
    nms_saddle: float = 0.9
    upsample: int = 1
    paf_samples: int = 10
    paf_score_threshold: float = 0.05
    paf_min_ratio: float = 0.8
    min_parts: int = 4
    min_person_score: float = 0.3
    max_people: int = 100

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                problems.append(
                    f"{DECODER_OPTIONS.get(name, name)} must be {rule}, got {getattr(self, name)!r}"
                )

        for name in ("peak_threshold", "nms_saddle", "paf_score_threshold", "paf_min_ratio"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]")
        need(self.smooth_sigma >= 0, "smooth_sigma", ">= 0")
        need(self.nms_kernel >= 3 and self.nms_kernel % 2 == 1, "nms_kernel", "an odd number >= 3")
        need(self.upsample >= 1, "upsample", ">= 1")
        need(self.paf_samples >= 2, "paf_samples", ">= 2")
        need(self.min_parts >= 1, "min_parts", ">= 1")
        need(self.min_person_score >= 0, "min_person_score", ">= 0")
        need(self.max_people >= 1, "max_people", ">= 1")
        if problems:
            raise ConfigError("; ".join(problems))


# DecoderConfig fields a user sets from the command line -> the option's spelling (others: the field name).
DECODER_OPTIONS = {"min_parts": "--min-parts", "min_person_score": "--min-score"}


@dataclass(frozen=True)
class UncertaintyConfig:
    """Uncertainty filter parameters.

    - th_hm: minimum smoothed peak of a confident keypoint (paper thHM), in (0, 1].
    - th_kp: minimum confident keypoints of a certain image (paper thKP); None: `keypoint_threshold(K)`.
    - smooth_sigma: heatmap smoothing (output cells) before taking peaks; the decoder's by default.
    - input_size: letterbox size of the network input (a multiple of the model stride).
    - batch_size: images per forward pass.
    """

    th_hm: float = TH_HM
    th_kp: int | None = None
    smooth_sigma: float = DecoderConfig().smooth_sigma
    input_size: int = INPUT_SIZE
    batch_size: int = 16

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.th_hm <= 1.0:
            problems.append(f"--th-hm must be in (0, 1], got {self.th_hm}")
        if self.th_kp is not None and int(self.th_kp) < 1:
            problems.append(f"--th-kp must be >= 1, got {self.th_kp}")
        if not self.smooth_sigma >= 0:
            problems.append(f"--smooth-sigma must be >= 0, got {self.smooth_sigma}")
        problems += multiple_of_8("--input-size", self.input_size)
        problems += at_least("--batch-size", self.batch_size, 1)
        if problems:
            raise ConfigError("; ".join(problems))


FILL_RULES = ("diversity", "uncertainty")  # hybrid, when fewer images are uncertain than the budget
# Feature extractors and ANN backends by name: the registries in `sampling.features` / `sampling.ann` add
# what they register, so a selection is checked without importing them (a test keeps the built-ins in step).
EXTRACTORS: set[str] = {"mobilenet_v2", "resnet50", "pose_backbone"}
ANN_BACKENDS: set[str] = {"annoy", "faiss", "exact"}


@dataclass
class SelectionConfig:
    """Parameters of one selection; `uncertainty` holds the paper's thHM / thKP.

    Invalid values raise ConfigError naming the option (--extractor, --ann, --fill, --batch-size) at
    construction; a known ANN backend whose library is not installed is an EnvironmentProblem when a
    strategy that uses it is selected (`select_batch`), before any image is scored.
    """

    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    extractor: str = "mobilenet_v2"
    weights: Path | None = None  # feature-extractor weights file (mobilenet_v2, resnet50)
    ann_backend: str = "annoy"
    fill: str = (
        "diversity"  # hybrid, when fewer images are uncertain than the budget: "diversity" | "uncertainty"
    )
    cache_dir: Path | None = None
    batch_size: int = 32
    seed: int = 0
    # ranked-hybrid: diversity among the ranked_pool x budget most uncertain candidates.
    ranked_pool: float = 3.0
    # Consider only a seeded random sample of this many unlabelled images (None: all of them). Scoring the
    # whole pool every round is the paper's rule; on a CPU a sample keeps rounds short (baal's `max_sample`).
    max_candidates: int | None = None
    # Video-aware selection (activepose.sampling.videos): spread the batch across videos, skip frames closer
    # than min_frame_distance (embeddings) to a labelled or chosen frame of the same video; an image's video is
    # its COCO `video`, else the first group of video_pattern in its file name.
    spread_videos: bool = False
    video_pattern: str | None = None
    min_frame_distance: float = 0.0
    # Where the pool is scored (activepose.sampling.engine): "local" (this process) or "ray" (Ray Data, at
    # ray_address, or a local Ray started for the call); the caches and the selection are the same.
    engine: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.engine not in ("local", "ray"):
            problems.append(f"--engine must be local or ray, got {self.engine!r}")
        elif self.ray_address and self.engine != "ray":
            problems.append("--ray-address is for --engine ray")
        extractors = sorted(EXTRACTORS)
        if self.extractor not in extractors:
            problems.append(
                f"--extractor {self.extractor!r} is not a known feature extractor; choose from {', '.join(extractors)}"
            )
        elif self.extractor == "pose_backbone" and self.weights is not None:
            problems.append(
                "--weights does not apply to the pose_backbone extractor (it uses the pose model's)"
            )
        if self.ann_backend not in ANN_BACKENDS:
            problems.append(
                f"--ann {self.ann_backend!r} is not a known ANN backend; choose from {', '.join(sorted(ANN_BACKENDS))}"
            )
        if self.fill not in FILL_RULES:
            problems.append(f"--fill must be {' or '.join(FILL_RULES)}, got {self.fill!r}")
        problems += at_least("--batch-size", self.batch_size, 1)
        if not self.ranked_pool >= 1:
            problems.append(f"--ranked-pool must be >= 1, got {self.ranked_pool}")
        if self.max_candidates is not None and self.max_candidates < 1:
            problems.append(f"--max-candidates must be >= 1, got {self.max_candidates}")
        if not self.min_frame_distance >= 0:
            problems.append(f"--min-frame-distance must be >= 0, got {self.min_frame_distance}")
        if self.video_pattern is not None:
            import re

            try:
                re.compile(self.video_pattern)
            except re.error as exc:
                problems.append(f"--video-pattern {self.video_pattern!r} is not a regular expression: {exc}")
        if problems:
            raise ConfigError("; ".join(problems))


# --- evaluation and rounds ----------------------------------------------------------------------------------------
# The test-time augmentations in the paper's order (`pose.tta.TTAS` implements each, in this order).
TTA_NAMES: tuple[str, ...] = ("clean", "blur", "bright", "dark", "zoom_in", "zoom_out")
SCALE_POLICIES = ("auto", "fixed")
# Selection strategies by name, in registration order: `sampling.strategies.register_strategy` adds others.
STRATEGIES: list[str] = [
    "random", "uncertainty", "diversity", "coreset", "hybrid", "ranked-hybrid", "kmeans", "typiclust", "mpe",
    "tta-consistency", "tta-hybrid", "adaptive",
]  # fmt: skip
# What `select` and `run` use when no --strategy is named, and what `make demo` compares with random: to be chosen
# from issue 20's simulation grids; the evidence so far is in docs/selection.md#the-default-strategy.
RECOMMENDED_STRATEGY = "hybrid"


def check_strategy_name(name: str) -> str:
    """Return `name` if it is a known strategy; ConfigError naming the choices otherwise (no heavy imports)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


def parse_ttas(text: str) -> tuple[str, ...]:
    """Return the TTA names of a `--tta` value: comma-separated names, 'all' (every TTA, paper order) or
    'none' (only `clean`, no augmentation). Spaces and repeats are ignored; the given order is kept.

    Raises ConfigError "unknown TTA 'foo'; choose from ..." for a name that is not a TTA, or for no name.
    """
    value = str(text).strip()
    if value.lower() == "all":
        return TTA_NAMES
    if value.lower() == "none":
        return ("clean",)
    names = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if not names:
        raise ConfigError(
            f"--tta names no TTA; give comma-separated names from {', '.join(TTA_NAMES)}, 'all' or 'none'"
        )
    for name in names:
        if name not in TTA_NAMES:
            raise ConfigError(f"unknown TTA {name!r}; choose from {', '.join(TTA_NAMES)}, 'all' or 'none'")
    return names


def parse_scale(value: str | float | None) -> str | float | None:
    """Return a `--scale` value as "auto", "fixed", a factor > 0, or None (not given); ConfigError otherwise."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        factor = value
    else:
        text = str(value).strip().lower()
        if text in SCALE_POLICIES:
            return text
        try:
            factor = float(text)
        except ValueError:
            factor = math.nan
    if factor is not None and not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"--scale must be auto, fixed or a factor > 0 (e.g. 0.5), got {value!r}")
    return None if factor is None else float(factor)


@dataclass
class EvalConfig:
    """Settings of `evaluate_model`.

    `count_min_score`: predicted people with a lower score are not counted (they still enter AP).
    `count_min_keypoints`: GT people need this many labelled keypoints (after the TTA) to be counted.
    `device`: where inputs go; None = the model's device. `num_workers`: image-reading threads.
    `ttas` may be given as a `--tta` string ("clean,blur", "all", "none"; see `parse_ttas`).
    `scale`: the network input size per image (see `predict.InputScale.resolve`): "fixed" (every image
    letterboxed to `input_size`), "auto" (each image resized by `train_scale`, the model's training pixel
    scale, so people appear as large as in training; fixed when `train_scale` is None) or a factor; None =
    auto when `train_scale` is known, else fixed.
    Invalid values raise ConfigError naming the option.
    """

    input_size: int = INPUT_SIZE
    batch_size: int = 8
    ttas: tuple[str, ...] = field(default_factory=lambda: TTA_NAMES)
    pck_alpha: float = 0.2
    device: str | None = None
    count_min_score: float = 0.0
    count_min_keypoints: int = 1
    num_workers: int = 2
    scale: str | float | None = None
    train_scale: float | None = None

    def __post_init__(self) -> None:
        problems = []
        try:
            self.scale = parse_scale(self.scale)
        except ConfigError as exc:
            problems.append(str(exc))
        if self.train_scale is not None and not (math.isfinite(self.train_scale) and self.train_scale > 0):
            problems.append(f"train_scale must be > 0, got {self.train_scale}")
        if isinstance(self.ttas, str):
            self.ttas = parse_ttas(self.ttas)  # ConfigError for an unknown name
        else:
            self.ttas = tuple(self.ttas)
            unknown = [t for t in self.ttas if t not in TTA_NAMES]
            if unknown:
                problems.append(f"unknown TTA {unknown[0]!r}; choose from {', '.join(TTA_NAMES)}")
            elif not self.ttas:
                problems.append(f"--tta names no TTA; choose from {', '.join(TTA_NAMES)}")
        problems += multiple_of_8("--input-size", self.input_size)
        problems += at_least("--batch-size", self.batch_size, 1)
        if not 0 < self.pck_alpha:
            problems.append(f"--pck-alpha must be > 0, got {self.pck_alpha}")
        if self.count_min_keypoints < 0:
            problems.append(f"--count-min-keypoints must be >= 0, got {self.count_min_keypoints}")
        if self.num_workers < 0:
            problems.append(f"--workers must be >= 0, got {self.num_workers}")
        if self.device is not None:
            try:
                check_device(self.device)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class EvalOptions:
    """How a project's model is evaluated: its test set (default: the project's), TTAs and subset."""

    test: Path | None = None
    ttas: tuple[str, ...] = TTA_NAMES
    max_images: int | None = None  # a seeded subset of the test set
    batch_size: int = 8
    input_size: int | None = None  # default: the model's training size
    min_parts: int | None = None
    min_score: float | None = None
    device: str = "auto"
    seed: int = 0
    # Network input per image: "auto" (each image x the model's training scale), "fixed" (every image at
    # the input size) or a factor. None: auto when the model records its training scale, else fixed; a
    # given input_size alone means fixed at that size (see `input_scale`).
    scale: str | float | None = None

    def __post_init__(self) -> None:
        self.scale = parse_scale(self.scale)
        unknown = [t for t in self.ttas if t not in TTA_NAMES]
        if unknown or not self.ttas:
            raise ConfigError(
                f"unknown --tta {', '.join(unknown) or '(empty)'}; choose from {', '.join(TTA_NAMES)}, all or none"
            )
        for problem in at_least("--batch-size", self.batch_size, 1):
            raise ConfigError(problem)
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be >= 1, got {self.max_images}")
        for problem in multiple_of_8("--input-size", self.input_size) if self.input_size is not None else []:
            raise ConfigError(problem)


@dataclass
class SelectOptions:
    """What a selection needs besides the project: budget, strategy and the selection parameters."""

    budget: int
    strategy: str = RECOMMENDED_STRATEGY
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    model: Path | None = None  # default: the project's newest model
    device: str = "auto"
    montages: bool = True

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ConfigError(f"--budget must be >= 1, got {self.budget}")
        check_strategy_name(self.strategy)


# --- synthetic data -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic scene generator (sizes in pixels, fractions of the image height)."""

    num_images: int = 200
    image_size: tuple[int, int] = (256, 256)  # (width, height)
    size_jitter: float = 0.0  # each side scaled by U(1 - j, 1 + j) per image (varied sizes/aspects)
    min_people: int = 0
    max_people: int = 4
    min_person_height: float = 0.25  # fraction of the image height
    max_person_height: float = 0.9
    occlusion_prob: float = 0.3  # per person: an occluder box over part of the body
    back_facing_prob: float = 0.3  # per person: seen from behind (mirrored, no face)
    clutter: int = 10  # at most this many background shapes
    noise: float = 6.0  # at most this pixel noise std (0..255 scale)
    grayscale: bool = False
    image_format: str = "png"  # "png" (lossless, byte-stable) or "jpg"
    # > 1: footage, videos of this many frames of one scene whose people move a little (1: independent stills)
    frames_per_video: int = 1

    def __post_init__(self) -> None:
        w, h = self.image_size
        problems = []
        if w < 16 or h < 16:
            problems.append(f"image_size {self.image_size} too small (min 16x16)")
        if not 0 <= self.size_jitter < 1:
            problems.append(f"size_jitter must be in [0, 1), got {self.size_jitter}")
        if not 0 <= self.min_people <= self.max_people <= 254:
            problems.append(
                f"need 0 <= min_people <= max_people <= 254, got {self.min_people}, {self.max_people}"
            )
        if not 0 < self.min_person_height <= self.max_person_height:
            problems.append("need 0 < min_person_height <= max_person_height")
        if self.image_format not in ("png", "jpg"):
            problems.append(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        if self.num_images < 0:
            problems.append("num_images must be >= 0")
        if self.frames_per_video < 1:
            problems.append(f"frames_per_video must be >= 1, got {self.frames_per_video}")
        if problems:
            raise SyntheticError("; ".join(problems))


# --- the labelling page -------------------------------------------------------------------------------------------
LEASE_SECONDS = (
    600.0  # an opened image is reserved for its annotator this long (renewed while the page is open)
)
# The longest lease the labelling page may take. A stored lease that ends later than this from now (an
# infinite one, or a wrong clock) is taken as expired, so one bad row cannot hold an image or break a server.
MAX_LEASE_SECONDS = 86400.0


def lease_problem(seconds: Any) -> str | None:
    """Return why `seconds` is not a lease length (a finite number in (0, MAX_LEASE_SECONDS]), None if it is."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= MAX_LEASE_SECONDS:  # NaN fails too
        return f"a lease lasts more than 0 and at most {MAX_LEASE_SECONDS / 60:.0f} minutes"
    return None


@dataclass
class AnnotateOptions:
    """Which round and model the page serves, and how leases and pre-annotations behave."""

    round_id: int | None = None  # default: the project's open round
    model: Path | None = None  # pre-annotations from this checkpoint (default: the project's newest model)
    predictions: bool = True
    device: str = "auto"
    lease_seconds: float = LEASE_SECONDS
    relaxed_parts: int = 3
    relaxed_score: float = 0.1

    def __post_init__(self) -> None:

        problem = lease_problem(self.lease_seconds)
        if problem is not None:
            raise ConfigError(f"--lease-minutes {self.lease_seconds / 60:g}: {problem}")
        if (
            isinstance(self.relaxed_parts, bool)
            or not isinstance(self.relaxed_parts, int)
            or self.relaxed_parts < 1
        ):
            raise ConfigError(f"relaxed_parts must be a whole number >= 1, got {self.relaxed_parts!r}")
        if not 0 <= self.relaxed_score <= 1:
            raise ConfigError(f"relaxed_score must be in [0, 1], got {self.relaxed_score!r}")
        if self.model is not None and not Path(self.model).is_file():
            raise ConfigError(f"--model {self.model}: no such file")
