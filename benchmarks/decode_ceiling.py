"""Print the decoder's ceiling on a COCO keypoint set: metrics of decoding the ground truth's own targets.

    python benchmarks/decode_ceiling.py --data ../shared/data/lspet/test.json [--size 256]

Each image is scaled so that its long side is `--size`, its targets are encoded exactly as for training,
decoded, mapped back, and scored like a model's predictions. No network is involved: what is lost here
(people whose labelled parts do not connect, same-type joints in one cell) no trained model can recover.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()

    from activepose.config import EvalConfig
    from activepose.pose.coco import load_coco
    from activepose.pose.decode import Decoder
    from activepose.pose.evaluate import metrics_for
    from activepose.pose.fields import encode_targets

    gt = load_coco(args.data)
    decoder = Decoder(gt.skeleton)
    predictions = {}
    for frame in gt:
        scale = args.size / max(frame.width, frame.height)
        people = frame.keypoints.copy()
        people[..., :2] *= scale
        heatmaps, pafs = encode_targets(people, gt.skeleton, (args.size, args.size))
        ((kps, scores),) = decoder(torch.from_numpy(heatmaps)[None], torch.from_numpy(pafs)[None])
        kps[..., :2] /= scale
        predictions[frame.image_id] = (kps, scores)
    metrics = metrics_for(gt, predictions, EvalConfig())
    print(f"{args.data} ({gt.skeleton.name}, {gt.skeleton.num_limbs} limbs), long side {args.size}:")
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
