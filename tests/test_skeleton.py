import json

import numpy as np
import pytest

from activepose.pose.skeleton import (
    PRESETS,
    Skeleton,
    SkeletonError,
    get_skeleton,
    infer_flip_pairs,
    match_preset,
)

from .conftest import shared_file


@pytest.mark.parametrize("name,k,n_limbs", [("coco17", 17, 19), ("coco18", 18, 19), ("lsp14", 14, 17)])
def test_presets_sizes_and_flip_pairs_are_left_right(name, k, n_limbs):
    sk = PRESETS[name]
    assert (sk.num_keypoints, sk.num_limbs) == (k, n_limbs)
    assert len(sk.sigmas) == k
    for a, b in sk.flip_pairs:
        assert sk.keypoints[a].replace("left", "right") == sk.keypoints[b]
    perm = sk.flip_permutation()
    assert sorted(perm) == list(range(k))
    assert np.array_equal(perm[perm], np.arange(k))  # an involution


def test_coco17_sigmas_are_cocos():
    sk = PRESETS["coco17"]
    assert sk.sigmas[sk.index("nose")] == pytest.approx(0.026)
    assert sk.sigmas[sk.index("left_hip")] == pytest.approx(0.107)


@pytest.mark.parametrize("name", ["coco18", "lsp14"])
def test_tree_skeletons_are_connected(name):
    sk = PRESETS[name]
    seen, frontier = {0}, [0]
    while frontier:
        n = frontier.pop()
        for a, b in sk.limbs:
            for x, y in ((a, b), (b, a)):
                if x == n and y not in seen:
                    seen.add(y)
                    frontier.append(y)
    assert seen == set(range(sk.num_keypoints))


def test_coco_category_round_trip_and_preset_match():
    sk = PRESETS["lsp14"]
    back = Skeleton.from_coco_category(sk.to_coco_category())
    assert back.keypoints == sk.keypoints and back.limbs == sk.limbs and back.flip_pairs == sk.flip_pairs
    assert match_preset(back) is sk


def test_lspet_file_skeleton_matches_preset():
    path = shared_file("lspet", "test.json")
    cat = json.loads(path.read_text())["categories"][0]
    assert match_preset(Skeleton.from_coco_category(cat)) is PRESETS["lsp14"]


def test_get_skeleton_from_json_and_unknown(tmp_path):
    p = tmp_path / "sk.json"
    p.write_text(
        json.dumps(
            {
                "categories": [
                    {"id": 1, "name": "hand", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2], [2, 3]]}
                ]
            }
        )
    )
    sk = get_skeleton(p)
    assert sk.keypoints == ("a", "b", "c") and sk.limbs == ((0, 1), (1, 2))
    with pytest.raises(SkeletonError, match="unknown skeleton 'nope'"):
        get_skeleton("nope")


def test_invalid_skeletons_are_rejected():
    with pytest.raises(SkeletonError, match="limb"):
        Skeleton("bad", ("a", "b"), ((0, 2),))
    with pytest.raises(SkeletonError, match="duplicate"):
        Skeleton("bad", ("a", "a"), ())
    with pytest.raises(SkeletonError, match="sigmas"):
        Skeleton("bad", ("a", "b"), ((0, 1),), sigmas=(0.1,))


def test_infer_flip_pairs_variants():
    assert infer_flip_pairs(["l_hand", "r_hand", "head"]) == ((0, 1),)
    assert infer_flip_pairs(["wrist_l", "wrist_r"]) == ((0, 1),)
    assert infer_flip_pairs(["head", "tail"]) == ()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_is_json_safe(name):
    sk = PRESETS[name]
    back = Skeleton.from_dict(json.loads(json.dumps(sk.to_dict())))
    assert back == sk
