"""The command line end to end on tiny synthetic data: synth -> check -> train -> evaluate -> predict."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from activepose.cli import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    code, out = _run(
        "synth", "--out", str(root / "data"), "-n", "12", "--size", "64", "--max-people", "2", "--seed", "5"
    )
    assert code == 0, out
    data = root / "data" / "annotations.json"
    code, out = _run(
        "train", "--data", str(data), "--out", str(root / "run"), "--input-size", "64", "--epochs", "1",
        "--width", "0.25", "--head-channels", "32", "--workers", "0", "--no-pretrained", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, out
    assert "session 1: 1 epochs" in out
    return root, data


def test_check_accepts_valid_and_names_problems(trained, tmp_path):
    root, data = trained
    code, out = _run("check", str(data))
    assert code == 0 and "12 images" in out
    bad = json.loads(data.read_text())
    bad["annotations"][0]["keypoints"] = bad["annotations"][0]["keypoints"][:-3]
    (root / "data" / "bad.json").write_text(json.dumps(bad))
    code, out = _run("check", str(root / "data" / "bad.json"))
    assert code == 2
    assert "bad.json" in out and "keypoint count mismatch" in out


def test_train_again_reports_complete_session(trained):
    root, data = trained
    code, out = _run(
        "train", "--data", str(data), "--out", str(root / "run"), "--input-size", "64", "--epochs", "1",
        "--width", "0.25", "--head-channels", "32", "--workers", "0", "--no-pretrained", "--device", "cpu",
    )  # fmt: skip
    assert code == 0 and "already complete" in out


def test_evaluate_writes_table_and_strict_json(trained, tmp_path):
    root, data = trained
    out_json = tmp_path / "metrics.json"
    code, out = _run("evaluate", "--model", str(root / "run" / "best.pt"), "--data", str(data), "--out", str(out_json),
                     "--tta", "clean,zoom_out", "--device", "cpu")  # fmt: skip
    assert code == 0, out
    report = json.loads(out_json.read_text())
    assert "NaN" not in out_json.read_text()
    assert set(report) == {"clean", "zoom_out", "scale"}  # which input scale the evaluation used
    assert report["scale"]["policy"] == "auto" and report["scale"]["factor"] > 0
    assert "scale: auto" in out
    assert report["clean"]["images"] == 12
    assert 0.0 <= report["clean"]["count_acc"] <= 1.0
    assert "clean" in out and "zoom_out" in out


def test_evaluate_rejects_unknown_tta_and_missing_checkpoint(trained, tmp_path):
    root, data = trained
    code, out = _run(
        "evaluate", "--model", str(root / "run" / "best.pt"), "--data", str(data), "--tta", "sepia"
    )
    assert code == 2 and "unknown TTA" in out
    code, out = _run("evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(data))
    assert code == 2 and "nope.pt: checkpoint not found" in out


def test_predict_folder_writes_results_and_overlays(trained, tmp_path):
    root, _ = trained
    images = root / "data" / "images"
    (images / "broken.png").write_bytes(b"not a png")
    out_json = tmp_path / "pred.json"
    code, out = _run("predict", "--model", str(root / "run" / "best.pt"), "--images", str(images), "--out", str(out_json),
                     "--overlays", str(tmp_path / "vis"), "--device", "cpu")  # fmt: skip
    (images / "broken.png").unlink()
    assert code == 0, out
    results = json.loads(out_json.read_text())
    mapping = json.loads(out_json.with_suffix(".images.json").read_text())
    assert len(mapping) == 12
    assert all(len(r["keypoints"]) == 14 * 3 for r in results)
    assert len(list((tmp_path / "vis").glob("*.jpg"))) == 12
    assert "skipped" in out and "broken.png" in out


def test_epochs_zero_stores_untrained_model(trained, tmp_path):
    _, data = trained
    code, out = _run("train", "--data", str(data), "--out", str(tmp_path / "init"), "--input-size", "64", "--epochs", "0",
                     "--width", "0.25", "--head-channels", "32", "--workers", "0", "--no-pretrained", "--device", "cpu")  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "init" / "best.pt").exists()


def test_train_names_a_corrupt_image_before_training(trained, tmp_path):
    root, data = trained
    bad = json.loads(data.read_text())
    for img in bad["images"]:
        img["file_name"] = str(root / "data" / img["file_name"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    bad["images"][3]["file_name"] = str(tmp_path / "broken.png")
    (tmp_path / "ann.json").write_text(json.dumps(bad))
    code, out = _run(
        "train", "--data", str(tmp_path / "ann.json"), "--out", str(tmp_path / "run"), "--epochs", "1"
    )
    assert code == 2
    assert f"image id {bad['images'][3]['id']}" in out and "unreadable image" in out
    assert not (tmp_path / "run").exists()


def test_select_writes_ids_summary_and_montages(trained, tmp_path):
    root, data = trained
    out_json = tmp_path / "sel.json"
    code, out = _run("select", "--pool", str(data), "--budget", "3", "--strategy", "hybrid", "--model",
                     str(root / "run" / "best.pt"), "--extractor", "pose_backbone", "--out", str(out_json),
                     "--montage", str(tmp_path / "m"), "--device", "cpu")  # fmt: skip
    assert code == 0, out
    sel = json.loads(out_json.read_text())
    ids = [f["id"] for f in json.loads(data.read_text())["images"]]
    assert len(sel["ids"]) == 3 and set(sel["ids"]) <= set(ids)
    assert "uncertain" in out and "coverage" in out
    assert (tmp_path / "m" / "chosen.png").exists() and (tmp_path / "m" / "activations.png").exists()


def test_select_budget_too_large_and_missing_model(trained):
    root, data = trained
    code, out = _run("select", "--pool", str(data), "--budget", "13", "--strategy", "random")
    assert code == 2 and "budget 13 is larger than the 12 unlabelled images left" in out
    code, out = _run("select", "--pool", str(data), "--budget", "2", "--strategy", "uncertainty")
    assert code == 2 and "needs the pose model (--model)" in out


def test_subset_is_seeded_disjoint_and_relocatable(trained, tmp_path):
    from activepose.pose.coco import load_coco

    root, data = trained
    a, rest = tmp_path / "x" / "a.json", tmp_path / "y" / "rest.json"
    code, out = _run("subset", str(data), "--size", "5", "--seed", "2", "--out", str(a), "--rest", str(rest))
    assert code == 0, out
    full, part, others = (
        load_coco(data),
        load_coco(a),
        load_coco(rest),
    )  # check_images: names resolve elsewhere
    assert len(part) == 5 and len(others) == 7
    assert sorted(part.image_ids + others.image_ids) == sorted(full.image_ids)
    for f in part:  # ids and labels are kept
        assert (f.keypoints == full.frame(f.image_id).keypoints).all()
    again = tmp_path / "again.json"
    assert _run("subset", str(data), "--size", "5", "--seed", "2", "--out", str(again))[0] == 0
    assert load_coco(again).image_ids == part.image_ids  # same seed, same draw
    assert _run("subset", str(data), "--size", "5", "--seed", "3", "--out", str(again))[0] == 0
    assert load_coco(again).image_ids != part.image_ids
    code, out = _run("subset", str(data), "--size", "13", "--out", str(again))
    assert code == 2 and "between 1 and its 12 images" in out


def test_every_option_of_every_command_has_help_and_a_readable_metavar():
    import typer.main

    cmd = typer.main.get_command(app)
    assert {"init", "status", "select", "label", "export", "train", "evaluate", "run", "predict"} <= set(
        cmd.commands
    )
    missing = []
    for name, sub in cmd.commands.items():
        assert sub.help, name
        for p in sub.params:
            if not p.help:
                missing.append(f"{name} {p.name}: no help")
            elif "[" in p.help:  # rich would read "[...]" as markup and drop it from --help
                missing.append(f"{name} {p.name}: '[' in help")
            flag = getattr(p, "is_flag", False) or getattr(p, "is_bool_flag", False)
            if not flag and (p.metavar is None or p.metavar.startswith("<")):
                missing.append(f"{name} {p.name}: metavar {p.metavar!r}")
    assert missing == []
    out = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "(default: 0.0001, or the preset's / the run's own)" in out and "<bool>  Use ImageNet" not in out


def test_demo_is_the_recommended_strategy_vs_random_on_generated_footage(tmp_path):
    from activepose.commands.loop import DEMO_FRAMES_PER_VIDEO, DEMO_POOL
    from activepose.config import RECOMMENDED_STRATEGY
    from activepose.pose.coco import load_coco

    out = tmp_path / "demo"
    code, text = _run("demo", "--out", str(out), "--seeds", "1", "--rounds", "1", "--initial", "6", "--budget", "6",
                      "--epochs", "1", "--eval-max-images", "10", "--device", "cpu")  # fmt: skip
    assert code == 0, text
    # the generated pool is footage: whole videos of consecutive frames of one scene each
    pool = load_coco(out / "data" / "pool" / "pool.json")
    frames = [(f.video, f.frame) for f in pool.frames]
    assert len(frames) == DEMO_POOL and len({v for v, _ in frames}) == DEMO_POOL // DEMO_FRAMES_PER_VIDEO
    assert frames[:2] == [("video001", 0), ("video001", 1)]
    sim = out / "simulation"
    rows = list(csv.DictReader((sim / "results.csv").open()))
    assert {r["strategy"] for r in rows} == {RECOMMENDED_STRATEGY, "random", "static"} and {
        r["test_set"] for r in rows
    } == {"test"}
    assert sorted({int(r["labelled_images"]) for r in rows}) == [6, 12]
    # the compute control: the 6 initial labels, trained with the schedule of 12
    assert {(r["labelled_images"], r["schedule_images"]) for r in rows if r["strategy"] == "static"} == {
        ("6", "6"),
        ("6", "12"),
    }
    assert "gain from labels" in (sim / "report.html").read_text()
    assert "labelled images" in text and f"report: {sim / 'report.html'}" in text
    # printed: the verdict, and the recommended strategy's paired differences to random and to the control
    assert "verdict (test, clean PCK): " in text
    assert f"{RECOMMENDED_STRATEGY}, final round (12 labels): vs random " in text and "vs static " in text
    assert (sim / "report.html").stat().st_size > 10_000
    # random is the reference, not a strategy to compare with it
    code, text = _run("demo", "--out", str(tmp_path / "d2"), "--strategy", "random")
    assert code != 0 and "random is the demo's reference" in text and not (tmp_path / "d2").exists()
    code, text = _run("demo", "--out", str(tmp_path / "d3"), "--strategy", "nope")
    assert code != 0 and "unknown --strategy 'nope'" in text and not (tmp_path / "d3").exists()
