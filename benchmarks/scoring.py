"""Pool scoring throughput: uncertainty (heatmap peaks) + image features, batched vs a naive loop.

    python benchmarks/scoring.py [--n 200] [--pool ../shared/data/lspet/pool.json] [--model CKPT]
                                 [--width 1.0] [--extractor mobilenet_v2] [--device cpu]

On the first N pool images at 256 px (uncertainty) and the extractor's input size (features), measured in
the same run:
- naive: one image at a time (read, letterbox / resize, forward with batch 1, peaks), no thread overlap,
  no cache; each stage reads the image itself, as the batched functions do;
- batched: `score_pool` + `extract_features` (batches, reader threads overlapping the forward passes), with
  an empty cache directory (so hashing and cache writes are included);
- cached: the same calls again (every image a cache hit).
The pose model is an untrained vgg_tiny (`--width`) unless --model gives a checkpoint: throughput does not
depend on the weights. The naive and batched results are compared (max abs difference).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=str(REPO.parent / "shared" / "data" / "lspet" / "pool.json"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default=None, help="checkpoint (default: untrained vgg_tiny)")
    ap.add_argument("--width", type=float, default=1.0, help="vgg_tiny width without --model")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="uncertainty batch size")
    ap.add_argument("--feature-batch", type=int, default=32)
    ap.add_argument("--extractor", default="mobilenet_v2")
    ap.add_argument("--weights", default=None, help="extractor weights file")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from activepose.config import UncertaintyConfig
    from activepose.fileio import read_image
    from activepose.pose.checkpoint import load_model
    from activepose.pose.coco import load_coco
    from activepose.pose.data import letterbox
    from activepose.pose.models import create_model
    from activepose.sampling.features import create_extractor, extract_features
    from activepose.sampling.uncertainty import masked_peak_confidences, score_pool

    device = torch.device(args.device)
    coco = load_coco(args.pool, check_images=False)
    if args.n > len(coco.frames):
        print(f"note: the pool has only {len(coco.frames)} images")
    coco = coco.subset([f.image_id for f in coco.frames[: args.n]])
    n = len(coco.frames)
    sk = coco.skeleton
    if args.model:
        model = load_model(args.model, device).net
    else:
        torch.manual_seed(0)
        model = create_model(
            "vgg_tiny",
            num_keypoints=sk.num_keypoints,
            num_limbs=sk.num_limbs,
            pretrained=False,
            width=args.width,
        ).to(device)
    model.eval()
    extractor = create_extractor(args.extractor, weights=args.weights, model=model, device=device)
    cfg = UncertaintyConfig(input_size=args.size, batch_size=args.batch)
    paths = [coco.image_path(f) for f in coco.frames]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up of every batch shape either path will use (oneDNN / cuDNN set up kernels per new shape: ~2 s
    # per shape on an H100, which would otherwise dominate a 200-image run).
    with torch.inference_mode():
        for b in {1, min(n, args.batch), n % args.batch} - {0}:
            model(torch.zeros(b, 3, args.size, args.size, device=device))
        for b in {1, min(n, args.feature_batch), n % args.feature_batch} - {0}:
            s = extractor.input_size
            extractor.embed_uint8(np.zeros((b, s, s, 3), np.uint8))
    sync()

    # --- naive: one image at a time, no threads, no cache -------------------------------------------
    naive_peaks = np.zeros((n, sk.num_keypoints), np.float32)
    naive_feats = np.zeros((n, extractor.dim), np.float32)
    t_unc = t_feat = 0.0
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        image = read_image(path)
        padded, scale = letterbox(image, args.size)
        h, w = image.shape[:2]
        ch, cw = min(args.size, max(1, round(h * scale))), min(args.size, max(1, round(w * scale)))
        with torch.inference_mode():
            x = torch.from_numpy(padded)[None].to(device).permute(0, 3, 1, 2).float().div_(255.0)
            hm = model(x)[-1][0]
            valid = torch.tensor([[-(-ch // 8), -(-cw // 8)]])
            naive_peaks[i] = masked_peak_confidences(hm, valid, cfg.smooth_sigma)[0].cpu().numpy()
        sync()
        t1 = time.perf_counter()
        naive_feats[i] = extractor([read_image(path)])[0]  # read again, as the batched path does
        sync()
        t2 = time.perf_counter()
        t_unc += t1 - t0
        t_feat += t2 - t1
    naive = (t_unc, t_feat)

    # --- batched, cold cache, then warm cache -------------------------------------------------------
    with tempfile.TemporaryDirectory() as cache:
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = score_pool(model, coco, cfg, device=device, cache=cache, num_workers=args.workers)
            sync()
            t1 = time.perf_counter()
            feats = extract_features(
                extractor, paths, cache_dir=cache, batch_size=args.feature_batch, num_workers=args.workers
            )
            t2 = time.perf_counter()
            timings.append((t1 - t0, t2 - t1))
    batched, cached = timings

    def ips(t: float) -> float:
        return n / t if t > 0 else float("inf")

    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"pool scoring: {n} LSPET images, vgg_tiny width {args.width} at {args.size} px "
        f"(uncertainty batch {args.batch}) + {extractor.name} features at {extractor.input_size} px "
        f"(batch {args.feature_batch}), device {dev}"
    )
    print(f"{'':>28} {'uncertainty':>12} {'features':>10} {'total':>10}   images/s")
    for name, (a, b) in (("naive (1 image, no threads)", naive), ("batched (cold cache)", batched),
                         ("batched (warm cache)", cached)):  # fmt: skip
        print(f"{name:>28} {ips(a):12.1f} {ips(b):10.1f} {ips(a + b):10.1f}")
    print(
        f"speed-up batched / naive: uncertainty {naive[0] / batched[0]:.2f}x, features {naive[1] / batched[1]:.2f}x, "
        f"total {sum(naive) / sum(batched):.2f}x; warm cache / naive total {sum(naive) / sum(cached):.0f}x"
    )
    print(
        f"agreement naive vs batched: peaks max |diff| {np.abs(res.peaks - naive_peaks).max():.2e}, "
        f"features max |diff| {np.abs(feats - naive_feats).max():.2e}; "
        f"uncertain {res.num_uncertain}/{n} (thHM {res.th_hm}, thKP {res.th_kp})"
    )


if __name__ == "__main__":
    main()
