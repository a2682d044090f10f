"""The one keypoint rule (`coco.check_people`) and its three callers: COCO validation, the store, the web desk.

The callers must accept and refuse the same people, and store the same cleaned keypoints: labelled points a
little past the border (1 % of the longer side, >= 1 px) clipped onto it, unlabelled points zeroed.
"""

from __future__ import annotations

import numpy as np
import pytest

from activepose.config import AnnotateOptions
from activepose.pose.coco import (
    OUTSIDE_TOLERANCE,
    CocoError,
    check_people,
    load_coco,
    outside_margin,
    parse_coco,
)
from activepose.pose.skeleton import PRESETS
from activepose.project.store import StoreError
from activepose.workflow.desk import InvalidLabels, LabellingDesk, Person

from .conftest import project_with_round, synthetic_project_data

SK = PRESETS["lsp14"]
K = SK.num_keypoints
W, H = 640, 480  # margin 6.4 px


def people(n: int = 1, x0: float = 10.0, v: int = 2) -> np.ndarray:
    out = np.zeros((n, K, 3))
    for p in range(n):
        out[p, :, 0] = x0 + 20 * p + np.arange(K)
        out[p, :, 1] = 10.0 + np.arange(K)
        out[p, :, 2] = v
    return out


def as_lists(kps: np.ndarray) -> list:
    """People as JSON gives them: float coordinates, integer visibility flags."""
    return [[[float(x), float(y), int(v)] for x, y, v in person] for person in kps]


# --- the rule ------------------------------------------------------------------------------------------
def test_good_people_come_back_as_float64_with_unlabelled_points_zeroed():
    kps = people(2)
    kps[1, 3] = [-50.0, 900.0, 0]  # not labelled: its position means nothing, wherever it is
    kps[0, 4, 2] = 1
    out, problems = check_people(kps.astype(np.float32), SK, W, H, where="image id 1")
    assert problems == [] and out.dtype == np.float64 and out.shape == (2, K, 3)
    assert out[1, 3].tolist() == [0.0, 0.0, 0.0]
    expected = kps.copy()
    expected[1, 3] = 0
    np.testing.assert_array_equal(out, expected)
    lists, problems = check_people(as_lists(kps), SK, W, H)  # nested lists give the same
    assert problems == [] and np.array_equal(lists, out)
    ints, problems = check_people(kps.astype(np.int64), SK, W, H)  # so do integer arrays
    assert problems == [] and np.array_equal(ints, out)


@pytest.mark.parametrize("nobody", [[], (), np.zeros((0, K, 3)), np.zeros(0), np.zeros((0, 5))])
def test_an_empty_array_or_list_is_nobody(nobody):
    out, problems = check_people(nobody, SK, W, H)
    assert problems == [] and out.shape == (0, K, 3)


@pytest.mark.parametrize(
    "value, needle",
    [
        (people(2)[:, :5], "image id 3: keypoint array of shape (2, 5, 3), expected (N, 14, 3): 5 keypoints"),
        (people(1)[0], "image id 3: keypoint array of shape (14, 3), expected (N, 14, 3) for the skeleton"),
        (people(1)[..., :2], "image id 3: keypoint array of shape (1, 14, 2)"),
        (np.zeros((2, 0, 3)), "image id 3: keypoint array of shape (2, 0, 3)"),  # two people, no keypoints
        ([people(1)[0].tolist(), people(1)[0, :13].tolist()], "image id 3: person 1 has 13 keypoints"),
        (
            [people(1)[0].tolist(), [[1, 2]] * K],
            "image id 3: person 1: keypoints must be 14 (x, y, v) triples",
        ),
        (None, "image id 3: keypoints must be a list of people, got None"),
        ({"x": 1}, "image id 3: keypoints must be a list of people"),
        ("12.5", "image id 3: keypoints must be a list of people, got '12.5'"),
    ],
)
def test_shapes(value, needle):
    out, problems = check_people(value, SK, W, H, where="image id 3")
    assert len(problems) == 1 and needle in problems[0], problems
    assert out.shape == (0, K, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column", [0, 1, 2])
def test_nan_and_infinity_are_refused_anywhere(bad, column):
    kps = people(2)
    kps[1, 3, column] = bad
    for value in (kps, kps.tolist()):
        _, problems = check_people(value, SK, W, H, where="image id 4")
        assert problems == ["image id 4: keypoints contain NaN or infinity (person 1 keypoint 'left_hip')"]


@pytest.mark.parametrize(
    "column, value, needle",
    [
        (0, True, "x / y must be numbers, got True"),
        (1, False, "x / y must be numbers, got False"),
        (0, "12.5", "x / y must be numbers, got '12.5'"),
        (1, None, "x / y must be numbers, got None"),
        (0, 10**30, "x / y must be numbers, got 1000000000000000000000000000000"),  # beyond 64 bits
        (2, True, "visibility flags must be the integers 0, 1 or 2, got True"),
        (2, "2", "visibility flags must be the integers 0, 1 or 2, got '2'"),
        (2, None, "visibility flags must be the integers 0, 1 or 2, got None"),
        (2, 10**400, "visibility flags must be the integers 0, 1 or 2, got 100000000000000000..."),
    ],
)
def test_bools_strings_and_none_are_not_numbers(column, value, needle):
    kps = as_lists(people(1))
    kps[0][2][column] = value
    _, problems = check_people(kps, SK, W, H, where="image id 5")
    assert len(problems) == 1 and problems[0].startswith(
        f"image id 5: person 0 keypoint 'right_hip': {needle}"
    )


@pytest.mark.parametrize("dtype", [bool, "U4", complex])
def test_arrays_of_bools_strings_or_complex_numbers_are_refused(dtype):
    _, problems = check_people(np.ones((1, K, 3), dtype=dtype), SK, W, H, where="image id 5")
    assert len(problems) == 1 and problems[0].startswith(
        "image id 5: keypoints must be numbers, got an array of"
    )


def test_numpy_scalars_in_lists_are_numbers():
    kps = [[[np.float32(5.0), np.int64(6), np.int8(2)]] * K]
    out, problems = check_people(kps, SK, W, H)
    assert problems == [] and out[0, 0].tolist() == [5.0, 6.0, 2.0]


@pytest.mark.parametrize("flag, ok", [(0, True), (1, True), (2, True), (3, False), (-1, False), (0.5, False)])
def test_visibility_is_0_1_or_2(flag, ok):
    kps = people(1)
    kps[0, 6, 2] = flag
    _, problems = check_people(kps, SK, W, H, where="image id 6")
    got = str(int(flag)) if float(flag).is_integer() else str(flag)
    expected = [
        f"image id 6: person 0 keypoint 'right_wrist': visibility flags must be the integers 0, 1 or 2, got {got}"
    ]
    assert problems == ([] if ok else expected)


def test_integer_flags_refuse_float_flags_as_a_coco_file_does():
    kps = as_lists(people(1))
    kps[0][0][2] = 2.0
    assert check_people(kps, SK, W, H)[1] == []  # an array of floats carries its flags as floats
    _, problems = check_people(kps, SK, W, H, where=["annotation id 7 (image id 1)"], integer_flags=True)
    assert problems == [
        "annotation id 7 (image id 1): keypoint 'right_ankle': visibility flags must be the integers 0, 1 or 2, "
        "got 2.0"
    ]
    assert check_people(people(1), SK, W, H, integer_flags=True)[1] == []  # arrays: the values count


def test_the_margin_is_one_percent_of_the_longer_side_and_at_least_a_pixel():
    assert OUTSIDE_TOLERANCE == 0.01
    assert outside_margin(640, 480) == pytest.approx(6.4) and outside_margin(480, 640) == pytest.approx(6.4)
    assert outside_margin(64, 64) == 1.0 and outside_margin(50, 40) == 1.0


@pytest.mark.parametrize(
    "x, y, clipped",
    [
        (W, H, (W, H)),  # exactly on the border: kept
        (0.0, 0.0, (0.0, 0.0)),
        (W + 0.5, -0.3, (W, 0.0)),  # a click on the edge: clipped onto it
        (W + 6.4, H + 6.4, (W, H)),  # exactly the margin: clipped
        (-6.4, -6.4, (0.0, 0.0)),
        (W + 6.41, 10.0, None),  # beyond the margin: refused
        (10.0, -6.41, None),
        (10.0, H + 7.0, None),
        (-100.0, 10.0, None),
    ],
)
def test_labelled_points_past_the_border_are_clipped_within_the_margin_and_refused_beyond(x, y, clipped):
    for v in (1, 2):
        kps = people(2)
        kps[1, 13] = [x, y, v]
        out, problems = check_people(kps, SK, W, H, where="image id 8")
        if clipped is None:
            assert problems == [
                f"image id 8: person 1 keypoint 'head_top' at ({x:.1f}, {y:.1f}) lies outside the 640x480 image "
                "(1 such keypoint(s))"
            ]
        else:
            assert problems == [] and out[1, 13].tolist() == [*clipped, v]
            np.testing.assert_array_equal(out[0], people(2)[0])  # the others untouched


def test_each_bad_person_is_named_once_with_its_first_problem():
    kps = people(4)
    kps[0, 0, 0] = W + 50  # outside
    kps[0, 1, 2] = 7  # and a bad flag: the flag is named first
    kps[2, 2:5, 1] = -30  # three keypoints outside
    _, problems = check_people(kps, SK, W, H, where="image id 9")
    assert problems == [
        "image id 9: person 0 keypoint 'right_knee': visibility flags must be the integers 0, 1 or 2, got 7",
        "image id 9: person 2 keypoint 'right_hip' at (52.0, -30.0) lies outside the 640x480 image "
        "(3 such keypoint(s))",
    ]


def test_where_names_the_image_each_person_or_nothing():
    kps = people(2)
    kps[1, 0, 0] = -20
    text = "keypoint 'right_ankle' at (-20.0, 10.0) lies outside the 640x480 image (1 such keypoint(s))"
    assert check_people(kps, SK, W, H)[1] == [f"person 1 {text}"]
    assert check_people(kps, SK, W, H, where="image id 2")[1] == [f"image id 2: person 1 {text}"]
    assert check_people(kps, SK, W, H, where=["a", "b"])[1] == [f"b: {text}"]
    assert check_people(kps, K, W, H)[1] == [f"person 1 {text.replace(repr('right_ankle'), '0')}"]
    kps[1, 0, 0] = np.nan
    assert check_people(kps, SK, W, H, where=["a", "b"])[1] == [
        "b: keypoints contain NaN or infinity (keypoint 'right_ankle')"
    ]
    ragged = [people(1)[0], people(1)[0, :3]]
    assert check_people(ragged, SK, W, H, where=["a", "b"])[1] == [
        "b has 3 keypoints, the skeleton 'lsp14' has 14"
    ]
    with pytest.raises(ValueError, match="1 names in `where` for 2 people"):
        check_people(kps, SK, W, H, where=["a"])


def test_the_input_is_not_changed():
    kps = people(1)
    kps[0, 0] = [W + 1, 5.0, 2]
    kps[0, 1] = [99.0, 99.0, 0]
    before = kps.copy()
    out, _ = check_people(kps, SK, W, H)
    assert np.array_equal(kps, before) and out[0, 0, 0] == W and out[0, 1, 0] == 0


# --- the three callers -----------------------------------------------------------------------------------
IMG = 64  # the synthetic pool's images are 64 x 64: a margin of 1 px


def _case(x: float, y: float, v: float = 2, j: int = 13) -> np.ndarray:
    kps = people(1)
    kps[0, j] = [x, y, v]
    return kps


OUTSIDE = "keypoint 'head_top' at"
FLAGS = "keypoint 'head_top': visibility flags must be the integers 0, 1 or 2"
NAN = "keypoints contain NaN or infinity"
CASES = {  # people, and for those refused what every caller's message says (None: accepted)
    "inside": (people(1), None),
    "on the border": (_case(IMG, IMG), None),
    "on the origin": (_case(0, 0), None),
    "half a pixel past": (_case(IMG + 0.5, -0.5), None),
    "the margin exactly": (_case(IMG + 1, -1), None),
    "just beyond the margin": (_case(IMG + 1.01, 10), OUTSIDE),
    "beyond the margin above": (_case(10, -1.5), OUTSIDE),
    "far outside": (_case(500, 10), OUTSIDE),
    "far outside but not labelled": (_case(500, -500, 0), None),
    "occluded past the border": (_case(-0.8, IMG + 0.2, 1), None),
    "two people, one outside": (np.concatenate([people(1), _case(-9, 10)]), OUTSIDE),
    "visibility 3": (_case(10, 10, 3), FLAGS),
    "visibility -1": (_case(10, 10, -1), FLAGS),
    "NaN": (_case(np.nan, 10), NAN),
    "infinity": (_case(10, np.inf), NAN),
    "13 keypoints": (people(1)[:, :13], ""),  # COCO: a count mismatch; the store and the desk: 13 keypoints
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    _, gt_path = synthetic_project_data(tmp_path_factory.mktemp("pool"), num_images=4, n_initial=1, n_test=1)
    gt = load_coco(gt_path)
    assert {(f.width, f.height) for f in gt} == {(IMG, IMG)}
    return gt


@pytest.fixture
def callers(pool, tmp_path):
    project = project_with_round(tmp_path / "proj", pool, [2, 3])
    desk = LabellingDesk(tmp_path / "proj", AnnotateOptions(predictions=False, device="cpu"))
    yield project, desk
    desk.close()
    project.close()


def _via_store(project, kps):
    try:
        project.add_labels({2: kps}, "simulated")
    except StoreError as exc:
        return None, exc.problems
    return project.keypoints_of(2), []


def _via_desk(project, desk, kps):
    try:
        desk.save(3, "ann", [Person(person) for person in kps], project.image(3).revision)
    except InvalidLabels as exc:
        return None, [str(exc)]
    return project.keypoints_of(3), []


def coco_values(person) -> list:
    """A person as a COCO file holds it, [x1, y1, v1, ...]: integer flags where they are integers."""
    out = []
    for x, y, v in person:
        out += [x, y, int(v) if type(v) is not bool and float(v).is_integer() else v]
    return out


def _via_coco(kps):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": IMG, "height": IMG}],
        "annotations": [
            {"id": 5 + n, "image_id": 1, "keypoints": coco_values(person)} for n, person in enumerate(kps)
        ],
        "categories": [SK.to_coco_category()],
    }
    try:
        ds = parse_coco(data, skeleton=SK, check_images=False)
    except CocoError as exc:
        return None, exc.problems
    return ds.frame(1).keypoints.astype(np.float64), []


@pytest.mark.parametrize("case", list(CASES))
def test_store_coco_and_desk_accept_and_refuse_the_same_people(callers, case):
    project, desk = callers
    kps, refused = CASES[case]
    results = {
        "store": _via_store(project, kps),
        "coco": _via_coco(kps),
        "desk": _via_desk(project, desk, kps),
    }
    if refused is None:
        expected, problems = check_people(kps, SK, IMG, IMG)
        assert problems == []
        assert expected[..., :2].min() >= 0 and expected[..., :2].max() <= IMG
        for name, (stored, problems) in results.items():
            assert problems == [], name
            np.testing.assert_allclose(stored, expected, atol=1e-5, err_msg=name)
    else:
        for name, (stored, problems) in results.items():
            assert stored is None and any(refused in p for p in problems), (name, problems)
        assert project.labels_of(2) == project.labels_of(3) == []


def test_the_desk_keeps_its_own_rules_about_people(callers):
    project, desk = callers
    with pytest.raises(
        InvalidLabels, match=r"people\[1\]: no labelled keypoint \(delete the person instead\)"
    ):
        desk.save(3, "ann", [Person(people(1)[0]), Person(people(1, v=0)[0])], 0)
    with pytest.raises(InvalidLabels, match=r"people\[0\].origin must be one of predicted, manual"):
        desk.save(3, "ann", [Person(people(1)[0], origin="robot")], 0)
    with pytest.raises(
        InvalidLabels, match=r"people\[0\]: keypoint 'head_top' at \(70.0, 10.0\) lies outside"
    ):
        desk.save(3, "ann", [Person(_case(70, 10)[0])], 0)
    assert project.labels_of(3) == [] and project.image(3).revision == 0
    # a point dropped a pixel past the border, as a mouse may, is clipped onto it rather than refused
    desk.save(3, "ann", [Person(_case(IMG + 1, -0.4)[0].tolist())], 0)
    assert project.keypoints_of(3)[0, 13].tolist() == [IMG, 0.0, 2.0]
    assert desk.save(3, "ann", [], 1)["state"] == "labelled"  # nobody in the image
    assert project.keypoints_of(3).shape == (0, K, 3)


def test_a_coco_file_still_refuses_float_flags_that_arrays_may_carry(callers):
    project, _ = callers
    kps = as_lists(people(1))
    kps[0][0][2] = 2.0
    assert _via_store(project, kps)[1] == []  # the store and the desk take numbers: 2.0 is 2
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": IMG, "height": IMG}],
        "annotations": [{"id": 5, "image_id": 1, "keypoints": [c for kp in kps[0] for c in kp]}],
        "categories": [SK.to_coco_category()],
    }
    with pytest.raises(CocoError, match="visibility flags must be the integers 0, 1 or 2, got 2.0"):
        parse_coco(data, skeleton=SK, check_images=False)


@pytest.mark.parametrize("value", [True, "12.5", None])
def test_store_coco_and_desk_refuse_bools_strings_and_none_as_coordinates(callers, value):
    project, desk = callers
    kps = as_lists(people(1))
    kps[0][13][0] = value
    needle = f"keypoint 'head_top': x / y must be numbers, got {value!r}"
    for name, (stored, problems) in {
        "store": _via_store(project, kps),
        "coco": _via_coco(kps),
        "desk": _via_desk(project, desk, kps),
    }.items():
        assert stored is None and any(needle in p for p in problems), (name, problems)
