"""Video input: `init --videos` / `add-videos` decode real MP4/MKV files (PyAV) into a project's pool.

The round trip builds H.264 MP4 files from the frames of two `youtube_pose` videos (or, without ../shared,
from generated footage), each frame shown twice (the near-identical frames of real footage), then
init --videos -> select -> label (simulated from the known keypoints) -> train -> evaluate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.fileio import read_image
from activepose.interop.video import FrameSampling, VideoError, extract_frames, probe_video, write_video
from activepose.pose.coco import annotation_dict, load_coco
from activepose.project.store import Project

runner = CliRunner()
YOUTUBE = Path(__file__).resolve().parents[2] / "shared" / "data" / "youtube_pose"
TINY = ["--input-size", "64", "--width", "0.25", "--head-channels", "32", "--epochs", "1", "--workers", "0",
        "--no-pretrained", "--device", "cpu"]  # fmt: skip


def _run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _even(rgb: np.ndarray) -> np.ndarray:
    return rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]


def _moving_block(n: int, still_from: int | None = None, size=(48, 64)) -> list[np.ndarray]:
    """Frames of a textured scene with a bright block moving 6 px per frame (still from `still_from` on)."""
    import cv2

    coarse = np.random.default_rng(0).integers(0, 200, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    base = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)  # smooth: codecs keep it
    out = []
    for i in range(n):
        k = i if still_from is None else min(i, still_from)
        f = base.copy()
        f[10:26, 2 + 6 * k % 40 : 18 + 6 * k % 40] = 255
        out.append(f)
    return out


# --- decoding ----------------------------------------------------------------------------------------------
def test_frames_are_decoded_with_index_and_time_and_near_identical_ones_left_out(tmp_path):
    frames = _moving_block(8, still_from=4) + [np.zeros((48, 64, 3), np.uint8)] * 2
    path = write_video(tmp_path / "cam.mp4", frames, fps=5)
    info = probe_video(path)
    assert (info["codec"], info["width"], info["height"], info["frames"]) == ("h264", 64, 48, 10)
    got = extract_frames(path, "cam", tmp_path / "out", FrameSampling(signature_threshold=0.5))
    # frames 5-7 repeat frame 4 (still), frame 9 repeats frame 8 (black): left out
    assert [f.frame for f in got.frames] == [0, 1, 2, 3, 4, 8]
    assert (got.decoded, got.sampled, got.near_duplicates) == (10, 10, 4)
    assert [f.seconds for f in got.frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.6])
    for f in got.frames:
        assert f.path == tmp_path / "out" / "cam" / f"{f.frame:07d}.jpg"
        img = read_image(f.path)
        assert img.shape == (48, 64, 3) and (f.width, f.height) == (64, 48)
    # the kept frame is the video's frame (lossy codecs: close, not equal)
    assert np.abs(read_image(got.frames[2].path).astype(int) - frames[2]).mean() < 8
    everything = extract_frames(path, "all", tmp_path / "out", FrameSampling(signature_threshold=-1))
    assert len(everything.frames) == 10


def test_every_fps_and_max_frames_choose_frames_by_index_and_time(tmp_path):
    path = write_video(tmp_path / "v.mkv", _moving_block(20), fps=10)  # 2 s
    off = {"signature_threshold": -1}
    assert [f.frame for f in extract_frames(path, "a", tmp_path, FrameSampling(every=6, **off)).frames] == [
        0,
        6,
        12,
        18,
    ]
    assert [f.frame for f in extract_frames(path, "b", tmp_path, FrameSampling(fps=4, **off)).frames] == [
        0, 3, 5, 8, 10, 13, 15, 18]  # fmt: skip  # at 0, 0.25, 0.5 ... s: the first frame at or after each
    capped = extract_frames(path, "c", tmp_path, FrameSampling(every=2, max_frames=3, **off))
    assert [f.frame for f in capped.frames] == [0, 2, 4] and capped.decoded == 5  # decoding stops there
    with pytest.raises(Exception, match="at most one of --every and --fps"):
        FrameSampling(every=2, fps=3)


def _bad_videos(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import av

    good = write_video(tmp_path / "good.mp4", _moving_block(30), fps=10)
    data = good.read_bytes()
    cases = {"missing": (tmp_path / "nowhere.mp4", "no such file")}
    (tmp_path / "notes.mp4").write_text("not a video")
    cases["not a video"] = (tmp_path / "notes.mp4", "not a readable video")
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) at the end is lost
    cases["truncated, index at the end"] = (tmp_path / "cut.mp4", "not a readable video")
    fast = tmp_path / "fast.mp4"  # the index first: the frames it lists are missing
    with av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in _moving_block(30):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    raw = fast.read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(raw[: len(raw) * 2 // 3])
    cases["truncated, index first"] = (tmp_path / "fastcut.mp4", r"truncated video: \d+ of the 30 frames")
    zero = tmp_path / "zero.mp4"
    with av.open(str(zero), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    cases["zero frames"] = (zero, "no video stream")
    mkv = write_video(tmp_path / "ok.mkv", _moving_block(5)).read_bytes()
    assert mkv.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "odd.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/QQQ"))
    cases["unsupported codec"] = (tmp_path / "odd.mkv", "unsupported video codec")
    return cases


def test_bad_videos_get_one_error_line_and_nothing_is_stored(tmp_path):
    for what, (path, message) in _bad_videos(tmp_path / "in").items():
        with pytest.raises(VideoError, match=message):
            extract_frames(path, "x", tmp_path / "frames")
        assert not (tmp_path / "frames" / "x").exists(), what
        proj = tmp_path / f"proj-{what.replace(' ', '-').replace(',', '')}"
        code, out = _run("init", proj, "--videos", path, "--skeleton", "lsp14")
        lines = [line for line in out.splitlines() if line.strip()]
        assert code == 2 and lines[-1].startswith("error:") and str(path) in " ".join(out.split()), (
            what,
            out,
        )
        assert re.search(message, " ".join(out.split())) and "Traceback" not in out, (what, out)
        assert not proj.exists() and not list(tmp_path.glob(f".{proj.name}.init-*")), what


# --- the round trip ------------------------------------------------------------------------------------
def _footage(tmp_path: Path, real: bool):
    """Return (video folder, ground truth {(video, source frame index): Frame}, test COCO, skeleton option):
    two videos of 10 frames, each frame shown twice; `real`: youtube_pose's frames, else generated footage."""
    from activepose.config import SyntheticConfig
    from activepose.pose.coco import save_coco
    from activepose.pose.synthetic import make_synthetic_coco

    if real:
        pool = load_coco(YOUTUBE / "pool.json")
        names = sorted({f.video for f in pool})[:2]
        per_video = {v: sorted((f for f in pool if f.video == v), key=lambda f: f.frame)[:10] for v in names}
        test = load_coco(YOUTUBE / "test.json")
        test = test.subset(test.image_ids[:: len(test) // 4][:4])
        skeleton = str(YOUTUBE / "pool.json")
    else:
        cfg = SyntheticConfig(
            num_images=20, image_size=(64, 64), max_people=2, min_people=1, frames_per_video=10
        )
        pool = load_coco(make_synthetic_coco(tmp_path / "gen", "lsp14", cfg, seed=5))
        per_video = {}
        for f in pool:
            per_video.setdefault(f"scene{f.video}", []).append(f)
        test = load_coco(make_synthetic_coco(tmp_path / "gen-test", "lsp14", SyntheticConfig(
            num_images=4, image_size=(64, 64), max_people=2, min_people=1), seed=9))  # fmt: skip
        skeleton = "lsp14"
    # test images with absolute paths, so the file can live anywhere
    for f in test:
        f.file_name = str(test.image_path(f).resolve())
    test_path = save_coco(test, tmp_path / "test.json")
    truth = {}
    for v, frames in per_video.items():
        imgs = [_even(read_image(pool.image_path(f))) for f in frames]
        size = imgs[0].shape
        keep = [(f, im) for f, im in zip(frames, imgs, strict=True) if im.shape == size]
        write_video(tmp_path / "videos" / f"{v}.mp4", [im for _, im in keep for _ in range(2)], fps=10)
        truth.update({(v, k): f for k, (f, _) in enumerate(keep)})
    return tmp_path / "videos", truth, test_path, skeleton


def _ground_truth(proj: Path, truth: dict, out: Path) -> Path:
    """The project's frames labelled with the keypoints of the source frames (frame index // 2)."""
    with Project.open(proj) as p:
        skel = p.skeleton
        images, annotations = [], []
        for image_id in p.image_ids():
            row = p.image(image_id)
            if row.state == "test":
                continue
            src = truth[(row.video, row.frame // 2)]
            images.append({"id": image_id, "file_name": str(p.image_path(image_id)), "width": row.width,
                           "height": row.height})  # fmt: skip
            for kps in src.keypoints:
                k = kps.copy()
                k[:, 0] = np.clip(k[:, 0], 0, row.width - 1)
                k[:, 1] = np.clip(k[:, 1], 0, row.height - 1)
                annotations.append(annotation_dict(len(annotations) + 1, image_id, k))
    out.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [skel.to_coco_category(1)]}))  # fmt: skip
    return out


@pytest.mark.parametrize("real", [True, False], ids=["youtube_pose", "generated"])
def test_a_video_round_trip_init_select_label_train_evaluate(tmp_path, real):
    if real and not (YOUTUBE / "pool.json").exists():
        pytest.skip(f"{YOUTUBE} is not here")
    videos, truth, test, skeleton = _footage(tmp_path, real)
    proj = tmp_path / "proj"
    code, out = _run("init", proj, "--videos", videos, "--skeleton", skeleton, "--test", test)
    assert code == 0, out
    assert "frames from videos" in out and "near-identical" in out
    with Project.open(proj) as p:
        frames = [p.image(i) for i in p.image_ids() if p.image(i).state != "test"]
        names = sorted({r.video for r in frames})
        assert names == sorted({v for v, _ in truth}) and len(p.unlabelled_ids()) == len(frames)
        per = p.frames_per_video([r.id for r in frames])
        sources = {v: sum(1 for w, _ in truth if w == v) for v in names}
        for v in names:
            kept = sorted(r.frame for r in frames if r.video == v)
            # every repeated copy (odd index) is left out; distinct frames are kept (a few may look alike)
            assert all(k % 2 == 0 for k in kept), kept
            assert sources[v] - 2 <= per[v] <= sources[v]
            assert [r.timestamp for r in sorted(frames, key=lambda r: r.frame) if r.video == v] == pytest.approx(
                [k / 10 for k in kept])  # fmt: skip
        ids = sorted(r.id for r in frames)
        assert ids == list(range(1, len(frames) + 1))  # stable ids in video, frame order
    gt = _ground_truth(proj, truth, tmp_path / "gt.json")
    assert _run("select", proj, "--budget", 4, "--strategy", "random")[0] == 0
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)
    assert code == 0, out
    code, out = _run("train", proj, *TINY)
    assert code == 0, out
    code, out = _run("evaluate", proj, "--tta", "clean", "--device", "cpu")
    assert code == 0 and "round 1 evaluated and closed" in out, out
    with Project.open(proj) as p:
        assert p.latest_model().metrics["clean"]["images"] == 4 and len(p.labelled_ids()) == 4
    code, out = _run("status", proj)
    assert code == 0 and "videos: 2" in out


def test_add_videos_adds_new_frames_and_refuses_a_name_it_has(tmp_path):
    first = write_video(tmp_path / "in" / "door.mp4", _moving_block(6), fps=5)
    proj = tmp_path / "proj"
    assert _run("init", proj, "--videos", first, "--skeleton", "lsp14")[0] == 0
    with Project.open(proj) as p:
        before = p.image_ids()
    second = write_video(tmp_path / "more" / "yard.mkv", _moving_block(9)[3:], fps=5)
    code, out = _run("add-videos", proj, "--videos", second, "--every", "2")
    assert code == 0 and "added 3 frame(s) of 1 video(s)" in out, out
    with Project.open(proj) as p:
        new = [i for i in p.image_ids() if i not in before]
        assert new == list(range(max(before) + 1, max(before) + 4))
        assert [p.image(i).frame for i in new] == [0, 2, 4] and {p.image(i).video for i in new} == {"yard"}
        assert all(p.image_path(i).is_file() for i in new)
        snapshot = p.image_ids()
    code, out = _run("add-videos", proj, "--videos", second)  # the same name again
    assert code == 2 and "already has video(s) named yard" in out
    broken = tmp_path / "more" / "broken.mp4"
    broken.write_bytes(first.read_bytes()[:200])
    code, out = _run("add-videos", proj, "--videos", broken)
    assert code == 2 and "broken.mp4" in out
    with Project.open(proj) as p:
        assert p.image_ids() == snapshot
    assert sorted(d.name for d in (proj / "frames").iterdir()) == ["door", "yard"]


def test_phone_rotation_hidden_files_case_clashes_and_options_without_videos(tmp_path):
    from activepose.interop.video import upright, video_files

    img = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    # FFmpeg's display matrix: -90 (a phone held upright) means "turn clockwise by 90" to show it
    assert upright(img, -90).shape == (4, 6, 3) and np.array_equal(upright(img, -90), np.rot90(img, -1))
    assert np.array_equal(upright(img, 180), img[::-1, ::-1]) and upright(img, 0) is img
    folder = tmp_path / "cams"
    write_video(folder / "Door.mp4", _moving_block(2))
    (folder / "._Door.mp4").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS metadata, not a video
    assert [n for n, _ in video_files([folder])] == ["Door"]
    write_video(tmp_path / "door.mkv", _moving_block(2))
    with pytest.raises(VideoError, match="same name"):
        video_files(
            [folder, tmp_path / "door.mkv"]
        )  # frames/Door and frames/door are one folder on some disks
    code, out = _run("init", tmp_path / "p", "--images", folder, "--skeleton", "lsp14", "--fps", "2")
    assert code == 2 and "are for --videos" in out and not (tmp_path / "p").exists()
