"""Print training and inference throughput at 256 px, and decode time as a fraction of forward time.

    python benchmarks/speed.py [--backbone vgg_tiny] [--batch 8] [--size 256] [--device cpu]

Inputs are synthetic multi-person scenes (the generator's), so the decoder sees realistic peak counts;
the decode figure is measured on the outputs of a briefly trained model AND on ground-truth targets
(the worst case for the decoder: every person's peaks are sharp and present).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vgg_tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from activepose.config import SyntheticConfig
    from activepose.pose.coco import load_coco
    from activepose.pose.data import PoseDataset
    from activepose.pose.decode import Decoder
    from activepose.pose.models import create_model
    from activepose.pose.synthetic import make_synthetic_coco
    from activepose.pose.train import pose_loss

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_synthetic_coco(
            tmp,
            "lsp14",
            SyntheticConfig(num_images=args.batch * 2, image_size=(args.size, args.size)),
            seed=0,
        )
        coco = load_coco(path)
        ds = PoseDataset(coco, input_size=args.size)
        items = [ds[i] for i in range(args.batch)]
    sk = coco.skeleton
    images = torch.stack([it["image"] for it in items]).to(device)
    heat_gt = torch.stack([it["heatmaps"] for it in items]).to(device)
    paf_gt = torch.stack([it["pafs"] for it in items]).to(device)
    model = create_model(
        args.backbone, num_keypoints=sk.num_keypoints, num_limbs=sk.num_limbs, pretrained=False
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.train()
        loss, _ = pose_loss(model(images), heat_gt, paf_gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    def forward():
        model.eval()
        with torch.inference_mode():
            out = model(images)[-1]
        sync()
        return out

    t_train = _timeit(train_step, args.repeats)
    t_fwd = _timeit(forward, args.repeats)
    decoder = Decoder(sk)
    heat, paf = forward()
    t_dec_model = _timeit(lambda: decoder(heat, paf), args.repeats)
    t_dec_gt = _timeit(lambda: decoder(heat_gt, paf_gt), args.repeats)
    people = sum(len(s) for _, s in decoder(heat_gt, paf_gt))

    b = args.batch
    print(
        f"backbone {args.backbone}, batch {b}, input {args.size}x{args.size}, device {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"training   : {b / t_train:8.1f} images/s  ({1000 * t_train / b:.1f} ms/image, forward+backward+Adam)"
    )
    print(f"inference  : {b / t_fwd:8.1f} images/s  ({1000 * t_fwd / b:.1f} ms/image, forward only)")
    print(
        f"decode (model output) : {1000 * t_dec_model / b:6.2f} ms/image = {t_dec_model / t_fwd:.3f} x forward time"
    )
    print(
        f"decode (ground truth, {people} people): {1000 * t_dec_gt / b:6.2f} ms/image = {t_dec_gt / t_fwd:.3f} x forward time"
    )
    assert np.isfinite(t_train)


if __name__ == "__main__":
    main()
