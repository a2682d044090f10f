"""`select --pool`: choose from a pool file without a project (no round is opened; ids and scores are written)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.table import Table

from ..fileio import atomic_write_json
from ..pose.skeleton import same_keypoints
from ..workflow import common, models
from .app import RichReporter, console


def select_pool(pool: Path, labelled: Path | None, opts, out: Path | None, montage: Path | None) -> None:
    from ..device import resolve_device
    from ..sampling.strategies import SelectionContext, select_batch

    device = resolve_device(opts.device)
    pool_set = common.load_data(pool)
    lab_set = common.load_data(labelled) if labelled is not None else None
    cfg, net = opts.selection, None
    if opts.model is not None:
        loaded = models.load(opts.model, opts.device)
        same_keypoints(str(pool), pool_set.skeleton, loaded.skeleton)
        net = loaded.net
        cfg = dataclasses.replace(
            cfg, uncertainty=dataclasses.replace(cfg.uncertainty, input_size=loaded.input_size)
        )
    with RichReporter() as rep:
        ctx = SelectionContext(pool_set, lab_set, net, cfg, device=device, progress=rep.progress)
        result = select_batch(opts.strategy, ctx, opts.budget)
    selection_table(opts.strategy, result.stats, cfg.uncertainty.th_hm, cfg.fill)
    if out is not None:
        payload = {"strategy": opts.strategy, "budget": opts.budget, "pool": str(pool),
                   "model": str(opts.model) if opts.model else None, "ids": result.ids, "scores": result.scores,
                   "stats": result.stats}  # fmt: skip
        atomic_write_json(out, payload, indent=1)
        console.print(f"wrote {out}")
    if montage is not None:
        from ..workflow.rounds import write_montages

        console.print("wrote " + ", ".join(map(str, write_montages(pool_set, ctx, result, cfg, montage))))


def selection_table(strategy: str, stats: dict, th_hm: float, fill: str) -> None:
    """Print what a selection chose among, and its timings (`select` and `select --pool`)."""
    table = Table(title=f"{strategy}: chosen among {stats['candidates']} unlabelled images")
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
    for stage, sec in stats.get("seconds", {}).items():
        table.add_row(f"time: {stage}", f"{sec:.2f} s")
    console.print(table)
