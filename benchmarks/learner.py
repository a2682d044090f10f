"""What makes the learner good per label: each idea measured alone, trained to convergence, on LSPET.

    python benchmarks/learner.py --data ../shared/data/lspet [--labels 1000,2200] [--variants a,b,...]
        [--test-images 300] [--cache DIR] [--out results.json] [--runs DIR] [--sequence] [--set KEY=VALUE]

Every variant trains one model per label count on the same seeded subsets of `pool.json` (the first n of one
seeded permutation, so the 1,000 are inside the 2,200) with the Trainer, and is evaluated on the same seeded
`--test-images` of `test.json` (clean PCK@0.2 and person-count accuracy, the metrics of `activepose evaluate`).
Training seconds include building the trunk-feature cache unless `--cache` already holds it (it is shared by the
variants whose frozen part is the same). Variants (all on the cpu preset's frozen MobileNetV2 trunk, bf16,
128-px windows of 256-px inputs):

- `fixed`: the cpu preset before convergence: one onecycle session of 5 x 64 batches, whatever the labels.
- `converged`: the `converged` rule alone: plateau schedule (warm-up, x0.2 at each plateau of validation PCK,
  stop at the third), best checkpoint by validation PCK, a step cap of `steps_per_image` x labels, and at
  least 10 epochs of 64 batches (so a few labels still train enough steps).
- `blocks3` / `blocks7`: `converged` + the trunk's last 3 / 7 blocks trained (cached features of the blocks
  before them); `blocks3slow` / `blocks7slow`: the same with those pretrained blocks at 0.1 x the rate.
- `flips`: `converged` + horizontal flips (their features cached too).
- `heads128`: `converged` + 128-channel stages instead of 64.
- `crop192`: `converged` + 192-px training windows instead of 128.
- `deep`: `converged` on the deeper frozen trunk `mobilenet_v2_deep` (MobileNetV2 blocks 0-16, 160 channels,
  dilated to stride 8).
- `sigma2`: `converged` + heatmap Gaussians of 2 output cells instead of 1.
- `views4` / `views8`: `converged` + 4 / 8 augmented views per image (the paper's rotation, zoom, shift, colour
  and flips, drawn once per image and view), their trunk features cached; an item picks a view at random.
- `cpu`: the shipped `cpu` preset (whatever it is now).
- `initial`: with `--sequence`, every session after the first restarts from the run's first weights
  (`--restart initial`) instead of the last model (warm, the default): `cpu+initial` vs `cpu`.
- `a+b`: variants combined (later ones win where they set the same option), e.g. `views4+heads128`; a
  combination starting with `cpu` changes the shipped preset (`cpu+initial`).

`--sequence` trains one model per variant through the label counts in order, one session per count (as the
rounds of the loop do: `--labels 1000,1300` is round 0 and round 1), and evaluates it after each session.
`--set KEY=VALUE` (repeatable) overrides a training option of every variant, e.g. the shorter sessions of a grid:
`--set steps_per_epoch=32 --set min_epochs=6 --set lr_patience=2 --set lr_drops=1 --set steps_per_image=0.5`.

Prints one line per (variant, labels) and writes them to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CONVERGED = {
    "lr_schedule": "plateau", "warmup_steps": 100, "val_metric": "pck", "steps_per_image": 4.0,
    "max_epochs": 400, "min_epochs": 10, "patience": 1000, "lr_patience": 3, "lr_drops": 2, "lr_gamma": 0.2,
}  # fmt: skip
VARIANTS: dict[str, dict] = {
    "fixed": {},
    "converged": CONVERGED,
    "blocks3": {**CONVERGED, "train_blocks": 3},
    "blocks3slow": {**CONVERGED, "train_blocks": 3, "trunk_lr_scale": 0.1},
    "blocks7slow": {**CONVERGED, "train_blocks": 7, "trunk_lr_scale": 0.1},
    "blocks7": {**CONVERGED, "train_blocks": 7},
    "flips": {**CONVERGED, "augment": "flips"},
    "heads128": {**CONVERGED, "head_channels": 128},
    "crop192": {**CONVERGED, "train_crop": 192},
    "deep": {**CONVERGED, "backbone": "mobilenet_v2_deep"},
    "sigma2": {**CONVERGED, "targets": "sigma2"},
    "views4": {**CONVERGED, "augment": "full", "cached_views": 4},
    "views8": {**CONVERGED, "augment": "full", "cached_views": 8},
    "cpu": None,  # the preset as shipped
    "initial": {"restart": "initial"},  # with --sequence: each session restarts from the run's first weights
}


def _config(name: str, cache: Path, overrides: dict | None = None):
    from activepose.config import AugmentConfig, TargetConfig, TrainConfig
    from activepose.workflow.presets import PRESETS

    fixed = {**PRESETS["cpu"], "max_epochs": 5, "steps_per_epoch": 64, "lr_schedule": "onecycle",
             "val_metric": "loss", "steps_per_image": None, "train_blocks": 0, "augment": None,
             "head_channels": 64, "train_crop": 128, "patience": 100}  # fmt: skip
    parts = name.split("+")  # "views4+blocks3": both ideas together
    values = dict(PRESETS["cpu"]) if parts[0] == "cpu" else dict(fixed)
    for part in parts:
        values.update(VARIANTS[part] or {})
    if values.get("augment") == "flips":
        values["augment"] = AugmentConfig(hflip=0.5)
    elif values.get("augment") == "full":
        values["augment"] = AugmentConfig()  # the paper's ranges: rotation, zoom, shift, colour, flips
    if values.get("targets") == "sigma2":
        values["targets"] = TargetConfig(sigma=2.0)
    return TrainConfig(**{**values, **(overrides or {}), "device": "cpu", "feature_cache": str(cache)})


def _overrides(pairs: list[str]) -> dict:
    """Return {option: value} of `--set KEY=VALUE` pairs (values parsed as JSON where they parse: 0.5, 2, null)."""
    import dataclasses

    from activepose.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY a TrainConfig field")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "lspet"
    )
    p.add_argument("--labels", default="1000,2200")
    p.add_argument("--variants", default="fixed,converged,blocks3,blocks7")
    p.add_argument("--test-images", type=int, default=300)
    p.add_argument(
        "--cache", type=Path, default=None, help="trunk-feature cache folder (default: a temporary one)"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--runs", type=Path, default=None, help="keep the trained runs here (default: a temporary folder)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sequence", action="store_true", help="one model per variant, a session per label count, in order"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a training option"
    )
    args = p.parse_args()
    if not (args.data / "pool.json").exists():
        raise SystemExit(
            f"{args.data / 'pool.json'} not found: pass --data (the LSPET folder of ../shared/data)"
        )
    from activepose.config import EvalConfig
    from activepose.pose.checkpoint import load_model
    from activepose.pose.coco import load_coco
    from activepose.pose.evaluate import evaluate_model
    from activepose.pose.train import train
    from activepose.workflow.models import decoder_for

    pool = load_coco(args.data / "pool.json")
    order = [int(i) for i in np.random.default_rng(args.seed).permutation(pool.image_ids)]
    test = load_coco(args.data / "test.json")
    test = test.subset(
        [int(i) for i in np.random.default_rng(1).choice(test.image_ids, args.test_images, False)]
    )
    labels = [int(n) for n in args.labels.split(",")]
    names = args.variants.split(",")
    unknown = [n for n in names if any(part not in VARIANTS for part in n.split("+"))]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "cache"
        print(f"{args.data.name}: {len(test)} test images; labels {labels}; cache {cache}", flush=True)
        overrides = _overrides(args.set)
        for name in names:
            for n in labels:
                cfg = _config(name, cache, overrides)
                data = pool.subset(sorted(order[:n]))
                run = (args.runs or Path(tmp)) / (f"{name}-seq" if args.sequence else f"{name}-{n}")
                t0 = time.perf_counter()
                result = train(cfg, data, run)
                seconds = time.perf_counter() - t0
                loaded = load_model(run / "best.pt")
                ecfg = EvalConfig(input_size=cfg.input_size, ttas=("clean",), num_workers=0, scale="fixed")
                m = evaluate_model(loaded.net, test, decoder_for(pool.skeleton), ecfg)["clean"]
                row = {"variant": name, "labels": n, "session": result.session, "kept": result.kept,
                       "pck": m["PCK"], "count_acc": m["count_acc"],
                       "train_seconds": round(seconds, 1), "steps": result.steps, "epochs": result.epochs_run,
                       "stopped": result.stopped}  # fmt: skip
                rows.append(row)
                print(
                    f"{name:10s} {n:5d} labels  PCK@0.2 {m['PCK']:.1%}  count_acc {m['count_acc']:.1%}  "
                    f"{seconds:6.0f} s  {result.steps} steps ({result.stopped})",
                    flush=True,
                )
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
