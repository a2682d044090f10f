"""One active-learning round as four library calls: select -> label -> train -> evaluate (which closes it).

Each call takes an open `Project`, a config object and a `Reporter`, stores its outcome in the project in one
transaction and raises an `ActiveposeError` subclass for every user or state mistake (nothing stored then).
The CLI, the loop (`activepose.loop.run`) and the labelling page all drive rounds through these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import faults
from ..config import EvalConfig, EvalOptions, SelectOptions
from ..errors import StateError
from ..fileio import atomic_write_json
from ..lock import project_lock
from ..pose.evaluate import SCALE_KEY, evaluate_model, scale_summary, tta_metrics
from ..pose.skeleton import same_keypoints
from ..sampling import NEEDS_MODEL
from .common import load_data, seeded_subset
from .curve import write_learning_curve
from .models import decoder_for, input_scale, load, record_model
from .reporting import SILENT, Reporter

if TYPE_CHECKING:  # the engine's training loads torch: only for the annotation
    from ..pose.train import TrainResult

RUN_DIR = Path("checkpoints") / "run"


# --- select -------------------------------------------------------------------------------------------------
@dataclass
class RoundSelection:
    round_id: int
    strategy: str  # the strategy that chose (diversity when the asked one needs a model and there is none)
    ids: list[int]
    scores: list[float]
    stats: dict[str, Any]
    montages: list[Path] = field(default_factory=list)


def check_can_select(project, budget: int) -> None:
    """Raise StateError when a round is still active or the budget exceeds the unlabelled images."""
    current = project.current_round()
    if current is not None:  # one round at a time: a re-run after a crash must not open a second one
        raise StateError(
            f"{project.folder}: round {current.id} ({current.strategy}, {len(current.items)} images) is still "
            f"{current.state}; finish it (label, train, evaluate) before selecting again"
        )
    counts = project.counts()
    if budget > counts["unlabelled"]:
        raise StateError(
            f"{project.folder}: budget {budget} is larger than the {counts['unlabelled']} unlabelled images left ("
            + ", ".join(f"{n} {state}" for state, n in counts.items())
            + ")"
        )


def select_round(project, opts: SelectOptions, reporter: Reporter = SILENT) -> RoundSelection:
    """Choose `opts.budget` unlabelled images with `opts.strategy` and open the next round with them."""
    from ..device import resolve_device
    from ..sampling.strategies import SelectionContext, select_batch

    device = resolve_device(opts.device)
    with project_lock(project.folder, "select"):
        check_can_select(project, opts.budget)
        unlabelled, labelled_ids = project.unlabelled_ids(), project.labelled_ids()
        pool = project.to_coco(unlabelled)
        labelled = project.to_coco(labelled_ids) if labelled_ids else None
        model_path = opts.model
        latest = project.latest_model()
        if model_path is None and latest is not None:
            model_path = project.checkpoint_path(latest)
        strategy, net, cfg = opts.strategy, None, opts.selection
        if model_path is not None:
            loaded = load(model_path, opts.device)
            same_keypoints(str(model_path), loaded.skeleton, project.skeleton, "the project's")
            net = loaded.net
            cfg = dataclasses.replace(
                cfg, uncertainty=dataclasses.replace(cfg.uncertainty, input_size=loaded.input_size)
            )
        elif strategy in NEEDS_MODEL:
            reporter.note(f"no model yet: this round is chosen by diversity instead of {strategy}")
            strategy = "diversity"
        if cfg.cache_dir is None:
            cfg = dataclasses.replace(cfg, cache_dir=project.folder / "caches")

        def progress(stage: str, done: int, total: int) -> None:
            faults.point("select")
            reporter.progress(stage, done, total)

        ctx = SelectionContext(
            pool,
            labelled,
            net,
            cfg,
            device=device,
            progress=progress,
            evidence=_last_batch_evidence(project, opts.device) if strategy == "adaptive" else None,
        )
        result = select_batch(strategy, ctx, opts.budget)
        unc = cfg.uncertainty
        params = {
            "th_hm": unc.th_hm, "th_kp": unc.th_kp, "extractor": cfg.extractor, "ann": cfg.ann_backend,
            "fill": cfg.fill, "seed": cfg.seed, "max_candidates": cfg.max_candidates,
            "model": str(model_path) if model_path else None,
            "asked": opts.strategy, "stats": result.stats,
        }  # fmt: skip
        round_id = project.open_round(
            strategy, params, list(zip(result.ids, result.scores, strict=True)), budget=opts.budget
        )
    montages = (
        write_montages(pool, ctx, result, cfg, project.folder / "exports" / f"round_{round_id}")
        if opts.montages
        else []
    )
    return RoundSelection(round_id, strategy, result.ids, result.scores, result.stats, montages)


def _last_batch_evidence(project, device: str) -> dict | None:
    """How informative the uncertainty was on the newest closed round's batch (`workflow.diagnostics`,
    measured when that round was evaluated); None before any such round."""
    from .diagnostics import batch_diagnostics

    closed = [r.id for r in project.rounds() if r.state == "closed"]
    return batch_diagnostics(project, closed[-1], device) if closed else None


def write_montages(pool, ctx, result, cfg, folder: Path) -> list[Path]:
    from ..sampling.montage import activation_montage, selection_montage

    paths = [selection_montage(pool, ctx.candidate_ids, result.ids, folder / "chosen.png", seed=cfg.seed)]
    u = ctx._uncertainty
    if u is not None:
        paths.append(
            activation_montage(pool, u.image_ids, u.peaks, cfg.uncertainty.th_hm, folder / "activations.png")
        )
    return paths


# --- label --------------------------------------------------------------------------------------------------
@dataclass
class LabelOutcome:
    round_id: int
    new_labels: int  # person labels (or images, for the simulated oracle) this call stored
    labelled: int  # images of the round labelled now
    skipped: int
    total: int
    state: str  # the round's state afterwards
    message: str = ""


def label_round(project, oracle=None, skip: Sequence[int] = (), reporter: Reporter = SILENT) -> LabelOutcome:
    """Label the open round with `oracle` (and/or mark `skip` images unlabellable); return the round's state.

    When every image of the round is labelled or skipped, the round becomes 'labelled' in the same
    transaction as the last labels. All-or-nothing per call; re-running adds nothing.
    """
    current = project.current_round()
    if current is None:
        raise StateError(f"{project.folder}: no open round to label (open one with `activepose select`)")
    r = current.id
    if current.state != "open":
        if skip:
            raise StateError(
                f"{project.folder}: round {r} is {current.state!r}; only an open round's images can be skipped"
            )
        return _label_outcome(project, r, 0, f"round {r} is already {current.state!r}: nothing new added")
    messages, n = [], 0
    if skip:
        n_skipped = project.skip_images(r, list(skip), complete_round=True)
        messages.append(f"skipped {n_skipped} image(s) of round {r}")
    if oracle is not None:
        n, message = oracle.label(project, r)
        messages.append(message)
    return _label_outcome(project, r, n, "; ".join(messages))


def round_progress(states: Sequence[str]) -> dict[str, int]:
    """{"total", "labelled", "skipped", "todo"} of a round whose images are in `states`."""
    labelled, skipped = states.count("labelled"), states.count("skipped")
    return {"total": len(states), "labelled": labelled, "skipped": skipped,
            "todo": len(states) - labelled - skipped}  # fmt: skip


def image_states(project, r: int) -> dict[int, str]:
    """{image_id: state} of round `r`'s images, in rank order."""
    return {i: project.image(i).state for i, _, _ in project.round(r).items}


def _label_outcome(project, r: int, n: int, message: str) -> LabelOutcome:
    done = round_progress(list(image_states(project, r).values()))
    return LabelOutcome(
        r, n, done["labelled"], done["skipped"], done["total"], project.round(r).state, message
    )


# --- train --------------------------------------------------------------------------------------------------
@dataclass
class TrainOutcome:
    model_id: int
    new_model: bool
    train_size: int
    result: TrainResult
    round_id: int | None
    round_state: str | None


def train_round(project, cfg, reporter: Reporter = SILENT, new_session: bool = False) -> TrainOutcome:
    """Train on every label so far (resuming or continuing the project's run) and record the model once.

    A time budget ends the session (so grown data starts the next one). A 'labelled' round becomes 'trained'
    with the recorded model in one transaction.
    """
    from ..device import resolve_device
    from ..pose.train import train

    resolve_device(cfg.device)  # a device this machine lacks is refused before the lock and any work
    ids = project.labelled_ids()
    if not ids:
        raise StateError(
            f"{project.folder}: no labelled images to train on (import labels or label a round first)"
        )
    cfg = dataclasses.replace(cfg, budget_ends_session=True)
    run_dir = project.folder / RUN_DIR
    with project_lock(project.folder, "train"):
        data = project.to_coco(ids)
        missing = [str(data.image_path(f)) for f in data if not data.image_path(f).is_file()]
        if missing:  # found now, named, rather than in a data-loading worker mid-epoch
            shown = "; ".join(missing[:5]) + (
                f"; ... and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise StateError(
                f"{project.folder}: {len(missing)} labelled image file(s) are missing (image paths are stored "
                f"relative to the project folder: move the project and its images together): {shown}"
            )
        result = train(cfg, data, run_dir, reporter, new_session=new_session)
        model_id, new = record_model(project, run_dir / "best.pt", len(data), reporter)
    current = project.current_round()
    return TrainOutcome(
        model_id, new, len(data), result, current.id if current else None, current.state if current else None
    )


# --- evaluate -----------------------------------------------------------------------------------------------
def test_set_of(project, opts: EvalOptions) -> Path:
    """Return the test file to evaluate on, or raise StateError when the project has none."""
    test = opts.test or (Path(project.meta["test"]) if "test" in project.meta else None)
    if test is None:
        raise StateError(
            f"{project.folder}: no test set (give --test TEST.json, or create the project with --test)"
        )
    return test


def evaluate_model_on(loaded, data_path: Path, opts: EvalOptions, reporter: Reporter = SILENT) -> dict:
    """Return {tta: metrics, "scale": {...}} of a loaded model on a COCO test file (checked against the
    model's skeleton).

    "scale" (`evaluate.SCALE_KEY`, last) says how large images entered the network: {"policy": auto | fixed
    | factor, "factor", "input_sizes": {"min", "median", "max"}, "capped"} (+ "note" when auto fell back to
    fixed); `evaluate.tta_metrics(report)` is the report without it.
    """
    from ..device import resolve_device

    data = seeded_subset(load_data(data_path), opts.max_images, opts.seed)
    same_keypoints(str(data_path), data.skeleton, loaded.skeleton)
    scale, note = input_scale(loaded, opts.input_size, opts.scale)
    resolved = scale.factor if scale.policy == "factor" else scale.policy  # "auto" comes with train_scale
    cfg = EvalConfig(input_size=scale.input_size, batch_size=opts.batch_size, ttas=opts.ttas, scale=resolved,
                     train_scale=scale.factor if scale.policy == "auto" else None,
                     device=str(resolve_device(opts.device)))  # fmt: skip
    if note:
        reporter.note(note)
    progress = reporter.counter("evaluating", len(data) * len(opts.ttas))
    report: dict = evaluate_model(
        loaded.net, data, decoder_for(loaded.skeleton, opts.min_parts, opts.min_score), cfg, progress
    )
    report[SCALE_KEY] = {**scale_summary(data, cfg), **({"note": note} if note else {})}
    return report


@dataclass
class EvalOutcome:
    model_id: int
    report: dict[str, dict]  # {tta: metrics, "scale": {...}} as `evaluate_model_on` returns
    metrics_file: Path
    round_id: int | None  # the round this evaluation closed
    test: Path


def evaluate_round(project, opts: EvalOptions, reporter: Reporter = SILENT) -> EvalOutcome:
    """Evaluate the newest model on the test set, store its metrics and close the round it was trained in.

    Storing the metrics moves the round 'trained' -> 'evaluated' (one transaction); writing the learning
    curve then closes it. A crash between the two leaves 'evaluated', which `close_round` finishes.
    """
    from ..pose.predict import describe_scale

    latest = project.latest_model()
    if latest is None:
        raise StateError(f"{project.folder}: no model yet (run `activepose train {project.folder}`)")
    test = test_set_of(project, opts)
    loaded = load(project.checkpoint_path(latest), opts.device)
    report = evaluate_model_on(loaded, test, opts, reporter)
    out = atomic_write_json(project.folder / "exports" / f"metrics_model_{latest.id}.json", report, indent=1)
    faults.point("evaluate")
    current = project.current_round()
    closing = (
        current is not None and current.state in ("trained", "evaluated") and current.model_id == latest.id
    )
    # The store keeps {tta: metrics} (learning curves read every dict in it as a TTA) and the scale as a line.
    stored = {**tta_metrics(report), SCALE_KEY: describe_scale(report[SCALE_KEY])}
    project.record_evaluation(latest.id, stored, round=current.id if closing else None)
    if closing:
        _round_diagnostics(project, current.id, opts.device, reporter)
        close_round(project, current.id)
    return EvalOutcome(latest.id, report, out, current.id if closing else None, test)


def _round_diagnostics(project, r: int, device: str, reporter: Reporter) -> None:
    """Measure once how informative the uncertainty of the model that chose round `r` was on its batch
    (`workflow.diagnostics`); a failure is a note, never a reason not to close the round."""
    from .diagnostics import batch_diagnostics

    try:
        found = batch_diagnostics(project, r, device)
    except (OSError, ValueError, RuntimeError) as exc:
        reporter.note(f"round {r}: the uncertainty diagnostics could not be measured ({exc})")
        return
    if found and found.get("auroc") is not None:
        reporter.note(
            f"round {r}: the selecting model's uncertainty on its batch: AUROC {found['auroc']:.2f} for its worse "
            f"half, Spearman {found['spearman']:.2f} with its error ({found['n']} images)"
        )


def close_round(project, round_id: int) -> Path | None:
    """Write the learning curve with the round's model and close the round ('evaluated' -> 'closed')."""

    curve = write_learning_curve(project)
    project.close_round(round_id)
    return curve
