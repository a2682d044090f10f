"""The project commands end to end on tiny synthetic data: init -> status -> export -> label."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.pose.coco import load_coco
from activepose.project.store import Project

from .conftest import synthetic_project_data

runner = CliRunner()


def _run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_project_data(tmp_path_factory.mktemp("data"), num_images=10, n_initial=3, n_test=2)


def _init(tmp_path, data, *extra):
    root, gt = data
    proj = tmp_path / "proj"
    code, out = _run("init", proj, "--pool", gt, *extra)
    assert code == 0, out
    return proj


def test_init_from_pool_with_labels_and_test(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json", "--test", root / "test.json")
    with Project.open(proj) as p:
        assert p.image_ids() == list(range(1, 11))
        assert p.counts()["labelled"] == 3 and p.counts()["test"] == 2
        assert p.image(1).content_hash and p.image_path(1).is_file()
    code, out = _run("status", proj)
    assert code == 0, out
    assert "3 labelled" in out and "2 test" in out and "5 unlabelled" in out
    assert "initial labels" in out
    people = len(
        json.loads((root / "initial.json").read_text())["annotations"]
    )  # imported: no labelling time
    assert "unknown" in out and f"{people} person label(s) without a recorded time" in " ".join(out.split())
    # a second init of the same folder is refused and changes nothing
    before = (proj / "project.db").read_bytes()
    code, out = _run("init", proj, "--pool", gt)
    assert code == 2 and "already exists" in out
    assert (proj / "project.db").read_bytes() == before


def test_init_summary_counts(tmp_path, data):
    root, gt = data
    code, out = _run("init", tmp_path / "p", "--pool", gt, "--labels", root / "initial.json")
    assert code == 0, out
    assert "10 images, 3 labelled, 0 test, 7 unlabelled" in " ".join(out.split())
    assert "imported" in out


def test_init_from_images_lists_corrupt_files(tmp_path, data):
    root, _ = data
    folder = tmp_path / "photos"
    shutil.copytree(root / "images", folder / "a")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("hello")
    code, out = _run("init", tmp_path / "p", "--images", folder)
    assert code == 2 and "--skeleton is required" in out
    assert not (tmp_path / "p").exists()
    code, out = _run("init", tmp_path / "p", "--images", folder, "--skeleton", "lsp14")
    assert code == 0, out
    flat = " ".join(out.split())
    assert "10 images" in flat and "2 file(s) skipped" in flat
    assert "broken.png" in flat and "notes.txt" in flat
    with Project.open(tmp_path / "p") as p:
        assert p.image_ids() == list(range(1, 11))
        assert p.image_path(1).name == "000001.png" and p.image(1).width == 64


def test_init_bad_labels_leaves_no_project(tmp_path, data):
    root, gt = data
    bad = json.loads((root / "initial.json").read_text())
    bad["images"][0]["file_name"] = "images/nowhere.png"
    bad_path = root / "bad_initial.json"
    bad_path.write_text(json.dumps(bad))
    code, out = _run("init", tmp_path / "p", "--pool", gt, "--labels", bad_path)
    assert code == 2 and "bad_initial.json" in out
    assert not (tmp_path / "p").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.init")]


def test_round_export_label_status(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json")
    with Project.open(proj) as p:
        r = p.open_round("random", {"seed": 0}, [(4, 0.9), (5, 0.5), (6, None)])
    code, out = _run("export", proj, "--round", r, "--format", "coco", "--out", tmp_path / "ex" / "r1.json")
    assert code == 0, out
    exported = load_coco(tmp_path / "ex" / "r1.json")
    assert exported.image_ids == [4, 5, 6]
    ls = tmp_path / "ex" / "r1_ls.json"
    code, out = _run("export", proj, "--round", r, "--format", "label-studio", "--out", ls)
    assert code == 0, out
    assert len(json.loads(ls.read_text())) == 3
    assert (tmp_path / "ex" / "r1_ls.config.xml").read_text().startswith("<View>")
    code, out = _run("export", proj, "--round", 9, "--out", tmp_path / "x.json")
    assert code == 2 and "no round 9" in out

    # bad ground truth: an image of the round is missing -> exit 2, store unchanged
    raw = json.loads(gt.read_text())
    raw["images"] = [i for i in raw["images"] if i["id"] != 5]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] != 5]
    bad = root / "gt_missing.json"
    bad.write_text(json.dumps(raw))
    with Project.open(proj) as p:
        before = p.dump()
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", bad)
    assert code == 2 and "image id 5" in out and "not in the ground truth" in out
    with Project.open(proj) as p:
        assert p.dump() == before

    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)
    assert code == 0, out
    assert "3/3 images labelled; round is labelled" in " ".join(out.split())
    with Project.open(proj) as p:
        assert p.round(r).state == "labelled"
        after = p.dump()
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)
    assert code == 0 and "nothing new added" in out
    with Project.open(proj) as p:
        assert p.dump() == after
    code, out = _run("status", proj)
    assert code == 0, out
    flat = " ".join(out.split())
    assert "random" in flat and "3/3" in flat and "labelled" in flat
    assert "total label cost" in flat and "total label cost: 0 s" not in flat
    assert "6 labelled" in flat


def test_label_file_oracle_is_idempotent(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data)
    with Project.open(proj) as p:
        p.open_round("random", {}, [(1, None), (2, None), (3, None)])
    code, out = _run("label", proj, "--oracle", "file", "--labels", root / "initial.json")
    assert code == 0, out
    assert "round is labelled" in " ".join(out.split())
    code, out = _run("label", proj, "--oracle", "file", "--labels", root / "initial.json")
    assert code == 0 and "nothing new added" in out
    code, out = _run("label", proj, "--oracle", "file")
    assert code == 2 and "--labels" in out


def test_label_file_oracle_refuses_images_outside_the_round(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data)
    with Project.open(proj) as p:
        p.open_round("random", {}, [(1, None), (2, None)])
        before = p.dump()
    code, out = _run("label", proj, "--oracle", "file", "--labels", root / "initial.json")  # images 1, 2, 3
    assert code == 2 and "image id 3: not in round 1" in out and "nothing stored" in out
    with Project.open(proj) as p:
        assert p.dump() == before


def test_select_project_opens_one_round_then_label_completes_it(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json")
    code, out = _run("select", proj, "--budget", 3, "--strategy", "random", "--extractor", "mobilenet_v2")
    assert code == 0, out
    assert "opened round 1" in out
    with Project.open(proj) as p:
        rnd = p.current_round()
        chosen = [i for i, _, _ in rnd.items]
        assert rnd.id == 1 and len(chosen) == 3 and rnd.strategy == "random"
        assert not set(chosen) & set(p.labelled_ids())
        assert p.counts()["queued"] == 3
        before = p.dump()
    # a second select (an accident, or a re-run after a crash) does not open another round
    code, out = _run("select", proj, "--budget", 2, "--strategy", "random")
    assert code == 2 and "round 1" in out and "still open" in out
    with Project.open(proj) as p:
        assert p.dump() == before
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)
    assert code == 0, out
    with Project.open(proj) as p:
        assert p.round(1).state == "labelled" and p.counts()["labelled"] == 6


def test_select_needs_exactly_one_of_project_and_pool(tmp_path, data):
    _, gt = data
    code, out = _run("select", "--budget", 1)
    assert code == 2 and "either a PROJECT folder or --pool" in out
    code, out = _run("select", _init(tmp_path, data), "--pool", gt, "--budget", 1)
    assert code == 2 and "either a PROJECT folder or --pool" in out


TINY = (
    "--input-size",
    64,
    "--width",
    0.25,
    "--head-channels",
    32,
    "--workers",
    0,
    "--no-pretrained",
    "--device",
    "cpu",
)


def test_train_project_records_models_and_continues_after_a_round(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json")
    code, out = _run("train", proj, "--epochs", 1, *TINY)
    assert code == 0, out
    assert "recorded model 1" in out
    code, out = _run("train", proj, "--epochs", 1, *TINY)  # a re-run: nothing new
    assert code == 0 and "already complete" in out and "already recorded" in out
    assert _run("select", proj, "--budget", 2, "--strategy", "random")[0] == 0
    assert _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)[0] == 0
    code, out = _run("train", proj, "--epochs", 1, *TINY)  # more labels: a new session from the last weights
    assert code == 0, out
    assert "session 2" in out and "recorded model 2" in out
    with Project.open(proj) as p:
        models = p.models()
        assert [m.train_size for m in models] == [3, 5]
        assert all((proj / m.checkpoint).is_file() for m in models)
        assert p.round(1).state == "trained" and p.round(1).model_id == models[-1].id


def test_train_project_names_missing_image_files_before_training(tmp_path, data):
    root, _ = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json")
    moved = tmp_path / "elsewhere" / "deeper" / "proj"  # stored relative paths no longer reach the images
    shutil.copytree(proj, moved)
    before = (moved / "project.db").read_bytes()
    code, out = _run("train", moved, "--epochs", 1, *TINY)
    assert code == 2 and "3 labelled image file(s) are missing" in out and "Traceback" not in out
    assert (moved / "project.db").read_bytes() == before and not (moved / "checkpoints" / "run").exists()


def test_train_project_without_labels_is_a_clear_error(tmp_path, data):
    proj = _init(tmp_path, data)
    code, out = _run("train", proj, "--epochs", 1, *TINY)
    assert code == 2 and "no labelled images" in out


def test_evaluate_project_records_metrics_and_closes_the_round(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json", "--test", root / "test.json")
    assert _run("select", proj, "--budget", 2, "--strategy", "random")[0] == 0
    assert _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)[0] == 0
    assert _run("train", proj, "--epochs", 1, *TINY)[0] == 0
    code, out = _run("evaluate", proj, "--tta", "clean", "--device", "cpu")
    assert code == 0, out
    assert "round 1 evaluated and closed" in out
    with Project.open(proj) as p:
        model = p.latest_model()
        assert model.metrics["clean"]["images"] == 2 and "sha1" not in model.metrics and len(model.sha1) == 40
        assert p.round(1).state == "closed"
    assert (proj / "exports" / f"metrics_model_{model.id}.json").is_file()
    code, out = _run("status", proj)
    assert code == 0 and "closed" in out
    code, out = _run("select", proj, "--budget", 1, "--strategy", "random")  # the next round can open now
    assert code == 0 and "opened round 2" in out


def test_evaluate_closes_a_round_left_evaluated_by_a_crash(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json", "--test", root / "test.json")
    assert _run("select", proj, "--budget", 2, "--strategy", "random")[0] == 0
    assert _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)[0] == 0
    assert _run("train", proj, "--epochs", 1, *TINY)[0] == 0
    with Project.open(proj) as p:  # what a crash between storing the metrics and closing leaves
        p.record_evaluation(p.latest_model().id, {"clean": {"count_acc": 0.0}})
        assert p.round(1).state == "evaluated"
    code, out = _run("status", proj)
    assert code == 0 and f"activepose evaluate {proj}" in out  # the next step it names
    code, out = _run("evaluate", proj, "--tta", "clean", "--device", "cpu")
    assert code == 0 and "round 1 evaluated and closed" in out, out
    with Project.open(proj) as p:
        assert p.round(1).state == "closed" and p.latest_model().metrics["clean"]["images"] == 2


def test_evaluate_project_without_test_set_or_model(tmp_path, data):
    proj = _init(tmp_path, data)
    code, out = _run("evaluate", proj)
    assert code == 2 and "no model yet" in out


def test_label_file_oracle_imports_a_cvat_coco_keypoints_export(tmp_path, data):
    """CVAT's "COCO Keypoints 1.0" export of a round: its own image ids (1..n), bare file names, extra fields."""
    root, gt = data
    proj = _init(tmp_path, data)
    with Project.open(proj) as p:
        p.open_round("random", {}, [(5, None), (6, None), (7, None)])
    raw = json.loads(gt.read_text())
    cat = {**raw["categories"][0], "supercategory": "", "id": 1}
    images, anns = [], []
    for new_id, old_id in enumerate((7, 5, 6), start=1):  # CVAT numbers images in its own task order
        im = next(i for i in raw["images"] if i["id"] == old_id)
        images.append({"id": new_id, "width": im["width"], "height": im["height"],
                       "file_name": im["file_name"].rsplit("/", 1)[-1], "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})  # fmt: skip
        for a in (a for a in raw["annotations"] if a["image_id"] == old_id):
            anns.append({**a, "id": len(anns) + 1, "image_id": new_id, "category_id": 1, "segmentation": [],
                         "iscrowd": 0, "attributes": {"occluded": False, "keyframe": False}})  # fmt: skip
    export = {"licenses": [{"name": "", "id": 0, "url": ""}],
              "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
              "categories": [cat], "images": images, "annotations": anns}  # fmt: skip
    cvat = tmp_path / "cvat_export" / "annotations" / "person_keypoints_default.json"
    cvat.parent.mkdir(parents=True)
    cvat.write_text(json.dumps(export))
    code, out = _run("label", proj, "--oracle", "file", "--labels", cvat)
    assert code == 0, out
    assert "round is labelled" in " ".join(out.split())
    truth = load_coco(gt, check_images=False)
    with Project.open(proj) as p:
        assert p.round(1).state == "labelled"
        for image_id in (5, 6, 7):  # each person landed on the right project image
            got = p.keypoints_of(image_id)
            want = truth.frame(image_id).keypoints
            assert got.shape == want.shape and abs(got - want).max() < 1e-3


def test_skipped_images_unblock_the_round_and_are_never_selected(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data)
    with Project.open(proj) as p:
        p.open_round("random", {}, [(5, None), (6, None), (7, None)])
        before = p.dump()
    code, out = _run("label", proj, "--skip", 5, "--skip", 9)  # 9 is not in the round: nothing changes
    assert code == 2 and "image id 9: not in round 1" in out
    with Project.open(proj) as p:
        assert p.dump() == before
    code, out = _run("label", proj, "--skip", 5)
    assert code == 0 and "skipped 1 image(s)" in out
    flat = " ".join(out.split())
    assert "0/3 images labelled, 1 skipped; round is open" in flat
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", gt)  # labels 6 and 7 only
    assert code == 0, out
    assert "2/3 images labelled, 1 skipped; round is labelled" in " ".join(out.split())
    with Project.open(proj) as p:
        assert p.image(5).state == "skipped" and p.labels_of(5) == []
        assert 5 not in p.unlabelled_ids() and p.round(1).state == "labelled"
    code, out = _run("status", proj)
    assert "2/3 (1 skipped)" in out and "1 skipped" in out
    code, out = _run("label", proj, "--skip", 6)  # the round is no longer open
    assert code == 2 and "only an open round" in out


def test_export_pre_annotates_with_the_newest_model_by_default(tmp_path, data):
    root, gt = data
    proj = _init(tmp_path, data, "--labels", root / "initial.json")
    with Project.open(proj) as p:
        p.open_round("random", {}, [(5, None), (6, None)])
    ls = tmp_path / "ex" / "r1.json"
    code, out = _run("export", proj, "--round", 1, "--format", "label-studio", "--out", ls)
    assert code == 0 and all("predictions" not in t for t in json.loads(ls.read_text()))  # no model yet
    assert _run("train", proj, "--epochs", 1, *TINY)[0] == 0
    code, out = _run("export", proj, "--round", 1, "--format", "label-studio", "--out", ls, "--device", "cpu")
    assert code == 0 and "pre-annotating with the project's newest model 1" in out
    tasks = json.loads(ls.read_text())
    assert [t["data"]["activepose_image_id"] for t in tasks] == [5, 6]
    assert all(t["predictions"][0]["model_version"] == "model_1.pt" for t in tasks)
    code, out = _run(
        "export", proj, "--round", 1, "--format", "label-studio", "--out", ls, "--no-predictions"
    )
    assert code == 0 and all("predictions" not in t for t in json.loads(ls.read_text()))


def test_footage_pool_select_spreads_over_videos_and_status_counts_frames_per_video(tmp_path, data):
    """A pool whose images carry COCO `video` / `frame`: init keeps them, `select --spread-videos` takes one
    frame per video before a second, `status` shows videos per round and labelled frames per video."""
    root, gt = data
    raw = json.loads(gt.read_text())
    for im in raw["images"]:
        im["video"], im["frame"] = f"cam{im['id'] % 3}", im["id"]
    pool = root / "footage.json"
    pool.write_text(json.dumps(raw))
    proj = tmp_path / "proj"
    code, out = _run("init", proj, "--pool", pool)
    assert code == 0, out
    with Project.open(proj) as p:
        assert p.frames_per_video() == {"cam1": 4, "cam0": 3, "cam2": 3}
    code, out = _run("select", proj, "--budget", 3, "--strategy", "random", "--spread-videos")
    assert code == 0, out
    with Project.open(proj) as p:
        chosen = [i for i, _, _ in p.round(1).items]
        assert sorted(p.image(i).video for i in chosen) == ["cam0", "cam1", "cam2"]
    code, out = _run("label", proj, "--oracle", "simulated", "--ground-truth", pool)
    assert code == 0, out
    code, out = _run("status", proj)
    assert code == 0, out
    assert "videos" in out and "videos: 3 (10 frames); labelled frames in 3 of them" in out
    assert "(per video: min 1, median 1, max 1)" in out
    assert "selection per round" in out  # the round's candidates (random: no filter, no coverage)
