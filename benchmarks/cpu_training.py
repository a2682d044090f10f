"""What each part of the `cpu` preset buys: training throughput, and (with --accuracy) PCK, on LSPET.

    python benchmarks/cpu_training.py [--data ../shared/data/lspet] [--images 256] [--batch 16]
    python benchmarks/cpu_training.py --accuracy [--train-images 800] [--epochs 12] [--test-images 300]

Speed (default): one epoch per variant over the same `--images` pool images (MobileNetV2 trunk, 64-channel
3-stage heads, 256-px inputs), all measured in this run; the figure is training images per second and the
ratio against the first variant (full fine-tuning in fp32, the baseline):

1. full fine-tune, fp32               (every step runs the trunk, forward and backward)
2. full fine-tune, bf16 autocast
3. frozen trunk, cached features, fp32 (heads only, whole 32x32-cell maps)
4. frozen trunk + 128-px windows, fp32
5. frozen trunk + 128-px windows, bf16 (the cpu preset)

Building the trunk-feature cache (one trunk pass per image, then written to disk) and evaluating from the
cache (second pass: hits only) vs without it are timed too. A fresh temporary cache is used: nothing is
reused from earlier runs.

Accuracy (--accuracy): trains `--train-images` images for `--epochs` epochs per variant with the Trainer
(frozen trunk, 128-px windows, bf16) and prints clean PCK@0.2 / count accuracy on a seeded subset of
`--test-images` test images, for: step decay (the paper's schedule shape) and onecycle (and with --flips,
onecycle + horizontal flips). About 2-4 minutes per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _pool(data: Path, n: int, seed: int = 0):
    from activepose.pose.coco import load_coco

    pool = load_coco(data / "pool.json")
    ids = [int(i) for i in np.random.default_rng(seed).choice(pool.image_ids, n, replace=False)]
    return pool.subset(ids)


def _model(skeleton, bf16: bool):
    from activepose.pose.models import create_model

    torch.manual_seed(0)
    m = create_model("mobilenet_v2", num_keypoints=skeleton.num_keypoints, num_limbs=skeleton.num_limbs,
                     channels=64, stages=3, pretrained=True)  # fmt: skip
    m.autocast_dtype = torch.bfloat16 if bf16 else None
    return m


def _epoch(model, loader, features: bool, params) -> float:
    from activepose.pose.train import pose_loss

    opt = torch.optim.Adam(params, 1e-3)
    model.train()
    t0, n = time.perf_counter(), 0
    for batch in loader:
        outs = model.forward_features(batch["features"].float()) if features else model(batch["image"])
        loss, _ = pose_loss(outs, batch["heatmaps"], batch["pafs"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(batch["heatmaps"])
    return n / (time.perf_counter() - t0)


def speed(args) -> None:
    from activepose.config import TargetConfig
    from activepose.device import bf16_supported
    from activepose.pose.data import PoseDataset
    from activepose.pose.train import make_loader
    from activepose.pose.trunk import CachedFeatureDataset, attach_trunk_cache, trunk_features

    coco = _pool(args.data, args.images)
    paths = [coco.image_path(coco.frame(i)) for i in coco.image_ids]
    print(f"{len(coco)} LSPET pool images, 256-px inputs, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, native bf16: {bf16_supported(torch.device('cpu'))}")  # fmt: skip
    rows: list[tuple[str, float]] = []
    images = PoseDataset(coco, 256, image_ids=coco.image_ids)  # letterboxed, no augmentation
    for name, bf16 in (("full fine-tune, fp32", False), ("full fine-tune, bf16", True)):
        m = _model(coco.skeleton, bf16)
        rows.append((name, _epoch(m, make_loader(images, args.batch, True, 0, 0, 1), False, m.parameters())))
    with tempfile.TemporaryDirectory() as cache:
        for bf16 in (False, True):
            m = _model(coco.skeleton, bf16)
            attach_trunk_cache(m, cache)
            t0 = time.perf_counter()
            feats = trunk_features(m, paths, 256)
            build = time.perf_counter() - t0
            print(f"trunk cache build ({'bf16' if bf16 else 'fp32'}): {len(paths) / build:.1f} img/s "
                  f"({build:.1f} s for {len(paths)})")  # fmt: skip
            params = [p for p in m.parameters() if p.requires_grad]
            variants = [("frozen trunk, whole maps, fp32", None), ("frozen trunk + 128-px windows, fp32", 16)]
            if bf16:
                variants = [("frozen trunk + 128-px windows, bf16 (cpu preset)", 16)]
            for name, crop in variants:
                ds = CachedFeatureDataset(coco, coco.image_ids, {False: feats}, 256, TargetConfig(), crop)
                rows.append((name, _epoch(m, make_loader(ds, args.batch, True, 0, 0, 1), True, params)))
            if bf16:
                from activepose.config import EvalConfig
                from activepose.pose.evaluate import evaluate_model
                from activepose.workflow.models import decoder_for

                m.eval()
                ecfg = EvalConfig(input_size=256, ttas=("clean",), num_workers=0, scale="fixed")
                timed = []
                for _ in range(2):  # first pass: these inputs are already cached by the build above
                    t0 = time.perf_counter()
                    evaluate_model(m, coco, decoder_for(coco.skeleton), ecfg)
                    timed.append(len(coco) / (time.perf_counter() - t0))
                m.trunk_cache = None
                t0 = time.perf_counter()
                evaluate_model(m, coco, decoder_for(coco.skeleton), ecfg)
                plain = len(coco) / (time.perf_counter() - t0)
                print(f"evaluation (bf16, decode included): {plain:.1f} img/s without the cache, "
                      f"{timed[-1]:.1f} img/s from it ({timed[-1] / plain:.2f}x)")  # fmt: skip
    base = rows[0][1]
    print(f"\n{'variant':52s} {'img/s':>7s} {'vs 1':>6s}")
    for i, (name, rate) in enumerate(rows, 1):
        print(f"{i}. {name:49s} {rate:7.1f} {rate / base:5.2f}x")


def accuracy(args) -> None:
    from activepose.config import EvalConfig, TrainConfig
    from activepose.pose.checkpoint import load_model
    from activepose.pose.coco import load_coco
    from activepose.pose.evaluate import evaluate_model
    from activepose.pose.train import train
    from activepose.workflow.models import decoder_for
    from activepose.workflow.presets import PRESETS

    coco = _pool(args.data, args.train_images)
    test = load_coco(args.data / "test.json")
    test = test.subset(
        [int(i) for i in np.random.default_rng(1).choice(test.image_ids, args.test_images, False)]
    )
    base = {**PRESETS["cpu"], "max_epochs": args.epochs, "lr": args.lr, "device": "cpu"}
    from activepose.config import AugmentConfig

    variants = {
        "step decay (x0.2 at 70 %)": {"lr_schedule": "step", "lr_step_epochs": max(1, int(0.7 * args.epochs)),
                                      "lr_gamma": 0.2},
        "onecycle (cpu preset)": {},
    }  # fmt: skip
    if args.flips:
        variants["onecycle + flips"] = {"augment": AugmentConfig()}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(coco)} training images ({args.epochs} epochs, lr {args.lr}), {len(test)} test images")
        for name, change in variants.items():
            cfg = TrainConfig(**{**base, **change, "feature_cache": str(Path(tmp) / "cache")})
            t0 = time.perf_counter()
            train(cfg, coco, Path(tmp) / name.replace(" ", "_"))
            seconds = time.perf_counter() - t0
            loaded = load_model(Path(tmp) / name.replace(" ", "_") / "last.pt")
            ecfg = EvalConfig(input_size=256, ttas=("clean",), num_workers=0, scale="fixed")
            m = evaluate_model(loaded.net, test, decoder_for(coco.skeleton), ecfg)["clean"]
            print(
                f"{name:28s} PCK@0.2 {m['PCK']:.1%}  count_acc {m['count_acc']:.1%}  ({seconds:.0f} s incl. cache)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "lspet"
    )
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-images", type=int, default=300)
    p.add_argument("--flips", action="store_true", help="--accuracy: also onecycle + horizontal flips")
    args = p.parse_args()
    if not (args.data / "pool.json").exists():
        raise SystemExit(
            f"{args.data / 'pool.json'} not found: pass --data (the LSPET folder of ../shared/data)"
        )
    accuracy(args) if args.accuracy else speed(args)


if __name__ == "__main__":
    main()
