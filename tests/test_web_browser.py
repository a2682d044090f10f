"""The labelling page end to end, in headless Chromium: drag a pre-annotated keypoint, change a visibility, add
a person, save, reload, and find exactly that in the store (coordinates, visibility, people, effort).

Needs Debian's `chromium` and the `playwright` Python package (`make test` installs both); skips without them.
Playwright's own browser download is not used: the system Chromium is launched by path.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from .conftest import footage_project, shared_file

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CONFIDENCE = 0.8  # of the fake pre-annotations' keypoints; the weakest one gets WEAKEST
WEAKEST = 0.12


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_person_canvases(n: int):
    """The first `n` LSPET multi canvases with exactly two people: [(frame dict, [gt (K, 3) arrays])]."""
    path = shared_file("lspet", "test_multi.json")
    raw = json.loads(path.read_text())
    people: dict[int, list[np.ndarray]] = {}
    for a in raw["annotations"]:
        people.setdefault(a["image_id"], []).append(
            np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        )
    picked = [im for im in raw["images"] if len(people.get(im["id"], [])) == 2][:n]
    for im in picked:
        im["file_name"] = str((path.parent / im["file_name"]).resolve())
    return raw, picked, people


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A project of 3 LSPET two-person canvases, a round open on them, the real server on a free port.

    Pre-annotations: the first ground-truth person of each image, moved by a few pixels, with one weak keypoint
    (the desk's `preannotate` is replaced: the page, not a model, is under test here).
    """
    _chromium()
    pytest.importorskip("uvicorn")
    from activepose.project.store import Project
    from activepose.workflow import desk as annotation
    from activepose.workflow.create import ProjectSource, create_project

    raw, picked, gt = _two_person_canvases(3)
    pool = tmp_path / "pool.json"
    ids = {im["id"] for im in picked}
    pool.write_text(json.dumps({**raw, "images": picked,
                                "annotations": [a for a in raw["annotations"] if a["image_id"] in ids]}))  # fmt: skip
    folder = tmp_path / "proj"
    create_project(folder, ProjectSource(pool=pool))
    with Project.open(folder) as p:
        p.open_round("random", {}, [(im["id"], None) for im in picked])

    predicted = {}
    for im in picked:
        first = gt[im["id"]][0]
        rows = []
        for k, (x, y, v) in enumerate(first):
            conf = WEAKEST if k == int(np.flatnonzero(first[:, 2] > 0)[-1]) else CONFIDENCE
            rows.append([round(x + 1.5, 2), round(y - 1.0, 2), conf] if v > 0 else [0.0, 0.0, 0.0])
        predicted[im["id"]] = [{"score": 0.9, "keypoints": rows}]

    def fake_preannotate(project, round_id, opts, reporter=None):
        return {"model": "fake.pt", "people": predicted}

    monkeypatch.setattr(annotation, "preannotate", fake_preannotate)
    with _serving(folder) as url:
        yield {"url": url, "folder": folder, "images": picked, "gt": gt, "predicted": predicted}


@contextlib.contextmanager
def _serving(folder):
    """The real server on a free port for the project `folder`; yields its URL."""
    import uvicorn

    from activepose.config import AnnotateOptions
    from activepose.web.server import create_app
    from activepose.workflow import desk as annotation

    desk = annotation.LabellingDesk(folder, AnnotateOptions())
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(desk), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
        desk.close()


@contextlib.contextmanager
def _browser_page():
    """A page in headless Chromium; page errors and Content Security Policy violations fail the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            pg.set_default_timeout(15000)
            yield pg
            assert not errors, errors
        finally:
            browser.close()


@pytest.fixture
def page(served):
    with _browser_page() as pg:
        yield pg


def _client(page, x, y):
    c = page.evaluate("([x, y]) => activepose.toClient(x, y)", [x, y])
    return c["x"], c["y"]


def _until(page, js: str, arg=None, timeout: float = 15.0):
    """Poll `js` (a function of `arg`) until it is truthy. (Playwright's wait_for_function evaluates a string,
    which the server's Content Security Policy forbids, rightly.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.05)


def _wait_ready(page, image_id=None):
    _until(page, "(id) => !!window.activepose && activepose.ready() && (id === null || activepose.imageId() === id)",
           image_id)  # fmt: skip


def test_drag_add_visibility_save_reload(served, page):
    from activepose.project.store import Project

    image = served["images"][0]
    image_id = image["id"]
    pred = np.asarray(served["predicted"][image_id][0]["keypoints"])
    second = served["gt"][image_id][1]

    page.goto(served["url"])
    page.fill("#name-input", "tester")  # asked once, then kept in localStorage
    page.press("#name-input", "Enter")
    _wait_ready(page, image_id)
    people = page.evaluate("activepose.people()")
    assert [p["origin"] for p in people] == ["predicted"]
    weak_k = int(np.flatnonzero(pred[:, 2] == WEAKEST)[0])
    assert page.locator(f".person .kp-row.weak[data-k='{weak_k}']").count() == 1  # weak keypoints stand out
    page.keyboard.press("Tab")  # the weakest keypoint first
    assert page.evaluate("activepose.selected()")["k"] == weak_k

    # drag one predicted keypoint
    labelled = [k for k in range(len(pred)) if pred[k, 2] > 0 and k != weak_k]
    k_drag, k_vis = labelled[0], labelled[1]
    start = _client(page, pred[k_drag, 0], pred[k_drag, 1])
    target = (min(pred[k_drag, 0] + 9.3, image["width"] - 1), min(pred[k_drag, 1] + 6.6, image["height"] - 1))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*_client(page, *target), steps=8)
    page.mouse.up()

    # change a visibility: select another keypoint by clicking it, then V (visible -> occluded)
    page.mouse.click(*_client(page, pred[k_vis, 0], pred[k_vis, 1]))
    assert page.evaluate("activepose.selected()")["k"] == k_vis
    page.keyboard.press("v")

    # add a person: A, then its keypoints in skeleton order, S for the ones it lacks
    page.keyboard.press("a")
    clicked = {}
    for k, (x, y, v) in enumerate(second):
        assert page.evaluate("activepose.adding()")["next"] == k
        if v > 0:
            page.mouse.click(*_client(page, x, y))
            clicked[k] = (x, y)
        else:
            page.keyboard.press("s")
    assert page.evaluate("activepose.adding()") is None  # done after the last keypoint
    assert page.evaluate("activepose.dirty()")

    page.keyboard.press("Control+s")
    _until(page, "() => !activepose.saving() && !activepose.dirty() && activepose.revision() === 1")
    assert page.locator("#message").is_visible()  # "saved 2 people"

    page.reload()  # the name is remembered: no dialog this time
    _wait_ready(page, image_id)
    assert page.locator("#name-dialog").is_hidden()
    shown = page.evaluate("activepose.people()")
    assert len(shown) == 2

    with Project.open(served["folder"], readonly=True) as p:
        rows = sorted(p.labels_of(image_id), key=lambda r: r.person)
        assert p.image(image_id).state == "labelled" and p.image(image_id).revision == 1
    assert len(rows) == 2
    first, added = rows[0].keypoints, rows[1].keypoints
    assert np.allclose(first[k_drag, :2], target, atol=1.0), (first[k_drag], target)
    assert first[k_drag, 2] == 2 and first[k_vis, 2] == 1
    untouched = [k for k in range(len(pred)) if k not in (k_drag, k_vis)]
    assert np.allclose(first[untouched, :2], pred[untouched, :2], atol=0.01)
    assert np.array_equal(first[:, 2] > 0, pred[:, 2] > 0)
    for k, v in enumerate(second[:, 2]):
        if v > 0:
            assert np.allclose(added[k, :2], clicked[k], atol=1.0) and added[k, 2] == 2, (k, added[k])
        else:
            assert added[k].tolist() == [0, 0, 0]
    assert rows[0].clicks == 2  # the drag and the visibility change
    assert rows[1].clicks == len(clicked)
    assert all(r.person_seconds is not None and r.person_seconds > 0 for r in rows)
    assert {r.annotator for r in rows} == {"tester"}
    # what the page shows after the reload is what was stored
    assert np.allclose(
        [[kp["x"], kp["y"]] for kp in shown[0]["kps"] if kp["v"] > 0], first[first[:, 2] > 0, :2]
    )
    assert [kp["v"] for kp in shown[0]["kps"]] == first[:, 2].astype(int).tolist()


def _post(url: str, body: dict, annotator: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Annotator": annotator})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_undo_conflict_skip_nobody_and_the_complete_banner(served, page):
    from activepose.project.store import Project

    first, second, third = (im["id"] for im in served["images"])
    pred = np.asarray(served["predicted"][first][0]["keypoints"])
    page.goto(served["url"])
    page.fill("#name-input", "tester")
    page.press("#name-input", "Enter")
    _wait_ready(page, first)

    # every edit undoes: a drag, then Ctrl+Z puts the point back
    k = int(np.flatnonzero(pred[:, 2] > 0)[0])
    page.mouse.move(*_client(page, pred[k, 0], pred[k, 1]))
    page.mouse.down()
    page.mouse.move(*_client(page, pred[k, 0] + 8, pred[k, 1] + 8), steps=5)
    page.mouse.up()
    moved = page.evaluate("activepose.people()")[0]["kps"][k]
    assert abs(moved["x"] - pred[k, 0] - 8) < 1
    page.keyboard.press("Control+z")
    back = page.evaluate("activepose.people()")[0]["kps"][k]
    assert abs(back["x"] - pred[k, 0]) < 1e-6 and abs(back["y"] - pred[k, 1]) < 1e-6
    page.keyboard.press("Control+y")  # redo: the drag again, then save it over someone else's save

    # someone else saves the image meanwhile: the page shows the conflict, "keep mine" saves over it
    theirs = [{"keypoints": served["gt"][first][1].tolist(), "seconds": 1.0, "clicks": 1, "origin": "manual"}]
    status, body = _post(
        f"{served['url']}api/images/{first}/labels", {"revision": 0, "people": theirs}, "tester"
    )
    assert status == 200 and body["revision"] == 1, body
    page.keyboard.press("Control+s")
    page.locator("#conflict").wait_for(state="visible")
    assert "revision 1" in page.locator("#conflict-text").text_content()
    page.click("#conflict-mine")
    _until(page, "() => !activepose.saving() && !activepose.dirty() && activepose.revision() === 2")
    with Project.open(served["folder"], readonly=True) as p:
        rows = p.labels_of(first)
    assert len(rows) == 1 and abs(rows[0].keypoints[k, 0] - pred[k, 0] - 8) < 1  # mine, not theirs

    # X skips the next image, 0 saves the last with nobody: the round is complete and says what is next
    page.keyboard.press("ArrowRight")
    _wait_ready(page, second)
    page.keyboard.press("x")
    _wait_ready(page, third)  # a skip opens the next image to label
    page.keyboard.press("0")
    page.locator("#banner").wait_for(state="visible")
    assert "complete" in page.locator("#banner-title").text_content()
    assert "activepose train" in page.locator("#banner-text").text_content()
    with Project.open(served["folder"], readonly=True) as p:
        assert p.image(second).state == "skipped"
        assert p.image(third).state == "labelled" and p.labels_of(third) == []
        assert p.round(1).state == "labelled"
    assert "3 labelled" not in page.locator("#progress-text").text_content()
    assert page.locator("#progress-text").text_content().startswith("2 labelled · 1 skipped · 0 to do")


def test_lease_held_by_someone_else(served, page):
    from activepose.project.store import Project

    image_id = served["images"][0]["id"]
    with Project.open(served["folder"]) as p:
        p.take_lease(image_id, "bob", 600)
    page.goto(served["url"])
    page.fill("#name-input", "no <b>html</b>")  # refused: the page asks again
    page.press("#name-input", "Enter")
    assert page.locator("#name-error").is_visible()
    page.fill("#name-input", "tester")
    page.press("#name-input", "Enter")
    _wait_ready(page)
    # the page opens the first image nobody else holds; bob's is marked in the list
    assert page.evaluate("activepose.imageId()") == served["images"][1]["id"]
    assert "bob" in page.locator(f"#image-list li[data-id='{image_id}']").text_content()
    page.click(f"#image-list li[data-id='{image_id}']")
    _wait_ready(page, image_id)
    assert "bob is labelling this image" in page.locator("#lease-banner").text_content()
    page.keyboard.press("Control+s")
    _until(page, "() => !activepose.saving()")
    page.locator("#message").wait_for(state="visible")
    assert "leased to bob" in page.locator("#message-text").text_content()
    with Project.open(served["folder"], readonly=True) as p:
        assert p.image(image_id).state == "queued" and p.labels_of(image_id) == []


@pytest.fixture
def served_footage(tmp_path):
    """A footage project (two videos, frame 10 of video "a" labelled, round 1 on frames 0 and 20 of "a" and
    frame 0 of "b"), no model: the page starts each image empty."""
    _chromium()
    pytest.importorskip("uvicorn")
    folder, gt = footage_project(tmp_path)
    with _serving(folder) as url:
        yield {"url": url, "folder": folder, "gt": gt}


def test_footage_shows_the_frame_and_copies_the_nearest_labelled_frame(served_footage):
    from activepose.project.store import Project

    s = served_footage
    with _browser_page() as page:
        page.goto(s["url"] + "#image=3")
        page.fill("#name-input", "tester")
        page.press("#name-input", "Enter")
        _wait_ready(page, 3)
        text = page.locator("#status-image").text_content()
        assert "video a · frame 20 · 0.80 s" in text, text
        assert page.locator("#copy-button").is_visible()
        assert page.locator("#copy-frame").text_content() == "10"
        assert page.evaluate("activepose.people()") == []
        page.keyboard.press("c")
        people = page.evaluate("activepose.people()")
        truth = s["gt"].frame(2).keypoints
        assert len(people) == len(truth) and all(p["origin"] == "copied" for p in people)
        for p, want in zip(people, truth, strict=True):
            got = np.array([[k["x"], k["y"], k["v"]] for k in p["kps"]])
            seen = want[:, 2] > 0
            np.testing.assert_allclose(got[seen, :2], want[seen, :2], atol=1e-6)
            assert (got[~seen, 2] == 0).all()
        page.keyboard.press("Control+z")  # undo brings back the empty image
        assert page.evaluate("activepose.people()") == []
        page.keyboard.press("c")
        page.keyboard.press("Control+s")
        _until(page, "() => !activepose.saving() && !activepose.dirty() && activepose.revision() === 1")
        with Project.open(s["folder"], readonly=True) as p:
            stored = p.keypoints_of(3)
        assert stored.shape == truth.shape
        np.testing.assert_allclose(
            stored[..., :2][truth[..., 2] > 0], truth[..., :2][truth[..., 2] > 0], atol=0.01
        )
        # frame 0 of video "b": nothing labelled there, no copy offered
        page.goto(s["url"] + "#image=5")
        page.reload()
        _wait_ready(page, 5)
        assert not page.locator("#copy-button").is_visible()
        assert "video b · frame 0" in page.locator("#status-image").text_content()
