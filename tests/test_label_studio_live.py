"""The Label Studio round trip through a REAL Label Studio (1.23.2, `make label-studio` installs it into
.venv-ls): activepose export -> Label Studio project with our config, tasks with predictions and a Local
Files storage -> annotations through its API (a pre-annotated person dragged, a second person added and
grouped by the person choice, a task skipped, a task mostly accepted) -> Label Studio's JSON export ->
`activepose label --oracle file --format label-studio` -> compared with what was sent.

Uses LSPET images from ../shared/data/lspet when present, else synthetic ones. Skips when .venv-ls is absent.
Label Studio starts once per session (about 40 s on a fresh data folder: its database migrations)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.config import SyntheticConfig
from activepose.interop.export import export_round
from activepose.interop.label_studio import config_people, import_label_studio, label_studio_config
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.project.schema import StoreError
from activepose.project.store import Project

from .conftest import REPO, SHARED_DATA

LS_BIN = REPO / ".venv-ls" / "bin" / "label-studio"
TOKEN = "activepose-live-test-token"
USER, PASSWORD = "live-test@example.com", "live-test-password"
START_TIMEOUT = 150  # seconds


@dataclass
class LabelStudio:
    url: str
    root: Path  # its local-files document root
    seconds_to_start: float

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from None
        return payload if raw else json.loads(payload or b"null")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """(document root, COCO ground truth of 3 one-person images under it): LSPET when present."""
    lspet = SHARED_DATA / "lspet" / "pool.json"
    if lspet.is_file():
        raw = json.loads(lspet.read_text())
        counts: dict[int, int] = {}
        for a in raw["annotations"]:
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
        keep = [im for im in raw["images"] if counts.get(im["id"]) == 1][:3]
        ids = {im["id"] for im in keep}
        small = {
            **raw,
            "images": keep,
            "annotations": [a for a in raw["annotations"] if a["image_id"] in ids],
        }
        for im in small["images"]:  # absolute: the subset file lives elsewhere
            im["file_name"] = str((lspet.parent / im["file_name"]).resolve())
        out = tmp_path_factory.mktemp("lspet") / "three.json"
        out.write_text(json.dumps(small))
        gt = load_coco(out)
        return lspet.parent.resolve(), gt
    root = tmp_path_factory.mktemp("synthetic_images")
    cfg = SyntheticConfig(num_images=3, image_size=(96, 80), min_people=1, max_people=1)
    return root.resolve(), load_coco(make_synthetic_coco(root, "lsp14", cfg, seed=5))


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, images):
    if not LS_BIN.is_file():
        pytest.skip(f"Label Studio is not installed ({LS_BIN} absent): run `make label-studio`")
    root, _ = images
    data = tmp_path_factory.mktemp("label_studio_data")
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = open(data / "label_studio.log", "wb")  # noqa: SIM115 - closed at teardown
    cmd = [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data), "--username", USER, "--password", PASSWORD,
           "--user-token", TOKEN, "--enable-legacy-api-token"]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ls = LabelStudio(f"http://127.0.0.1:{port}", root, 0.0)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"Label Studio exited with {proc.returncode}: {(data / 'label_studio.log').read_text()[-3000:]}"
                )
            try:
                version = ls.call("GET", "/api/version")
                break
            except (AssertionError, OSError):
                if time.monotonic() - t0 > START_TIMEOUT:
                    pytest.fail(f"Label Studio did not answer within {START_TIMEOUT} s")
                time.sleep(0.5)
        ls.seconds_to_start = time.monotonic() - t0
        assert version["release"] == "1.23.2"
        print(f"\nLabel Studio {version['release']} answered after {ls.seconds_to_start:.1f} s")
        yield ls
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _predictions(gt, ids, seed=0):
    """Ground truth + noise as a model's output: (1, K, 3) with each keypoint's own confidence, one score."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in ids:
        f = gt.frame(i)
        kps = f.keypoints.astype(np.float64)[:1].copy()
        lab = kps[..., 2] > 0
        xy = kps[..., :2] + rng.normal(0, 2.0, kps[..., :2].shape)
        xy = np.clip(xy, 0, [f.width - 1, f.height - 1])
        kps[..., :2] = np.where(lab[..., None], xy, 0)
        kps[..., 2] = np.where(lab, rng.uniform(0.1, 1.0, lab.shape), 0)
        out[i] = (kps, np.array([0.8]))
    return out


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def _pct(x, size):
    return 100.0 * x / size


def test_round_trip_through_label_studio(tmp_path, images, label_studio):
    ls = label_studio
    _, gt = images
    ids = gt.image_ids[:3]
    proj_dir, preds, pid, by_image = _ls_project(ls, tmp_path, gt, ids, "proj")
    names = gt.skeleton.keypoints
    a, b, c = ids  # a: person dragged + a second person added; b: skipped; c: mostly accepted
    me = ls.call("GET", "/api/current-user/whoami")

    # an image URL written with ls_root loads through Label Studio's HTTP server
    for i in ids:
        assert by_image[i]["data"]["image"].startswith("/data/local-files/?d=")
        assert (
            ls.call("GET", by_image[i]["data"]["image"], raw=True) == gt.image_path(gt.frame(i)).read_bytes()
        )

    # --- annotate through the API, as Label Studio's page would save it --------------------------------------
    wa, ha = gt.frame(a).width, gt.frame(a).height
    result_a, want_a = [], np.zeros((2, len(names), 3))
    shift = np.array([1.25, -0.75])
    pred_a = by_image[a]["predictions"][0]["result"]
    for item in pred_a:  # every pre-annotated point dragged a little: origin 'prediction-changed'
        n, j = (int(v) for v in item["id"][1:].split("k"))
        xy = np.clip(preds[a][0][n, j, :2] + shift, 0, [wa - 1, ha - 1])
        moved = {**item, "origin": "prediction-changed"}
        moved["value"] = {**item["value"], "x": _pct(xy[0], wa), "y": _pct(xy[1], ha)}
        result_a.append(moved)
        want_a[0, j] = (*xy, 2)
    for j in range(0, len(names), 2):  # a second person added by hand, grouped by its person choice
        xy = np.array([wa * (0.1 + 0.05 * j), ha * (0.9 - 0.04 * j)])
        where = {"x": _pct(xy[0], wa), "y": _pct(xy[1], ha), "width": 0.75}
        common = {"id": f"Hn{j:02d}xQ7zL", "to_name": "image", "original_width": wa, "original_height": ha,
                  "image_rotation": 0, "origin": "manual"}  # fmt: skip
        result_a.append({**common, "from_name": "kp", "type": "keypointlabels",
                         "value": {**where, "keypointlabels": [names[j]]}})  # fmt: skip
        result_a.append({**common, "from_name": "person", "type": "choices",
                         "value": {**where, "choices": ["person 2"]}})  # fmt: skip
        want_a[1, j] = (*xy, 2)
    ls.call("POST", f"/api/tasks/{by_image[a]['id']}/annotations",
            {"result": result_a, "lead_time": 23.5, "was_cancelled": False})  # fmt: skip
    ls.call("POST", f"/api/tasks/{by_image[b]['id']}/annotations",
            {"result": [], "lead_time": 3.25, "was_cancelled": True})  # the annotator pressed Skip  # fmt: skip
    wc, hc = gt.frame(c).width, gt.frame(c).height
    result_c = [{**r, "origin": "prediction"} for r in by_image[c]["predictions"][0]["result"]]
    kp_ids = [r["id"] for r in result_c if r["type"] == "keypointlabels"]
    dropped, dragged = kp_ids[0], kp_ids[1]
    result_c = [r for r in result_c if r["id"] != dropped]  # one point deleted (with its person choice)
    want_c = np.zeros((1, len(names), 3))
    for r in result_c:
        j = int(r["id"].split("k")[1])
        xy = preds[c][0][0, j, :2]
        if r["id"] == dragged:
            xy = np.array([wc * 0.5, hc * 0.25])
            r["value"] = {**r["value"], "x": _pct(xy[0], wc), "y": _pct(xy[1], hc)}
            r["origin"] = "prediction-changed"
        want_c[0, j] = (*xy, 2)
    ls.call("POST", f"/api/tasks/{by_image[c]['id']}/annotations",
            {"result": result_c, "lead_time": 8.0, "was_cancelled": False})  # fmt: skip

    # --- Label Studio's exports --------------------------------------------------------------------------------
    export = tmp_path / "export.json"
    export.write_bytes(ls.call("GET", f"/api/projects/{pid}/export?exportType=JSON", raw=True))
    exported = {t["data"]["activepose_image_id"]: t for t in json.loads(export.read_text())}
    assert exported[a]["annotations"][0]["lead_time"] == 23.5
    origins = {r.get("origin") for r in exported[a]["annotations"][0]["result"]}
    assert origins == {"prediction-changed", "manual"}  # Label Studio keeps what the page saves
    with Project.open(proj_dir) as proj:
        before = proj.dump()
        what = {
            "JSON_MIN": "JSON_MIN export",
            "CSV": "a CSV file",
            "TSV": "a TSV file",
            "COCO": "a ZIP archive",
        }
        for kind in what:  # refused, saying which export to use
            other = tmp_path / f"export_{kind.lower()}.txt"
            other.write_bytes(ls.call("GET", f"/api/projects/{pid}/export?exportType={kind}", raw=True))
            with pytest.raises(StoreError, match=f"{what[kind]}.*export 'JSON' in Label Studio"):
                import_label_studio(proj, other, round_id=1)
        with zipfile.ZipFile(tmp_path / "export_coco.txt") as z:  # its COCO export, unpacked
            coco = json.loads(z.read("result.json"))
        per_image = [a["image_id"] for a in coco["annotations"]]
        assert len(per_image) == len(set(per_image)) == 2  # image a's two people became one annotation
        with pytest.raises(StoreError, match="a COCO file.*merges all people.*export 'JSON' in Label Studio"):
            import_label_studio(proj, _write_json(tmp_path / "result.json", coco), round_id=1)
        assert proj.dump() == before

    # --- import with the CLI -------------------------------------------------------------------------------------
    runner = CliRunner()
    args = ["label", str(proj_dir), "--oracle", "file", "--labels", str(export), "--format", "label-studio"]
    res = runner.invoke(app, args)  # task c keeps untouched pre-annotations: consent needed
    assert res.exit_code == 2 and "--accept-predictions" in res.output and f"image id {c}" in res.output
    res = runner.invoke(app, [*args, "--accept-predictions"])
    assert res.exit_code == 0, res.output
    assert "round 1: 2/3 images labelled, 1 skipped; round is labelled" in " ".join(res.output.split())

    with Project.open(proj_dir) as proj:
        got_a = proj.keypoints_of(a)
        assert got_a.shape == want_a.shape  # persons grouped right: the dragged one, then the added one
        np.testing.assert_array_equal(got_a[..., 2], want_a[..., 2])
        np.testing.assert_allclose(got_a[..., :2], want_a[..., :2], rtol=0, atol=1e-6)
        got_c = proj.keypoints_of(c)
        np.testing.assert_array_equal(got_c[..., 2], want_c[..., 2])
        np.testing.assert_allclose(got_c[..., :2], want_c[..., :2], rtol=0, atol=1e-6)
        rows = proj.labels_of(a)
        assert {(r.seconds, r.annotator) for r in rows} == {(23.5, f"label-studio user {me['id']}")}
        assert {(r.seconds, r.annotator) for r in proj.labels_of(c)} == {
            (8.0, f"label-studio user {me['id']}")
        }
        assert proj.image(b).state == "skipped" and proj.labels_of(b) == []
        assert proj.round(1).state == "labelled"
    print(f"Label Studio start: {ls.seconds_to_start:.1f} s")


def _ls_project(ls, tmp_path, gt, ids, name):
    """An activepose project on `ids` with round 1 exported (ls_root) into a new Label Studio project."""
    imgs = [
        (gt.image_path(gt.frame(i)).resolve(), gt.frame(i).width, gt.frame(i).height, None, i) for i in ids
    ]
    proj_dir = tmp_path / name
    with Project.create(proj_dir, gt.skeleton, imgs) as proj:
        proj.open_round("test", {}, [(i, None) for i in ids])
        preds = _predictions(gt, ids)
        tasks_file = export_round(proj, 1, tmp_path / f"{name}.json", "label-studio", preds, ls_root=ls.root)
        config = label_studio_config(proj.skeleton, people=config_people(preds))
    pid = ls.call("POST", "/api/projects", {"title": name, "label_config": config})["id"]
    storage_dir = os.path.commonpath([str(p.parent) for p, *_ in imgs])
    ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": storage_dir,
                                                 "use_blob_urls": True, "title": "images"})  # fmt: skip
    imported = ls.call("POST", f"/api/projects/{pid}/import", json.loads(tasks_file.read_text()))
    assert (imported["task_count"], imported["prediction_count"]) == (len(ids), len(ids))
    tasks = ls.call("GET", f"/api/tasks?project={pid}&fields=all&page_size=100")["tasks"]
    return proj_dir, preds, pid, {t["data"]["activepose_image_id"]: t for t in tasks}


def test_label_studio_page_groups_points_by_person(tmp_path, images, label_studio):
    """Label Studio's own page, in headless Chromium: drag a pre-annotated point, add two points by hand, find
    Submit refused until each has its person, pick 'person 2' for them, submit; the JSON export imports as two
    people with the dragged and clicked positions."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ls = label_studio
    _, gt = images
    i = gt.image_ids[0]
    w, h = gt.frame(i).width, gt.frame(i).height
    proj_dir, preds, pid, by_image = _ls_project(ls, tmp_path, gt, [i], "page")
    task = by_image[i]
    names = gt.skeleton.keypoints
    j_drag = int(np.flatnonzero(preds[i][0][0, :, 2] > 0)[0])
    added = {names.index("neck"): (0.3, 0.6), names.index("head_top"): (0.35, 0.4)}  # fractions of w, h
    modals = 0
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(ls.url + "/user/login/")
            page.fill("input[name=email]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{ls.url}/projects/{pid}/data?task={task['id']}")
            img = page.locator("img[src^='blob:']")  # the image Label Studio loaded from its local-files URL
            img.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(1000)
            box = img.bounding_box()
            sx, sy = box["width"] / w, box["height"] / h  # screen px per image px

            x0, y0 = box["x"] + preds[i][0][0, j_drag, 0] * sx, box["y"] + preds[i][0][0, j_drag, 1] * sy
            page.mouse.click(x0, y0)  # select the pre-annotated point, then drag it
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x0 + 15, y0 + 10, steps=4)
            page.mouse.move(x0 + 30, y0 + 20, steps=4)
            page.mouse.up()
            dragged_to = np.array([preds[i][0][0, j_drag, 0] + 30 / sx, preds[i][0][0, j_drag, 1] + 20 / sy])
            page.keyboard.press("Escape")
            for j, (fx, fy) in added.items():  # the label's button, then a click on the image
                page.locator(".lsf-label", has_text=names[j]).first.click()
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
                page.wait_for_timeout(300)
            for _ in range(len(added) + 2):  # Submit: refused while a point has no person
                page.get_by_role("button", name="Submit").click()
                warning = page.get_by_text("Every point needs its person")
                try:
                    warning.wait_for(state="visible", timeout=3000)
                except sync_api.TimeoutError:
                    break
                modals += 1
                page.get_by_role("button", name="OK").click()
                page.get_by_text("person 2").first.click()  # the point Label Studio selected gets person 2
                page.wait_for_timeout(300)
            deadline = time.monotonic() + 20
            while not ls.call("GET", f"/api/tasks/{task['id']}/annotations") and time.monotonic() < deadline:
                time.sleep(0.3)
        finally:
            browser.close()
    assert modals == len(added)  # one refusal per hand-placed point without a person

    export = tmp_path / "page_export.json"
    export.write_bytes(ls.call("GET", f"/api/projects/{pid}/export?exportType=JSON", raw=True))
    ann = json.loads(export.read_text())[0]["annotations"][0]
    regions = {(r["id"], r["type"]): r for r in ann["result"]}
    manual = [r for r in ann["result"] if r.get("origin") == "manual" and r["type"] == "keypointlabels"]
    assert len(manual) == 2 and all(
        regions[(r["id"], "choices")]["value"]["choices"] == ["person 2"] for r in manual
    )
    assert (
        regions[(f"p0k{j_drag}", "keypointlabels")]["origin"] == "prediction-changed"
    )  # id kept when dragged
    assert regions[(f"p0k{j_drag}", "choices")]["value"]["choices"] == ["person 1"]
    with Project.open(proj_dir) as proj:  # untouched pre-annotated points: origin 'prediction'
        with pytest.raises(StoreError, match="--accept-predictions"):
            import_label_studio(proj, export, round_id=1)
        res = import_label_studio(proj, export, round_id=1, accept_predictions=True, complete_round=True)
        assert (res.images, res.people, res.round_completed) == (1, 2, True)
        got = proj.keypoints_of(i)
        want = preds[i][0][0].copy()
        want[:, 2] = np.where(want[:, 2] > 0, 2, 0)
        assert np.abs(got[0, j_drag, :2] - dragged_to).max() < 0.5  # where the mouse let go
        want[j_drag, :2] = got[0, j_drag, :2]
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-6)  # the other points as predicted
        for j, (fx, fy) in added.items():
            assert got[1, j, 2] == 2 and np.abs(got[1, j, :2] - [fx * w, fy * h]).max() < 0.5
            r = next(r for r in manual if r["value"]["keypointlabels"] == [names[j]])
            exact = [r["value"]["x"] / 100 * w, r["value"]["y"] / 100 * h]
            np.testing.assert_allclose(got[1, j, :2], exact, rtol=0, atol=1e-6)
        assert (got[1, :, 2] > 0).sum() == len(added)
        rows = proj.labels_of(i)
        assert {r.seconds for r in rows} == {ann["lead_time"]} and ann["lead_time"] > 0
        assert {r.annotator for r in rows} == {f"label-studio user {ann['completed_by']}"}
