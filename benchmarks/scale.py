"""Scale: a pool of 10k / 100k / 1M frames — the store, the caches, ANN selection, video decoding, Ray scoring.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--parts store,select,video,ray] [--dim 1280]
                               [--budget 1000] [--video-frames 1500,6000] [--tmp DIR]

Every (part, size) runs in a fresh child process, which reports its stage times and its own peak resident
memory (VmHWM), so one cell's memory never counts in another's. Parts:

* ``store``: `Project.create` with N frames of N/1000 videos (paths, sizes, hashes, video, frame, time; no
  image files), then what `status` reads (state counts, frames per video) and the bookkeeping of `select`:
  the unlabelled ids, opening a round of ``--budget`` frames, the round read back.
* ``select``: N clustered 1,280-d embeddings (MobileNetV2's width; `benchmarks/selection.py`'s generator)
  written to the vector cache the selection uses (`VectorCache.add`, by content hash), read back for the
  whole pool (`lookup`, as `extract_features` does on a warm cache), then `select_diverse` (the hybrid's ANN
  step: the 64-d sketch, cells, Annoy) choosing ``--budget``. Its ``total`` is the goal's figure: the store
  bookkeeping of the same N plus the cache read and the ANN selection (the embeddings are assumed cached, as
  they are after the first round; computing them is the scoring the ``ray`` part measures).
* ``video``: a 854 x 480 H.264 video of each length in ``--video-frames`` (30 fps, moving shapes on a
  textured background) is encoded once, then decoded by `interop.video` (every frame: frames/s and peak
  memory, which must not grow with the length), and `extract_frames` with ``--every 30`` writing JPEGs.
* ``ray``: embeddings of ``--ray-images`` generated images with the local engine and with ``--engine ray``
  (a local Ray on 127.0.0.1, started inside the timing and without it: Ray's start-up is reported apart);
  the vectors must be equal.

Prints one table per part; ``--out`` writes every row as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class _Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def __call__(self, stage: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.times[stage] = round(time.perf_counter() - t0, 3)
        return out


def _store(n: int, budget: int, tmp: Path, clock: _Clock):
    from activepose.pose.skeleton import get_skeleton
    from activepose.project.store import Project

    per_video = 1000
    rows = (
        (f"frames/v{i // per_video:05d}/{i % per_video:07d}.jpg", 854, 480, f"{i:040x}", i + 1,
         f"v{i // per_video:05d}", i % per_video, (i % per_video) / 30)
        for i in range(n)
    )  # fmt: skip
    folder = tmp / f"store-{n}"
    proj = clock("create", lambda: Project.create(folder, get_skeleton("coco17"), list(rows)))
    clock("status", lambda: (proj.counts(), proj.frames_per_video(), proj.rounds()))
    unl = clock("unlabelled ids", proj.unlabelled_ids)
    chosen = np.random.default_rng(0).choice(len(unl), budget, replace=False)
    items = [(unl[int(i)], float(k)) for k, i in enumerate(chosen)]
    clock("open round", lambda: proj.open_round("hybrid", {"budget": budget}, items))
    clock("round read", lambda: (proj.round(1).items, proj.queued_ids(), proj.counts()))
    proj.close()


def cell_store(n: int, args) -> dict:
    clock = _Clock()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        _store(n, args.budget, Path(tmp), clock)
    return {"times": clock.times, "total": round(sum(clock.times.values()), 3)}


def cell_select(n: int, args) -> dict:
    from selection import PeakRss, make_clustered

    from activepose.pose.cache import VectorCache
    from activepose.sampling.diversity import select_diverse

    clock = _Clock()
    rss = PeakRss()  # per phase: the generator's memory map is not the selection's
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        rss.start()
        _store(n, args.budget, tmp, clock)  # the same pool's bookkeeping
        store_gb = rss.gb()
        emb = make_clustered(tmp / "emb.npy" if n * args.dim * 4 > 2**31 else None, n, args.dim)
        hashes = [f"{i:040x}" for i in range(n)]

        def fill(rows: np.ndarray) -> None:
            with VectorCache(tmp / "cache", "mobilenet_v2-sim", args.dim) as vc:
                for s in range(0, n, 65536):
                    vc.add(hashes[s : s + 65536], np.asarray(rows[s : s + 65536]))

        t0 = time.perf_counter()
        fill(emb)
        clock.times["cache write (not in total)"] = round(time.perf_counter() - t0, 3)
        del emb  # the selection reads the vectors back from the cache, as a warm round does

        def read():
            with VectorCache(tmp / "cache", "mobilenet_v2-sim", args.dim) as vc:
                found, vecs = vc.lookup(hashes)
            assert found.all()
            return vecs

        rss.start()
        vecs = clock("cache read", read)
        picks = clock("ANN selection", lambda: select_diverse(vecs, args.budget, backend="annoy", seed=0))
        select_gb = rss.gb()
        assert len(np.unique(picks)) == args.budget
    total = sum(v for k, v in clock.times.items() if "not in total" not in k)
    return {"times": clock.times, "total": round(total, 3), "rss_store_gb": round(store_gb, 3),
            "rss_read_and_select_gb": round(select_gb, 3), "per_phase_rss": rss.per_phase}  # fmt: skip


def _scene(n: int, w: int = 854, h: int = 480):
    """`n` frames of a textured background with three shapes moving across it (RGB uint8)."""
    import cv2

    rng = np.random.default_rng(0)
    bg = cv2.resize(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8), (w, h))
    for i in range(n):
        f = bg.copy()
        for k, colour in enumerate(((255, 60, 60), (60, 255, 60), (60, 60, 255))):
            x = int((i * (3 + k) + 200 * k) % (w - 80))
            y = int(h / 2 + (h / 3) * np.sin(i / (20 + 7 * k) + k))
            cv2.rectangle(f, (x, y - 60), (x + 60, y + 60), colour, -1)
        yield f


def cell_video(frames: int, args) -> dict:
    from activepose.interop.video import FrameSampling, _frames, _open, extract_frames, write_video

    clock = _Clock()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        path = clock(
            "encode (not measured)", lambda: write_video(tmp / "long.mp4", _scene(frames), fps=30, crf=23)
        )
        from selection import PeakRss

        rss = PeakRss()  # the encoder's memory is not the decoder's: the high-water mark restarts here
        rss.start()
        base = _peak_gb()

        def decode() -> int:
            container, stream = _open(path)
            with container:
                return sum(1 for _ in _frames(container, stream, path))

        got = clock("decode every frame", decode)
        assert got == frames

        def decode_rgb() -> int:
            container, stream = _open(path)
            with container:
                return sum(
                    f.to_ndarray(format="rgb24").shape[0] > 0 for _, _, f in _frames(container, stream, path)
                )

        clock("decode + RGB every frame", decode_rgb)
        peak = _peak_gb()
        res = clock(
            "extract every 30th", lambda: extract_frames(path, "long", tmp / "out", FrameSampling(every=30))
        )
        mb = round(path.stat().st_size / 2**20, 1)
    return {
        "times": clock.times, "frames": frames, "decode_fps": round(frames / clock.times["decode every frame"], 1),
        "decode_rgb_fps": round(frames / clock.times["decode + RGB every frame"], 1),
        "extract_fps": round(frames / clock.times["extract every 30th"], 1), "kept": len(res.frames),
        "rss_before_decode_gb": round(base, 3), "rss_peak_decoding_gb": round(peak, 3),
        "per_phase_rss": rss.per_phase,
        "mb": mb,
    }  # fmt: skip


def cell_ray(n: int, args) -> dict:
    import cv2

    from activepose.sampling.engine import RayEngine
    from activepose.sampling.features import create_extractor, extract_features

    clock = _Clock()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        paths = []
        for i, f in enumerate(_scene(n, 320, 240)):
            paths.append(tmp / f"{i:05d}.jpg")
            cv2.imwrite(str(paths[-1]), f)
        ex = create_extractor("mobilenet_v2")
        local = clock("local", lambda: extract_features(ex, paths, num_workers=2))
        import ray

        clock("ray start", lambda: ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                                            log_to_driver=False, configure_logging=False))  # fmt: skip
        eng = RayEngine()
        remote = clock("ray (running Ray)", lambda: extract_features(ex, paths, engine=eng))
        ray.shutdown()
        assert np.array_equal(local, remote)
    t = clock.times
    return {"times": t, "local_img_s": round(n / t["local"], 1), "ray_img_s": round(n / t["ray (running Ray)"], 1),
            "ray_with_start_img_s": round(n / (t["ray (running Ray)"] + t["ray start"]), 1)}  # fmt: skip


CELLS = {"store": cell_store, "select": cell_select, "video": cell_video, "ray": cell_ray}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--parts", default="store,select,video,ray")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--video-frames", default="1500,6000")
    p.add_argument("--ray-images", type=int, default=256)
    p.add_argument(
        "--tmp", type=Path, default=None, help="scratch folder (1M x 1,280-d needs ~11 GB of disk)"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cell", nargs=2, metavar=("PART", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        part, size = args.cell
        row = CELLS[part](int(size), args)
        row["peak_rss_gb"] = round(_peak_gb(), 3)
        print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    for part in args.parts.split(","):
        sizes = {"video": args.video_frames, "ray": str(args.ray_images)}.get(part, args.sizes)
        for size in sizes.split(","):
            cmd = [sys.executable, __file__, "--cell", part, size, "--dim", str(args.dim), "--budget",
                   str(args.budget)] + (["--tmp", str(args.tmp)] if args.tmp else [])  # fmt: skip
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("ROW ")), None)
            if res.returncode or line is None:
                print(f"{part} {size}: failed (rc {res.returncode})\n{res.stderr[-2000:]}", flush=True)
                continue
            row = {"part": part, "size": int(size), **json.loads(line[4:]),
                   "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
