"""The labelling page's HTTP API (FastAPI test client): every endpoint, bad bodies, token, leases, conflicts."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from activepose.cli import app as cli
from activepose.config import AnnotateOptions
from activepose.errors import ConfigError
from activepose.project.store import Project
from activepose.web.labeller import WebLabeller
from activepose.web.server import MAX_BODY, check_host, create_app, serve
from activepose.workflow.desk import LabellingDesk, _people, sides

from .conftest import footage_project, synthetic_project_data

TINY = ("--input-size", 64, "--width", 0.25, "--head-channels", 32, "--workers", 0, "--no-pretrained",
        "--device", "cpu")  # fmt: skip
ROUND = [5, 6, 7, 8]
K = 14
JSON = {"content-type": "application/json"}  # every state change says JSON (a body or not)


def _run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project with initial labels, one trained model and round 1 open (images 5-8); copied per test."""
    root, gt = synthetic_project_data(tmp_path_factory.mktemp("data"), num_images=10, n_initial=3, n_test=2)
    proj = root / "proj"
    _run("init", proj, "--pool", gt, "--labels", root / "initial.json")
    _run("train", proj, "--epochs", 1, *TINY)
    with Project.open(proj) as p:
        p.open_round("hybrid", {}, [(i, 0.1 * i) for i in ROUND])
    return proj


@pytest.fixture
def proj(trained, tmp_path):
    dst = tmp_path / "proj"
    shutil.copytree(trained, dst, ignore=shutil.ignore_patterns("exports"))
    img = trained.parent / "images"  # the pool's images, referenced relative to the project
    if img.exists() and not (tmp_path / "images").exists():
        (tmp_path / "images").symlink_to(img)
    return dst


def client_for(proj, token=None, **opts) -> tuple[TestClient, LabellingDesk]:
    desk = LabellingDesk(proj, AnnotateOptions(device="cpu", **opts))
    return TestClient(create_app(desk, token), base_url="http://127.0.0.1:8000"), desk


def person(x0=10.0, y0=10.0, v=2):
    kps = [[x0 + j, y0 + j, v] for j in range(K)]
    return kps


def test_round_lists_the_round_in_rank_order_with_skeleton_and_progress(proj):
    c, desk = client_for(proj)
    r = c.get("/api/round", headers={"X-Annotator": "ann"}).json()
    assert r["round"] == 1 and r["state"] == "open" and not r["complete"]
    assert [i["id"] for i in r["images"]] == ROUND and all(i["state"] == "queued" for i in r["images"])
    assert r["progress"] == {"total": 4, "labelled": 0, "skipped": 0, "todo": 4}
    assert len(r["skeleton"]["keypoints"]) == K
    assert r["skeleton"]["limbs"] == [list(limb) for limb in desk.skeleton.limbs]
    assert r["skeleton"]["sides"].count("left") == r["skeleton"]["sides"].count("right") == 6
    assert r["model"]["file"] == "model_1.pt"
    assert (proj / "exports" / "round_1" / "preannotations.json").is_file()


def test_image_takes_a_lease_and_carries_predictions_with_per_keypoint_confidence(proj, monkeypatch):
    from activepose.workflow import models

    strong = np.zeros((K, 3))
    strong[:6] = [[10 + j, 20 + j, 0.1 * (j + 1)] for j in range(6)]  # 6 parts, each with its own confidence
    weak = np.zeros((K, 3))
    weak[:2] = [30, 30, 0.2]  # 2 parts: below the evaluation thresholds, dropped beside a strong person
    calls = []

    def fake_predict(loaded, files, **kwargs):
        calls.append([i for i, _ in files])
        return {i: (np.stack([weak, strong]), np.array([0.2, 0.7])) for i, _ in files}, []

    monkeypatch.setattr(models, "predict_files", fake_predict)
    c, desk = client_for(proj)
    assert calls == [ROUND]  # every image of the round predicted once, when the desk opens
    r = c.get("/api/images/5", headers={"X-Annotator": "ann"}).json()
    assert r["id"] == 5 and r["revision"] == 0 and r["state"] == "queued" and r["labels"] == []
    assert r["lease"]["annotator"] == "ann" and r["lease"]["mine"] and r["lease"]["expires_in"] > 500
    assert [p["score"] for p in r["predictions"]] == [0.7]
    np.testing.assert_allclose(r["predictions"][0]["keypoints"], strong)
    client_for(proj)  # a second server on the same round and model reads the cached pre-annotations
    assert calls == [ROUND]
    other = c.get("/api/images/5", headers={"X-Annotator": "bob"}).json()
    assert other["lease"]["annotator"] == "ann" and not other["lease"]["mine"]
    listed = {
        i["id"]: i["lease"] for i in c.get("/api/round", headers={"X-Annotator": "bob"}).json()["images"]
    }
    assert listed[5]["annotator"] == "ann" and listed[6] is None


def test_unknown_and_outside_ids_are_404_and_paths_never_leave_the_package(proj):
    c, _ = client_for(proj)
    for url in ("/api/images/999", "/api/images/1", "/api/images/1/file", "/api/images/999/file"):
        res = c.get(url)
        assert res.status_code == 404 and "not in round 1" in res.json()["detail"], url
    assert c.get("/api/images/abc").status_code == 422
    assert c.post("/api/images/999/labels", json={"revision": 0, "people": []}).status_code == 404
    db = (proj / "project.db").read_bytes()[:16]
    for url in ("/static/../project.db", "/static/..%2F..%2Fproject.db", "/api/images/..%2Fproject.db/file",
                "/static/%2e%2e/%2e%2e/store.py", "/../../project.db"):  # fmt: skip
        res = c.get(url)
        assert res.status_code in (404, 422) and not res.content.startswith(db), url


def test_image_file_serves_the_image_bytes_by_id(proj):
    c, desk = client_for(proj)
    res = c.get("/api/images/6/file")
    assert res.status_code == 200 and res.content == desk.image_file(6).read_bytes()
    assert res.headers["content-type"].startswith("image/")


def test_page_and_assets_are_local_with_a_strict_content_security_policy(proj):
    c, _ = client_for(proj)
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for name in ("app.js", "app.css"):
        res = c.get(f"/static/{name}")
        assert res.status_code == 200 and "https://" not in res.text and "http://" not in res.text


def test_save_stores_people_with_annotator_seconds_and_clicks_in_one_go(proj):
    c, desk = client_for(proj)
    h = {"X-Annotator": "ann"}
    rev = c.get("/api/images/5", headers=h).json()["revision"]
    occluded = person(20, 30)
    occluded[3][2] = 1
    occluded[4] = [0, 0, 0]
    body = {"revision": rev, "people": [
        {"keypoints": person(), "seconds": 4.5, "clicks": 2, "origin": "predicted"},
        {"keypoints": occluded, "seconds": 9.0, "clicks": 13, "origin": "manual"}]}  # fmt: skip
    res = c.post("/api/images/5/labels", json=body, headers=h)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["state"] == "labelled" and out["revision"] == rev + 1 and out["new_labels"] == 2
    assert out["progress"]["labelled"] == 1 and not out["complete"]
    with Project.open(proj) as p:
        rows = sorted(p.labels_of(5), key=lambda r: r.person)
        assert [(r.annotator, r.person_seconds, r.clicks, r.source) for r in rows] == [
            ("ann", 4.5, 2, "web:ann"), ("ann", 9.0, 13, "web:ann")]  # fmt: skip
        assert rows[0].seconds == 13.5  # the image's time: the sum over its people
        np.testing.assert_allclose(rows[1].keypoints[3], [23, 33, 1])
        np.testing.assert_allclose(rows[1].keypoints[4], [0, 0, 0])
        assert p.leases() == {}  # saving gives the lease back
    again = c.get("/api/images/5", headers=h).json()
    assert len(again["labels"]) == 2 and again["labels"][1]["clicks"] == 13


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"revision": 0, "people": [{"keypoints": person()[:13]}]}, "13 keypoints"),
        ({"revision": 0, "people": [{"keypoints": person(x0=500)}]}, "outside the"),
        ({"revision": 0, "people": [{"keypoints": [[1, 1, 3]] * K}]}, "visibility"),
        ({"revision": 0, "people": [{"keypoints": [[0, 0, 0]] * K}]}, "no labelled keypoint"),
        ({"revision": 0, "people": [{"keypoints": person(), "clicks": -1}]}, "clicks"),
        ({"revision": 0, "people": [{"keypoints": person(), "origin": "robot"}]}, "origin"),
        ({"revision": 0, "people": [{"keypoints": person(), "extra": 1}]}, "extra"),
        ({"revision": "x", "people": []}, "revision"),
        ({"people": []}, "revision"),
        ({"revision": 0, "people": [{"keypoints": [["a", 1, 2]] * K}]}, "keypoints"),
    ],
)
def test_invalid_bodies_are_422_naming_the_problem_and_store_nothing(proj, body, needle):
    c, _ = client_for(proj)
    res = c.post("/api/images/5/labels", json=body)
    assert res.status_code == 422 and needle in res.json()["detail"], res.text
    with Project.open(proj) as p:
        assert p.labels_of(5) == [] and p.image(5).state == "queued" and p.image(5).revision == 0


def test_non_json_nan_and_oversized_bodies_are_refused(proj):
    c, _ = client_for(proj)
    h = {"content-type": "application/json"}
    assert c.post("/api/images/5/labels", content=b"{not json", headers=h).status_code == 422
    nan = json.dumps({"revision": 0, "people": [{"keypoints": [[float("nan"), 1, 2]] * K}]})
    assert c.post("/api/images/5/labels", content=nan.encode(), headers=h).status_code == 422
    big = b'{"revision": 0, "people": [], "pad": "' + b"x" * (MAX_BODY + 10) + b'"}'
    res = c.post("/api/images/5/labels", content=big, headers=h)
    assert res.status_code == 413 and "larger than" in res.json()["detail"]

    def chunks():  # no content-length: the limit still holds
        yield big[: MAX_BODY // 2]
        yield big[MAX_BODY // 2 :]

    assert c.post("/api/images/5/labels", content=chunks(), headers=h).status_code == 413
    with Project.open(proj) as p:
        assert p.image(5).state == "queued"


def test_bad_annotator_names_are_refused(proj):
    c, _ = client_for(proj)
    res = c.get("/api/images/5", headers={"X-Annotator": "<script>alert(1)</script>"})
    assert res.status_code == 422 and "annotator name" in res.json()["detail"]


def test_a_leased_image_cannot_be_saved_by_another_annotator_until_the_lease_ends(proj):
    c, desk = client_for(proj, lease_seconds=0.5)
    a, b = {"X-Annotator": "ann"}, {"X-Annotator": "bob"}
    c.get("/api/images/6", headers=a)
    res = c.post("/api/images/6/labels", json={"revision": 0, "people": []}, headers=b)
    assert res.status_code == 423 and res.json()["lease"]["annotator"] == "ann"
    assert c.post("/api/images/6/lease", headers={**b, **JSON}).status_code == 423
    assert c.post("/api/images/6/skip", json={"revision": 0}, headers=b).status_code == 423
    assert c.post("/api/images/6/lease", headers={**a, **JSON}).json()["lease"]["mine"]
    time.sleep(0.6)  # the lease expires: bob may take over
    assert c.get("/api/images/6", headers=b).json()["lease"]["annotator"] == "bob"
    assert c.post("/api/images/6/labels", json={"revision": 0, "people": []}, headers=b).status_code == 200
    # release: a no-op for someone who holds nothing, frees the image for the one who does
    c.get("/api/images/7", headers=a)
    assert c.delete("/api/images/7/lease", headers={**b, **JSON}).json() == {"lease": None}
    assert c.get("/api/images/7", headers=b).json()["lease"]["annotator"] == "ann"
    c.delete("/api/images/7/lease", headers={**a, **JSON})
    assert c.get("/api/images/7", headers=b).json()["lease"]["annotator"] == "bob"


def test_a_second_save_of_the_same_image_is_a_conflict_resolved_by_force(proj):
    c, _ = client_for(proj, lease_seconds=0.2)
    a, b = {"X-Annotator": "ann"}, {"X-Annotator": "bob"}
    assert c.get("/api/images/7", headers=a).json()["revision"] == 0
    time.sleep(0.3)  # ann's lease lapses while she still edits; bob opens, labels and saves
    assert c.get("/api/images/7", headers=b).json()["revision"] == 0
    assert c.post("/api/images/7/labels", json={"revision": 0, "people": [{"keypoints": person()}]},
                  headers=b).status_code == 200  # fmt: skip
    mine = {"revision": 0, "people": [{"keypoints": person(40, 40)}]}
    res = c.post("/api/images/7/labels", json=mine, headers=a)
    assert res.status_code == 409
    conflict = res.json()["conflict"]
    assert conflict["revision"] == 1 and conflict["annotator"] == "bob"
    np.testing.assert_allclose(conflict["labels"][0], person())
    with Project.open(proj) as p:  # bob's labels are untouched
        np.testing.assert_allclose(p.keypoints_of(7)[0], person())
    res = c.post("/api/images/7/labels", json={**mine, "force": True}, headers=a)
    assert res.status_code == 200 and res.json()["revision"] == 2
    with Project.open(proj) as p:  # ann's version is current, bob's kept as history
        np.testing.assert_allclose(p.keypoints_of(7)[0], person(40, 40))
        assert [r.annotator for r in p.labels_of(7, history=True)] == ["bob", "ann"]


def test_skip_no_person_and_the_last_save_complete_the_round(proj):
    c, desk = client_for(proj)
    h = {"X-Annotator": "ann"}
    assert c.post("/api/images/5/skip", json={"revision": 0}, headers=h).json()["state"] == "skipped"
    res = c.post("/api/images/6/labels", json={"revision": 0, "people": []}, headers=h).json()
    assert res["state"] == "labelled" and res["new_labels"] == 0  # labelled with nobody in it
    c.post("/api/images/7/labels", json={"revision": 0, "people": [{"keypoints": person()}]}, headers=h)
    assert c.post("/api/images/7/skip", json={"revision": 1}, headers=h).status_code == 422  # labelled
    last = c.post(
        "/api/images/8/labels", json={"revision": 0, "people": [{"keypoints": person()}]}, headers=h
    )
    out = last.json()
    assert out["complete"] and out["progress"] == {"total": 4, "labelled": 3, "skipped": 1, "todo": 0}
    assert "activepose train" in out["next"]
    r = c.get("/api/round").json()
    assert r["complete"] and r["state"] == "labelled" and r["read_only"]
    late = c.post("/api/images/8/labels", json={"revision": 1, "people": []}, headers=h)
    assert late.status_code == 409 and "no longer open" in late.json()["detail"]
    with Project.open(proj) as p:
        assert p.round(1).state == "labelled" and p.image(5).state == "skipped"


def test_token_is_required_on_every_request_when_set(proj):
    c, _ = client_for(proj, token="s3cret")
    for url in ("/", "/api/round", "/api/images/5", "/api/images/5/file", "/static/app.js"):
        assert c.get(url).status_code == 401, url
        assert c.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
    assert c.post("/api/images/5/labels", json={"revision": 0, "people": []}).status_code == 401
    assert c.get("/api/round", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/round", headers={"X-Activepose-Token": "s3cret"}).status_code == 200
    assert c.get("/?token=nope", follow_redirects=False).status_code == 401
    res = c.get("/?token=s3cret", follow_redirects=False)  # the printed link: token -> cookie
    assert res.status_code == 303 and res.headers["location"] == "/"
    assert "httponly" in res.headers["set-cookie"].lower()
    assert c.get("/api/round").status_code == 200  # the client now carries the cookie
    with Project.open(proj) as p:
        assert p.image(5).state == "queued"


def test_off_loopback_needs_a_token():
    check_host("127.0.0.1", None)
    check_host("::1", None)
    check_host("0.0.0.0", "t" * 16)
    check_host("127.0.0.1", "a")  # on loopback any token is the user's choice
    with pytest.raises(ConfigError, match="--token"):
        check_host("0.0.0.0", None)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_host("0.0.0.0", "a")  # issue 17: `--token a` was accepted off loopback
    with pytest.raises(ConfigError, match="letters, digits"):
        check_host("127.0.0.1", "a b\r\nSet-Cookie: x")
    for port in (0, -1, 70000, 65536):
        with pytest.raises(ConfigError, match="1 to 65535"):
            check_host("127.0.0.1", None, port)


def test_people_offered_pass_the_evaluation_thresholds_or_all_when_none_does():
    k = np.zeros((3, K, 3))
    k[0, :6] = [5, 5, 0.9]  # strong: 6 parts, score 0.8
    k[1, :2] = [7, 7, 0.2]  # weak: 2 parts
    k[2, :3] = [9, 9, 0.2]
    out = _people(k, np.array([0.8, 0.1, 0.15]), min_parts=4, min_score=0.3)
    assert len(out) == 1 and out[0]["score"] == 0.8
    out = _people(k[1:], np.array([0.1, 0.15]), min_parts=4, min_score=0.3)
    assert [p["score"] for p in out] == [0.15, 0.1]  # weak model: still something to correct
    assert out[0]["keypoints"][3] == [0.0, 0.0, 0.0] and out[0]["keypoints"][0] == [9.0, 9.0, 0.2]
    assert sides(["left_knee", "right_knee", "neck", "l_eye", "r_eye"]) == [
        "left", "right", "center", "left", "right"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_oracle_serves_until_people_complete_the_round(proj):
    """`run --oracle web`'s labeller: the page is served until the round is labelled, then it returns."""
    port = _free_port()
    urls = []

    def annotate_when_ready():
        for _ in range(200):
            if urls:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-Annotator": "ann"}) as h:
            for image_id in ROUND:
                rev = h.get(f"/api/images/{image_id}").json()["revision"]
                h.post(
                    f"/api/images/{image_id}/labels",
                    json={"revision": rev, "people": [{"keypoints": person()}]},
                )

    worker = threading.Thread(target=annotate_when_ready, daemon=True)
    worker.start()
    with Project.open(proj) as p:
        t0 = time.monotonic()
        n, message = WebLabeller(port=port, device="cpu", on_ready=urls.append).label(p, 1)
        assert n == 4 and p.round(1).state == "labelled" and "labelling page" in message
        assert time.monotonic() - t0 < 30
    assert urls == [f"http://127.0.0.1:{port}/"]
    worker.join(5)


def test_serve_refuses_a_port_in_use(proj):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match="in use"):
            serve(proj, AnnotateOptions(device="cpu"), port=port)


def test_cli_refuses_what_cannot_be_served(trained, tmp_path):
    res = CliRunner().invoke(cli, ["annotate", str(trained), "--host", "0.0.0.0", "--device", "cpu"])
    assert res.exit_code == 2 and "--token" in res.output
    res = CliRunner().invoke(cli, ["annotate", str(trained), "--round", "7"])
    assert res.exit_code == 2 and "no round 7" in res.output
    res = CliRunner().invoke(cli, ["run", str(trained), "--rounds", "1", "--budget", "1", "--oracle", "web",
                                   "--host", "10.1.2.3", "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 2 and "--token" in res.output
    empty = tmp_path / "empty"
    shutil.copytree(trained, empty)
    with Project.open(empty) as p:
        p.skip_images(1, ROUND, complete_round=True)
    res = CliRunner().invoke(cli, ["annotate", str(empty)])
    assert res.exit_code == 2 and "no open round to label (round 1 is labelled)" in res.output


def test_status_lists_annotators_with_their_cost_per_person(proj):
    c, _ = client_for(proj)
    h = {"X-Annotator": "ann"}
    body = {"revision": 0, "people": [{"keypoints": person(), "seconds": 6.0, "clicks": 5}]}
    assert c.post("/api/images/5/labels", json=body, headers=h).status_code == 200
    out = _run("status", proj)
    assert "annotators (current labels)" in out
    row = next(line for line in out.splitlines() if "│ ann" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["ann", "1", "1", "6.0", "5"]


def test_footage_frames_show_video_frame_time_and_offer_the_nearest_labelled_frame(tmp_path):
    folder, gt = footage_project(tmp_path)
    client, desk = client_for(folder)
    try:
        three = client.get("/api/images/3", headers={"x-annotator": "ann"}).json()
        assert (three["video"], three["frame"], three["time"]) == ("a", 20, pytest.approx(0.8))
        nb = three["neighbour"]
        assert (nb["id"], nb["frame"]) == (
            2,
            10,
        )  # frame 30 is not labelled, frame 10 is the nearest labelled
        want = gt.frame(2).keypoints.copy()
        want[want[..., 2] <= 0] = 0
        np.testing.assert_allclose(np.asarray(nb["people"]), want, atol=1e-6)  # same size: not rescaled
        assert client.get("/api/images/1").json()["neighbour"]["id"] == 2
        five = client.get("/api/images/5").json()
        assert five["video"] == "b" and five["neighbour"] is None  # nothing labelled in video b
        # the copy, saved as it is ("copied"), stores those people
        body = {"revision": three["revision"], "people": [
            {"keypoints": p, "origin": "copied", "clicks": 0, "seconds": 1.0} for p in nb["people"]]}  # fmt: skip
        r = client.post("/api/images/3/labels", json=body, headers={**JSON, "x-annotator": "ann"})
        assert r.status_code == 200, r.text
        with Project.open(folder) as p:
            np.testing.assert_allclose(p.keypoints_of(3), want, atol=0.01)
        # frame 0 of video a: frame 10 is still the nearest labelled one, frame 20 now too (as far): the lower wins
        assert client.get("/api/images/1").json()["neighbour"]["frame"] == 10
    finally:
        desk.close()


def test_coco_export_and_import_carry_video_and_frame(tmp_path):
    from activepose.interop.coco import import_coco
    from activepose.interop.export import export_round

    folder, gt = footage_project(tmp_path)
    with Project.open(folder) as p:
        out = export_round(p, 1, tmp_path / "round1.json", fmt="coco", paths="absolute")
        raw = json.loads(out.read_text())
        assert {(im["id"], im["video"], im["frame"]) for im in raw["images"]} == {(1, "a", 0), (3, "a", 20),
                                                                                 (5, "b", 0)}  # fmt: skip
        # frames of different videos share file names: a file that gives video + frame (and other ids)
        # still lands on the right image
        for im in raw["images"]:
            im["id"] += 100
            im["file_name"] = "frame.jpg"
        kps = gt.frame(3).keypoints.tolist()
        raw["annotations"] = [{"id": 1, "image_id": 103, "category_id": 1,
                               "keypoints": [round(v, 2) if j % 3 < 2 else int(v) for k in kps[0] for j, v in enumerate(k)],
                               "num_keypoints": 1}]  # fmt: skip
        (tmp_path / "back.json").write_text(json.dumps(raw))
        import_coco(p, tmp_path / "back.json")
        assert p.image(3).state == "labelled" and p.image(1).state == "queued"
        np.testing.assert_allclose(p.keypoints_of(3)[0][:, :2], np.asarray(kps[0])[:, :2], atol=0.01)
