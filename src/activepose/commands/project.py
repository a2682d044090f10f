"""Commands on an active-learning project: init, status, select, label, export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from ..fileio import atomic_write_bytes
from ..interop.export import export_round
from ..interop.label_studio import config_people, label_studio_config, local_files_setup
from ..oracle.files import FileLabeller
from ..oracle.simulated import SimulatedLabeller
from ..pose.coco import printable
from ..pose.skeleton import same_keypoints
from ..workflow import common, create, models, rounds
from . import options as o
from .app import RichReporter, command, console, duration, next_step, print_list
from .selection import select_pool, selection_table

_SHOWN_ANNOTATORS = 20  # rows of the annotator table in `status`


def _printable(text: str, limit: int) -> str:
    """Return imported text (names, file names) as it may reach the terminal: control characters (and
    bidirectional overrides) removed, at most `limit` characters, markup escaped."""

    text = printable(text)
    return escape(text if len(text) <= limit else text[: limit - 3] + "...")


@command()
@o.video_options
def init(
    project: Annotated[
        Path,
        typer.Argument(help="Project folder to create (must not exist, or be empty).", metavar="PROJECT"),
    ],
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            help="COCO JSON of the unlabelled pool: its image ids are kept, its labels ignored.",
            metavar="POOL.json",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Image folder: every jpg/jpeg/png/bmp/webp/tif under it, ids 1..n by relative path.",
            metavar="DIR",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="COCO JSON of an initial labelled set (pool images only).", metavar="FILE"
        ),
    ] = None,
    skeleton: Annotated[
        str | None,
        typer.Option(
            help="coco17, coco18, lsp14 or a COCO JSON (required with --images; default: the pool's).",
            metavar="NAME",
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            "--test",
            metavar="TEST.json",
            help="COCO JSON of test-only images (never selected or labelled for training). A test image whose content "
            "equals a pool image's marks that pool image 'test'; any other is added as a 'test' image.",
        ),  # fmt: skip
    ] = None,
    accept_predictions: o.AcceptPredictions = False,
    video: o.VideoInput = None,
) -> None:
    """Create an active-learning project: a folder with project.db (SQLite) and checkpoints/, caches/, exports/.

    Every image is checked (readable, size as declared, EXIF orientation applied); those that fail are listed and
    left out. With --videos, frames are decoded once into the project's frames/ folder, each with its video,
    frame index and time; near-identical frames are left out (counted per video). The project is built in a
    temporary sibling folder and renamed into place at the end.
    """
    source = create.ProjectSource(
        pool=pool, images=images, labels=labels, skeleton=skeleton, test=test,
        accept_predictions=accept_predictions, videos=video.sources, video_options=video.options(),
    )  # fmt: skip
    with RichReporter() as rep:
        made = create.create_project(project, source, rep)
    if made.footage is not None:
        console.print(footage_table(made.footage))
    c = made.counts
    console.print(f"created project {project} ({made.skeleton}, {made.num_keypoints} keypoints): {made.images} images, "
                  f"{c['labelled']} labelled, {c['test']} test, {c['unlabelled']} unlabelled, {len(made.skipped)} file(s) skipped")  # fmt: skip
    if made.import_message:
        console.print(made.import_message, soft_wrap=True, markup=False)
    print_list("skipped files", made.skipped)
    if c["labelled"]:
        next_step(f"activepose train {project} --preset cpu   (then: activepose evaluate {project})")
    else:
        next_step(f"activepose select {project} --budget N   (no labels yet: round 1 is chosen by diversity)")


@command("add-videos")
@o.video_options
def add_videos(project: o.ProjectArg, video: o.VideoInput = None) -> None:
    """Add the frames of more videos to a project's pool (as init --videos does; new video names only)."""
    from ..workflow.footage import add_videos as add

    if not video.sources:
        raise ConfigError("give --videos FILE|DIR (repeat for more)")
    with RichReporter() as rep:
        report, ids = add(project, video.sources, video.options(), rep)
    console.print(footage_table(report))
    console.print(f"added {len(ids)} frame(s) of {len(report.videos)} video(s) to {project}; "
                  f"{report.near_duplicates} near-identical frame(s) left out")  # fmt: skip
    next_step(f"activepose status {project}")


def footage_table(report) -> Table:
    """Per video: frames decoded, sampled, near-identical (signature, embedding) and kept in the pool."""
    table = Table(title="frames from videos")
    for col in ("video", "decoded", "sampled", "near-identical (signature)", "near-identical (embedding)",
                "kept"):  # fmt: skip
        table.add_column(col, justify="left" if col == "video" else "right")
    for name, *numbers in report.rows():
        table.add_row(_printable(name, 60), *map(str, numbers))
    return table


def _metrics_text(metrics: dict) -> str:
    """count_acc / AP / PCK (in %) of the clean evaluation (or the first TTA evaluated)."""
    flat = metrics.get("clean") or next((v for v in metrics.values() if isinstance(v, dict)), {})
    shown = [f"{k} {100 * v:.1f}" for k in ("count_acc", "AP", "PCK")
             if isinstance(v := flat.get(k), (int, float)) and math.isfinite(v)]  # fmt: skip
    return ", ".join(shown) if shown else ("not evaluated" if not flat else "-")


def _selection_table(project: Path, rounds) -> Table | None:
    """Per round, what the selection saw: candidates, the uncertainty filter's pass rate, the batch's coverage,
    the mode `adaptive` took, and (where `simulate` measured it) the AUROC of the selector's uncertainty on the
    batch once labelled. None when no round recorded any of it."""
    import json

    rows = []
    for r in rounds:
        stats = r.params.get("stats") or {}
        cand, unc = stats.get("candidates"), stats.get("uncertain")
        cov = (stats.get("coverage") or {}).get("mean")
        mode = (stats.get("adaptive") or {}).get("mode", "")
        diag = project / "exports" / f"diagnostics_v2_round_{r.id}.json"
        auroc = None
        if diag.is_file():
            try:
                auroc = json.loads(diag.read_text()).get("auroc")
            except (OSError, ValueError):
                auroc = None
        if cand is None and cov is None and not mode and auroc is None:
            continue
        rows.append([str(r.id), r.strategy + (f" -> {mode}" if mode else ""), "-" if cand is None else str(cand),
                     "-" if not cand or unc is None else f"{100 * unc / cand:.0f} %",
                     "-" if cov is None else f"{cov:.3f}", "-" if auroc is None else f"{auroc:.2f}"])  # fmt: skip
    if not rows:
        return None
    table = Table(title="selection per round")
    for col in ("round", "strategy", "candidates", "uncertain", "coverage", "batch AUROC"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _videos_line(pool: dict[str, int], labelled: dict[str, int]) -> str:
    """One line on footage: videos, frames, and how the labelled frames spread over the videos."""
    per = sorted(labelled.get(v, 0) for v in pool)
    line = f"videos: {len(pool)} ({sum(pool.values())} frames); labelled frames in {len(labelled)} of them"
    if labelled:
        line += f" (per video: min {per[0]}, median {per[len(per) // 2]}, max {per[-1]})"
        top = ", ".join(f"{_printable(v, 40)} {n}" for v, n in list(labelled.items())[:3])
        line += f"; most: {top}"
    return line


@command()
def status(project: o.ProjectArg) -> None:
    """Show the project's rounds (state, labels, label cost, model metrics) and its images per state (read-only)."""
    with common.opened(project, readonly=True) as proj:
        all_rounds, all_models = proj.rounds(), proj.models()
        summary, counts, current = proj.round_summary(), proj.counts(), proj.current_round()
        annotators = proj.annotator_summary()
        pool_videos = proj.frames_per_video(sorted(set(proj.image_ids()) - set(proj.test_ids())))
        labelled_videos = proj.frames_per_video(proj.labelled_ids()) if pool_videos else {}
        round_videos = (
            {r.id: proj.frames_per_video([i for i, _, _ in r.items]) for r in all_rounds}
            if pool_videos
            else {}
        )
    by_id = {m.id: m for m in all_models}
    table = Table(title=f"{project}: {len(all_rounds)} round(s)")
    columns = [("round", "right"), ("strategy", "left"), ("budget", "right"), ("state", "left"),
               ("labelled", "right"), ("people", "right"), ("label cost", "right"),
               ("model (train images)", "left"), ("clean metrics, %", "left")]  # fmt: skip
    if pool_videos:
        columns.insert(5, ("videos", "right"))  # how many videos the round's images come from
    for col, justify in columns:
        table.add_column(col, justify=justify)

    def model_cells(model) -> tuple[str, str]:
        return (f"{model.id} ({model.train_size})", _metrics_text(model.metrics)) if model else ("-", "-")

    def cost(s: dict) -> str:  # labels imported from files may carry no time: say so rather than "0 s"
        if s["people"] and not s["timed"]:
            return "unknown"
        return duration(s["seconds"]) + ("" if s["timed"] == s["people"] else " (partly unknown)")

    empty = {"images": 0, "people": 0, "seconds": 0.0, "timed": 0}
    initial = next((m for m in reversed(all_models) if m.round is None), None)
    if None in summary or initial is not None:
        s = summary.get(None, empty)
        cells = [
            "-",
            "initial labels",
            "",
            "",
            str(s["images"]),
            str(s["people"]),
            cost(s),
            *model_cells(initial),
        ]
        if pool_videos:
            cells.insert(5, "")
        table.add_row(*cells)
    for r in all_rounds:
        s = summary.get(r.id, empty)
        model = by_id.get(r.model_id) if r.model_id is not None else None
        model = model or next((m for m in reversed(all_models) if m.round == r.id), None)
        skipped = f" ({s['skipped']} skipped)" if s.get("skipped") else ""
        cells = [str(r.id), r.strategy, str(r.budget), r.state, f"{s['images']}/{len(r.items)}{skipped}",
                 str(s["people"]), cost(s), *model_cells(model)]  # fmt: skip
        if pool_videos:
            cells.insert(5, str(len(round_videos[r.id])))
        table.add_row(*cells)
    console.print(table)
    if pool_videos:
        console.print(_videos_line(pool_videos, labelled_videos))
    selection = _selection_table(project, all_rounds)
    if selection is not None:
        console.print(selection)
    console.print(
        "images: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + f"; total {sum(counts.values())}"
    )
    total = sum(s["seconds"] for s in summary.values())
    untimed = sum(s["people"] - s["timed"] for s in summary.values())
    note = f"; {untimed} person label(s) without a recorded time not counted" if untimed else ""
    console.print(f"total label cost: {duration(total)} ({total:.0f} s){note}")
    if annotators:
        who = Table(title="annotators (current labels)")
        for col in ("annotator", "images", "people", "median s / person", "median clicks / person"):
            who.add_column(col, justify="left" if col == "annotator" else "right")
        ranked = sorted(annotators.items(), key=lambda kv: -kv[1]["people"])
        for name, a in ranked[:_SHOWN_ANNOTATORS]:
            med_s, med_c = a["median_seconds"], a["median_clicks"]
            who.add_row(_printable(name, 64), str(a["images"]), str(a["people"]),
                        "-" if med_s is None else f"{med_s:.1f}", "-" if med_c is None else f"{med_c:g}")  # fmt: skip
        console.print(who)
        if len(ranked) > _SHOWN_ANNOTATORS:
            console.print(f"... and {len(ranked) - _SHOWN_ANNOTATORS} more annotator(s)")
    console.print(f"results: {project / 'exports'} (metrics, learning curve, montages per round)")
    next_step(_what_next(project, current, counts, all_models))


def _what_next(project: Path, current, counts: dict, all_models: list) -> str:
    if current is None:
        return f"activepose select {project} --budget N   (or: activepose run {project} --rounds R --budget N ...)"
    return {
        "open": f"activepose annotate {project}   (label round {current.id} in the browser), or activepose export "
                f"{project} --round {current.id} --out round{current.id}.json, label it elsewhere, then activepose "
                f"label {project} --oracle file --labels FILE",
        "labelled": f"activepose train {project}",
        "trained": f"activepose evaluate {project}",
        "evaluated": f"activepose evaluate {project}   (closes round {current.id})",
    }[current.state]  # fmt: skip


@command()
@o.selection_options
def select(
    budget: o.Budget,
    project: Annotated[
        Path | None,
        typer.Argument(
            help="Project folder: choose among its unlabelled images and open a round with them.",
            metavar="PROJECT",
            show_default=False,
        ),  # fmt: skip
    ] = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            "-p",
            help="Without a project: COCO JSON of the unlabelled pool (labels ignored).",
            metavar="FILE",
        ),
    ] = None,
    labelled: Annotated[
        Path | None,
        typer.Option(help="Without a project: COCO JSON of already labelled images.", metavar="FILE"),
    ] = None,
    strategy: o.Strategy = o.DEFAULTS["strategy"],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Pose checkpoint for uncertainty (default: the project's newest model).",
            metavar="FILE",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the chosen ids and scores here (JSON).", metavar="FILE"),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(help="Cache folder for scores and embeddings (default: PROJECT/caches).", metavar="DIR"),
    ] = None,
    montage: Annotated[
        Path | None, typer.Option(help="Without a project: write montages of the choice here.", metavar="DIR")
    ] = None,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    selection: o.SelectionOptions = None,
) -> None:
    """Choose the next images to label: hybrid (uncertainty -> features -> ANN diversity) or a baseline."""

    cfg = selection.config(seed=seed, cache_dir=cache)
    opts = rounds.SelectOptions(budget=budget, strategy=strategy, selection=cfg, model=model, device=device)
    if (project is None) == (pool is None):
        raise ConfigError("give either a PROJECT folder or --pool POOL.json")
    if project is None:
        select_pool(pool, labelled, opts, out, montage)
        return
    with common.opened(project) as proj, RichReporter() as rep:
        res = rounds.select_round(proj, opts, rep)
    selection_table(res.strategy, res.stats, cfg.uncertainty.th_hm, cfg.fill)
    console.print(f"opened round {res.round_id} in {project} with {len(res.ids)} images; montages in "
                  f"{project / 'exports' / f'round_{res.round_id}'}")  # fmt: skip
    if out is not None:
        from ..fileio import atomic_write_json

        atomic_write_json(out, {"round": res.round_id, "strategy": res.strategy, "ids": res.ids, "scores": res.scores,
                                "stats": res.stats}, indent=1)  # fmt: skip
        console.print(f"wrote {out}")
    next_step(f"activepose annotate {project}   (label it in the browser), or activepose export {project} --round "
              f"{res.round_id} --out round{res.round_id}.json (label it elsewhere), or "
              f"activepose label {project} --oracle simulated --ground-truth GT.json")  # fmt: skip


@command()
def label(
    project: o.ProjectArg,
    oracle: Annotated[
        str,
        typer.Option(help="simulated (reveals --ground-truth) or file (imports --labels).", metavar="NAME"),
    ] = "simulated",
    ground_truth: o.GroundTruth = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="file: the labelled file to import.", metavar="FILE")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="file: coco or label-studio (Label Studio's JSON export).",
            metavar="FORMAT",
        ),
    ] = "coco",
    include_empty: Annotated[
        bool,
        typer.Option(
            metavar="", help="file (coco): images without annotations count as labelled with nobody."
        ),
    ] = False,
    accept_predictions: o.AcceptPredictions = False,
    seed: Annotated[
        int, typer.Option(help="simulated: seed of the per-person labelling time.", metavar="N")
    ] = 0,
    skip: Annotated[
        list[int] | None,
        typer.Option(
            metavar="ID",
            help="Image id of the open round that cannot be labelled (repeatable): it stops blocking "
            "the round and is never selected again.",
        ),  # fmt: skip
    ] = None,
) -> None:
    """Label the open round with an oracle; when all its images are labelled (or skipped) it becomes 'labelled'.

    All-or-nothing per call (bad input changes nothing); re-running adds nothing new. `--skip ID` alone only
    marks images skipped.
    """
    skip_only = bool(skip) and ground_truth is None and labels is None
    labeller = None
    if oracle not in ("simulated", "file"):
        raise ConfigError(f"unknown --oracle {oracle!r}; use simulated or file")
    if not skip_only:
        if oracle == "simulated":
            if ground_truth is None:
                raise ConfigError("--oracle simulated needs --ground-truth GT.json")
            labeller = SimulatedLabeller(ground_truth, seed=seed)
        else:
            if labels is None:
                raise ConfigError("--oracle file needs --labels FILE.json")
            labeller = FileLabeller(labels, fmt, include_empty, accept_predictions)
    with common.opened(project) as proj:
        res = rounds.label_round(proj, labeller, skip=skip or ())
    if res.message:
        console.print(_printable(res.message, 2000), soft_wrap=True)
        if res.new_labels == 0 and labeller is not None:
            console.print("nothing new added")
    console.print(f"round {res.round_id}: {res.labelled}/{res.total} images labelled"
                  + (f", {res.skipped} skipped" if res.skipped else "") + f"; round is {res.state}")  # fmt: skip
    if res.state == "open":
        next_step(
            f"label the remaining {res.total - res.labelled - res.skipped} image(s), or skip them with --skip ID"
        )
    else:
        next_step(f"activepose train {project}")


@command()
def export(
    project: o.ProjectArg,
    round_id: Annotated[int, typer.Option("--round", "-r", help="Round to export.", metavar="N")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="File to write (JSON; not an existing folder).", metavar="FILE"),
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="coco or label-studio.", metavar="FORMAT")
    ] = "coco",
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Checkpoint whose predictions become pre-annotations (default: the newest model).",
            metavar="FILE",
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
        str, typer.Option(help="Image paths: relative (to --out's folder) or absolute.", metavar="KIND")
    ] = "relative",
    url_prefix: Annotated[
        str,
        typer.Option(help="Label Studio: prefix of image URLs, e.g. /data/local-files/?d=", metavar="PREFIX"),
    ] = "",
    ls_root: Annotated[
        Path | None,
        typer.Option(
            "--ls-root",
            help="Label Studio: its local-files document root; image URLs become /data/local-files/?d=<path "
            "relative to DIR> (every image must be under DIR).",
            metavar="DIR",
        ),
    ] = None,
    input_size: o.ModelInput = None,
    batch_size: o.EvalBatch = o.EVAL_BATCH,
    device: o.Device = "auto",
) -> None:
    """Write a round's images for labelling (COCO or Label Studio tasks), pre-annotated with model predictions.

    Label Studio also gets its labelling config next to the file (<stem>.config.xml): keypoint labels plus a
    per-point person choice (select a point, pick its person). With --ls-root, image URLs load through Label
    Studio's local-files serving (the command prints what to set up).
    """

    if fmt not in ("coco", "label-studio"):
        raise ConfigError(f"unknown --format {fmt!r}; use coco or label-studio")
    if ls_root is not None:
        if fmt != "label-studio":
            raise ConfigError("--ls-root is for --format label-studio")
        if url_prefix:
            raise ConfigError("--ls-root writes the image URLs itself: leave out --url-prefix")
        if not ls_root.is_dir():
            raise ConfigError(f"--ls-root {ls_root}: no such folder")
    if paths not in ("relative", "absolute"):
        raise ConfigError(f"unknown --paths {paths!r}; use relative or absolute")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name, e.g. {out / f'round{round_id}.json'}")
    rounds.EvalOptions(batch_size=batch_size, input_size=input_size)  # validates before loading anything
    with common.opened(project) as proj:
        ids = [i for i, _, _ in proj.round(round_id).items]
        predictions, unreadable = None, []
        latest = proj.latest_model()
        if model is None and predictions_on and latest is not None:
            model = proj.checkpoint_path(latest)
            console.print(f"pre-annotating with the project's newest model {latest.id} ({model})")
        if model is not None and predictions_on:
            loaded = models.load(model, device)
            same_keypoints(str(model), loaded.skeleton, proj.skeleton, "the project's")
            with RichReporter() as rep:
                predictions, unreadable = models.predict_files(
                    loaded, [(i, proj.image_path(i)) for i in ids], input_size=input_size, batch_size=batch_size, reporter=rep
                )  # fmt: skip
        written = export_round(proj, round_id, out, fmt, predictions, paths=paths, url_prefix=url_prefix,
                               model_version=model.name if predictions is not None else "activepose",
                               ls_root=ls_root)  # fmt: skip
        config, setup = None, []
        if fmt == "label-studio":
            xml = label_studio_config(proj.skeleton, people=config_people(predictions))
            config = atomic_write_bytes(out.with_name(f"{out.stem}.config.xml"), xml.encode())
            if ls_root is not None:
                setup = local_files_setup(proj, ids, ls_root)
    people = sum(len(p[1]) for p in (predictions or {}).values())
    extra = f" with {people} predicted people" if predictions is not None else ""
    console.print(
        f"round {round_id}: {len(ids)} images{extra} -> {written}" + (f" (config {config})" if config else "")
    )
    print_list("no prediction (unreadable image)", unreadable)
    for line in setup:
        console.print(f"Label Studio: {line}", soft_wrap=True, markup=False)
    flag = "" if fmt == "coco" else " --format label-studio"
    where = "label the images" if fmt == "coco" else "label the tasks in Label Studio, Export > JSON"
    next_step(f"{where}, then: activepose label {project} --oracle file --labels LABELLED.json{flag}"
              + ("   (untouched predictions need --accept-predictions)" if predictions is not None else ""))  # fmt: skip
