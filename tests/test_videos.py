"""Video-aware selection: a batch spread across videos, near-duplicate frames skipped, for any strategy."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from activepose.config import SelectionConfig, SyntheticConfig, UncertaintyConfig
from activepose.errors import ConfigError
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.sampling.strategies import SelectionContext, select_batch
from activepose.sampling.videos import spread_over_videos, video_names

from .conftest import tiny_model

VIDEOS = ["a"] * 12 + ["b"] * 3 + ["c"] * 6 + ["d"] * 2 + ["e"] * 7


def test_no_video_gets_a_second_frame_before_every_video_has_one():
    preference = list(range(12)) + list(range(12, len(VIDEOS)))  # the strategy loves video a
    for budget in (3, 5, 9, 14):
        rows, stats = spread_over_videos(preference, VIDEOS, budget)
        counts = Counter(VIDEOS[r] for r in rows)
        assert len(rows) == len(set(rows.tolist())) == budget
        if budget <= 5:
            assert max(counts.values()) == 1
        else:  # every video, none more than one frame ahead of another (d has only 2 frames)
            assert max(counts.values()) - min(counts[v] for v in "abcde") <= 1
        assert stats["videos"] == dict(counts)
    rows, _ = spread_over_videos(preference, VIDEOS, 3)
    assert rows.tolist() == [0, 12, 15]  # within a level, the strategy's order decides


def test_videos_the_preference_list_misses_still_get_their_turn_and_labels_count():
    rows, stats = spread_over_videos(list(range(12)), VIDEOS, 5, seed=1)  # the list holds video a only
    assert sorted(VIDEOS[r] for r in rows) == list("abcde") and stats["outside_preference"] == 4
    rows, _ = spread_over_videos(range(len(VIDEOS)), VIDEOS, 4, labelled_videos=["a", "a", "c"])
    assert sorted(VIDEOS[r] for r in rows) == ["b", "b", "d", "e"]  # b, d, e had none, then c and b had one


def test_near_duplicate_frames_are_skipped_while_others_are_left():
    videos = ["a"] * 4 + ["b"] * 2
    emb = np.array([[1, 0], [1, 0.01], [0, 1], [0.7, 0.7], [1, 0], [0, 1]], np.float32)
    rows, stats = spread_over_videos(range(6), videos, 4, emb=emb, min_distance=0.1)
    assert 1 not in rows.tolist() and stats["near_duplicates_skipped"] >= 1  # frame 1 repeats frame 0
    labelled = np.array([[0, 1]], np.float32)
    rows, _ = spread_over_videos(range(6), videos, 2, emb=emb, labelled_emb=labelled, labelled_videos=["b"],
                                 min_distance=0.1)  # fmt: skip
    assert 5 not in rows.tolist()  # b's frame 5 is its labelled frame again
    rows, _ = spread_over_videos(range(6), videos, 6, emb=emb, min_distance=0.1)
    assert sorted(rows.tolist()) == list(range(6))  # only near-duplicates left: they are taken last


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A synthetic pool whose 24 images are frames of 4 videos (6 each), set in the COCO file."""
    import json

    out = tmp_path_factory.mktemp("footage")
    path = make_synthetic_coco(out, "lsp14", SyntheticConfig(num_images=24, image_size=(64, 64)), seed=5)
    data = json.loads(path.read_text())
    for k, im in enumerate(data["images"]):
        im["video"], im["frame"] = f"cam{k % 4}", k
    path.write_text(json.dumps(data))
    return load_coco(path)


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "kmeans", "typiclust", "hybrid", "mpe"])
def test_every_strategy_spreads_its_batch_over_videos(footage, strategy, tmp_path):
    cfg = SelectionConfig(extractor="pose_backbone", uncertainty=UncertaintyConfig(input_size=64),
                          cache_dir=tmp_path, spread_videos=True)  # fmt: skip
    labelled = footage.subset(footage.image_ids[:1])  # cam0 has one labelled frame
    ctx = SelectionContext(footage, labelled, tiny_model(footage.skeleton).eval(), cfg, device="cpu")
    result = select_batch(strategy, ctx, 5)
    videos = Counter(footage.frame(i).video for i in result.ids)
    totals = videos + Counter({"cam0": 1})  # labelled + chosen per video
    assert {"cam1", "cam2", "cam3"} <= set(videos) and max(totals.values()) - min(totals.values()) <= 1
    assert result.stats["videos"] == dict(videos)
    assert footage.image_ids[0] not in result.ids and np.isfinite(result.scores).all()


def test_a_name_pattern_names_the_video_of_images_without_one(footage):
    stills = dataclasses.replace(footage, frames=[dataclasses.replace(f, video=None) for f in footage.frames])
    ids = stills.image_ids[:3]
    assert video_names(stills, ids) == [f"image:{i}" for i in ids]
    assert video_names(stills, ids, r"(\d)\.\w+$") == [
        stills.frame(i).file_name.rsplit(".", 1)[0][-1] for i in ids
    ]
    with pytest.raises(ConfigError, match="--video-pattern"):
        SelectionConfig(video_pattern="frames/([^/")
    with pytest.raises(ConfigError, match="--min-frame-distance"):
        SelectionConfig(min_frame_distance=-1)
