"""Clicks and seconds per person on the labelling page: correcting pre-annotations vs labelling from scratch.

    python benchmarks/labelling_clicks.py --model MODEL.pt [--data ../shared/data] [--images 8] \\
        [--out runs/labelling_clicks] [--screenshot docs/labelling-page.png] [--tol 0.1] [--pause 0.25]

Builds two projects of the same LSPET multi-person canvases (`lspet/test_multi.json` + `lspet/multi/`), opens a
round on each and serves it with the real labelling server (`activepose.web.server.create_app`): one with the
model's pre-annotations (`--model`), one without. A scripted headless Chromium (Debian's `chromium`, driven by
Playwright) then labels every image of each round from the ground truth, the way an annotator would:

- correcting: predicted people are matched to ground-truth people (Hungarian, on the mean keypoint distance
  relative to the person's size; a match needs < 0.5); every predicted keypoint farther than `--tol` x the
  person's size (the larger side of its ground-truth box) from the truth is dragged onto it, a keypoint the
  model missed is placed (its row in the side list, then a click), one the truth lacks is set to "not
  labelled" (V twice), predicted people with no match are deleted (click, Del), people the model missed are
  added (A, one click per keypoint, S for those the truth lacks);
- from scratch: every person is added that way.

Each image is saved with Enter (save and open the next image). Clicks and seconds are read back from the
store (what the page recorded per person: see the header of web/static/app.js for the definitions); the
script's own count of every pointer and key action (selections, deletions, skips, saves included) is printed
beside them. The scripted session pauses `--pause` seconds before each action, so the recorded seconds are
the script's pacing plus the page's own latency, not a person's: read them as a check that time is recorded
per person; the clicks are the comparison. The screenshot (`--screenshot`) is the page on the pre-annotated
image with the most predicted people, before any correction, with the weakest keypoint selected.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def pick_images(
    data: Path, n: int, seed: int, max_width: int
) -> tuple[dict, list[dict], dict[int, list[np.ndarray]]]:
    """`n` canvases with 2-4 people (seeded), the one with the most people first; absolute file names."""
    path = data / "lspet" / "test_multi.json"
    raw = json.loads(path.read_text())
    gt: dict[int, list[np.ndarray]] = {}
    for a in raw["annotations"]:
        gt.setdefault(a["image_id"], []).append(np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3))
    fit = [im for im in raw["images"] if 2 <= len(gt.get(im["id"], [])) <= 4 and im["width"] <= max_width]
    random.Random(seed).shuffle(fit)
    chosen = sorted(fit[:n], key=lambda im: -len(gt[im["id"]]))
    for im in chosen:
        im["file_name"] = str((path.parent / im["file_name"]).resolve())
    return raw, chosen, gt


def make_project(folder: Path, raw: dict, images: list[dict]) -> None:
    from activepose.project.store import Project
    from activepose.workflow.create import ProjectSource, create_project

    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    ids = {im["id"] for im in images}
    pool = folder.parent / f"{folder.name}-pool.json"
    pool.write_text(json.dumps({**raw, "images": images,
                                "annotations": [a for a in raw["annotations"] if a["image_id"] in ids]}))  # fmt: skip
    create_project(folder, ProjectSource(pool=pool))
    with Project.open(folder) as p:
        p.open_round("benchmark", {}, [(im["id"], None) for im in images])


class Server:
    """The real labelling server for `folder`'s open round, on a free local port, in a thread."""

    def __init__(self, folder: Path, model: Path | None):
        import uvicorn

        from activepose.config import AnnotateOptions
        from activepose.web.server import create_app
        from activepose.workflow.desk import LabellingDesk

        opts = AnnotateOptions(model=model, predictions=model is not None, device="cpu")
        t0 = time.perf_counter()
        self.desk = LabellingDesk(folder, opts)
        self.preannotate_s = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.desk), host="127.0.0.1", port=port,
                                                    log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the labelling server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.desk.close()


class Session:
    """A scripted annotator on the page: every action is counted and preceded by `pause` seconds."""

    def __init__(self, page, pause: float):
        self.page, self.pause, self.actions = page, pause, 0
        self.took: dict[
            str, list[float]
        ] = {}  # seconds each kind of action took in the browser, pause excluded

    def js(self, code: str, arg=None):
        return self.page.evaluate(code, arg)

    def until(self, code: str, arg=None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(code, arg):
            if time.monotonic() > deadline:
                raise TimeoutError(code)
            time.sleep(0.03)

    def at(self, x: float, y: float) -> tuple[float, float]:
        c = self.js("([x, y]) => activepose.toClient(x, y)", [x, y])
        return c["x"], c["y"]

    def _act(self, kind: str, fn) -> None:
        time.sleep(self.pause)
        self.actions += 1
        t0 = time.perf_counter()
        fn()
        self.took.setdefault(kind, []).append(time.perf_counter() - t0)

    def click(self, x: float, y: float) -> None:
        self._act("click", lambda: self.page.mouse.click(*self.at(x, y)))

    def drag(self, src, dst) -> None:
        def go():
            m = self.page.mouse
            m.move(*self.at(*src))
            m.down()
            m.move(*self.at(*dst), steps=6)
            m.up()

        self._act("drag", go)

    def key(self, k: str) -> None:
        self._act("key", lambda: self.page.keyboard.press(k))

    def click_row(self, uid: int, k: int) -> None:
        self._act("row", lambda: self.page.click(f".person[data-uid='{uid}'] .kp-row[data-k='{k}']"))

    def people(self) -> list[dict]:
        return self.js("() => activepose.people()")


def scale_of(gt: np.ndarray) -> float:
    pts = gt[gt[:, 2] > 0, :2]
    return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0)) if len(pts) else 1.0


def match(preds: list[dict], gts: list[np.ndarray]) -> list[tuple[int, int]]:
    from scipy.optimize import linear_sum_assignment

    if not preds or not gts:
        return []
    cost = np.full((len(preds), len(gts)), 10.0)
    for i, p in enumerate(preds):
        pk = np.array([[k["x"], k["y"], k["v"]] for k in p["kps"]])
        for j, g in enumerate(gts):
            both = (pk[:, 2] > 0) & (g[:, 2] > 0)
            if both.any():
                cost[i, j] = float(np.linalg.norm(pk[both, :2] - g[both, :2], axis=1).mean()) / scale_of(g)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if cost[i, j] < 0.5]


def add_person(s: Session, g: np.ndarray) -> None:
    s.key("a")
    last = int(np.flatnonzero(g[:, 2] > 0)[-1])
    for x, y, v in g[: last + 1]:  # the page finishes the person after the last keypoint; Esc before that
        if v > 0:
            s.click(x, y)  # (LSPET has no occluded flags: every labelled truth point is visible)
        else:
            s.key("s")
    if last < len(g) - 1:
        s.key("Escape")


def correct(s: Session, gts: list[np.ndarray], tol: float) -> None:
    preds = s.people()
    pairs = match(preds, gts)
    matched_p = {i for i, _ in pairs}
    for i, p in enumerate(preds):  # false people first: fewer points in the way
        if i not in matched_p:
            k = next(k for k, kp in enumerate(p["kps"]) if kp["v"] > 0)
            s.click(p["kps"][k]["x"], p["kps"][k]["y"])
            s.key("Delete")
    for i, j in pairs:
        uid, g = preds[i]["uid"], gts[j]
        limit = tol * scale_of(g)
        kps = next(q for q in s.people() if q["uid"] == uid)["kps"]  # read once: the script's own time is
        for k in range(len(g)):  # charged to the person like a person's looking would be
            cur = kps[k]
            gx, gy, gv = g[k]
            if gv > 0 and cur["v"] > 0:
                if np.hypot(cur["x"] - gx, cur["y"] - gy) > limit:
                    s.drag((cur["x"], cur["y"]), (gx, gy))
            elif gv > 0:
                s.click_row(uid, k)
                s.click(gx, gy)
            elif cur["v"] > 0:
                s.click(cur["x"], cur["y"])
                s.key("v")
                s.key("v")
                s.key("Escape")
    for j in sorted(set(range(len(gts))) - {j for _, j in pairs}):
        add_person(s, gts[j])


def run_mode(browser, url: str, mode: str, gt: dict, tol: float, pause: float, shots: Path | None) -> dict:
    ctx = browser.new_context(viewport={"width": 1440, "height": 810}, device_scale_factor=1)
    ctx.add_init_script(f"localStorage.setItem('activepose.annotator', 'bench-{mode}')")
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.on("dialog", lambda d: d.accept())
    s = Session(page, pause)
    origins: dict[int, list[str]] = {}
    actions: dict[int, int] = {}
    shot_people: dict[int, int] = {}
    done: list[int] = []
    while True:
        s.until("() => !!window.activepose && activepose.ready()")
        image_id = s.js("() => activepose.imageId()")
        if image_id in done:
            break
        if shots is not None:
            shot_people[image_id] = len(s.people())
            page.keyboard.press("Escape")  # the previous image's "saved" note off the picture
            s.key("Tab")  # the weakest keypoint, selected and hovered for its confidence label
            sel = s.js("() => activepose.selected()")
            if sel["uid"] is not None:
                kp = next(p for p in s.people() if p["uid"] == sel["uid"])["kps"][sel["k"]]
                page.mouse.move(*s.at(kp["x"], kp["y"]))
            time.sleep(0.2)
            page.screenshot(path=str(shots / f"image_{image_id}.png"))
            page.reload()  # a fresh start on the image: the screenshot's time is charged to nobody
            s.until(
                "(id) => !!window.activepose && activepose.ready() && activepose.imageId() === id", image_id
            )
        before = s.actions
        gts = [g for g in gt[image_id] if (g[:, 2] > 0).any()]
        if mode == "correct":
            correct(s, gts, tol)
        else:
            for g in gts:
                add_person(s, g)
        origins[image_id] = [p["origin"] for p in s.people() if any(k["v"] > 0 for k in p["kps"])]
        s.key("Enter")  # save and open the next image
        actions[image_id] = s.actions - before
        s.until(
            "(id) => !activepose.saving() && (activepose.complete() || activepose.imageId() !== id)", image_id
        )
        done.append(image_id)
        if s.js("() => activepose.complete()"):
            break
    ctx.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    took = {kind: (len(t), round(1000 * statistics.mean(t), 1)) for kind, t in s.took.items()}
    return {"origins": origins, "actions": actions, "images": done, "shot_people": shot_people, "took": took}


def read_back(folder: Path, run: dict, gt: dict, tol: float) -> list[dict]:
    from activepose.project.store import Project

    people = []
    with Project.open(folder, readonly=True) as p:
        for image_id in run["images"]:
            rows = sorted(p.labels_of(image_id), key=lambda r: r.person)
            gts = [g for g in gt[image_id] if (g[:, 2] > 0).any()]
            for r, origin in zip(rows, run["origins"][image_id], strict=True):
                people.append({"image": image_id, "origin": origin, "clicks": r.clicks, "seconds": r.person_seconds,
                               "accurate": accuracy(r.keypoints, gts, tol)})  # fmt: skip
    return people


def accuracy(kps: np.ndarray, gts: list[np.ndarray], tol: float) -> float:
    """Fraction of the nearest ground-truth person's labelled keypoints stored within tol x its size."""
    best = 0.0
    for g in gts:
        lab = g[:, 2] > 0
        d = np.linalg.norm(kps[lab, :2] - g[lab, :2], axis=1)
        ok = (kps[lab, 2] > 0) & (d <= tol * scale_of(g) + 1e-6)
        best = max(best, float(ok.mean()))
    return best


def summary(people: list[dict]) -> dict:
    if not people:
        return {"people": 0}
    c = [p["clicks"] for p in people]
    sec = [p["seconds"] for p in people]
    return {"people": len(people), "median_clicks": statistics.median(c), "mean_clicks": round(statistics.mean(c), 2),
            "median_seconds": round(statistics.median(sec), 2), "mean_seconds": round(statistics.mean(sec), 2),
            "accurate": round(statistics.mean(p["accurate"] for p in people), 3)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding lspet/"
    )
    ap.add_argument(
        "--model", type=Path, required=True, help="checkpoint that pre-annotates (an LSPET model)"
    )
    ap.add_argument("--images", type=int, default=8, help="canvases per round (2-4 people each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-width", type=int, default=420, help="only canvases at most this wide (readable at fit)"
    )
    ap.add_argument(
        "--tol", type=float, default=0.1, help="a keypoint is right within tol x the person's size"
    )
    ap.add_argument("--pause", type=float, default=0.25, help="seconds the script waits before each action")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "labelling_clicks")
    ap.add_argument("--screenshot", type=Path, default=REPO / "docs" / "labelling-page.png")
    args = ap.parse_args()

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("error: chromium is not installed (apt-get install -y chromium)")
    if not args.model.is_file():
        sys.exit(f"error: --model {args.model}: no such file")
    from playwright.sync_api import sync_playwright

    raw, images, gt = pick_images(args.data, args.images, args.seed, args.max_width)
    shots = args.out / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    results, actions = {}, {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        for mode in ("correct", "scratch"):
            folder = args.out / ("lspet-multi-preannotated" if mode == "correct" else "lspet-multi-scratch")
            make_project(folder, raw, images)
            server = Server(folder, args.model if mode == "correct" else None)
            if mode == "correct":
                print(f"pre-annotations of {len(images)} images: {server.preannotate_s:.1f} s")
            try:
                t0 = time.perf_counter()
                run = run_mode(browser, server.url, mode, gt, args.tol, args.pause,
                               shots if mode == "correct" else None)  # fmt: skip
                wall = time.perf_counter() - t0
            finally:
                server.stop()
            results[mode] = read_back(folder, run, gt, args.tol)
            actions[mode] = run["actions"]
            print(f"{mode}: {len(run['images'])} images in {wall:.0f} s of scripted session; actions (count, mean ms "
                  f"in the browser): {run['took']}")  # fmt: skip
            if mode == "correct" and run["shot_people"]:
                best = max(run["shot_people"], key=lambda i: (run["shot_people"][i], -run["images"].index(i)))
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shots / f"image_{best}.png", args.screenshot)
                print(
                    f"screenshot: {args.screenshot} (image {best}, {run['shot_people'][best]} predicted people)"
                )
        browser.close()

    corr = results["correct"]
    table = {
        "correcting, predicted people": summary([p for p in corr if p["origin"] == "predicted"]),
        "correcting, people added": summary([p for p in corr if p["origin"] == "manual"]),
        "correcting, all people": summary(corr),
        "from scratch": summary(results["scratch"]),
    }
    n_gt = sum(len([g for g in gt[im["id"]] if (g[:, 2] > 0).any()]) for im in images)
    print(f"\n{len(images)} LSPET multi canvases, {n_gt} people; tolerance {args.tol} x person size; "
          f"pause {args.pause} s per scripted action")  # fmt: skip
    print(f"{'':32s} {'people':>6s} {'median clicks':>14s} {'mean clicks':>12s} {'median s':>9s} {'mean s':>7s} "
          f"{'kps right':>9s}")  # fmt: skip
    for name, row in table.items():
        if row["people"]:
            print(f"{name:32s} {row['people']:6d} {row['median_clicks']:14.1f} {row['mean_clicks']:12.2f} "
                  f"{row['median_seconds']:9.2f} {row['mean_seconds']:7.2f} {row['accurate']:9.3f}")  # fmt: skip
        else:
            print(f"{name:32s} {0:6d}")
    for mode in ("correct", "scratch"):
        per_image = [actions[mode][i] for i in actions[mode]]
        print(f"script actions per image ({mode}: every click and key, saves included): median "
              f"{statistics.median(per_image):.1f}, total {sum(per_image)}")  # fmt: skip
    out = args.out / "summary.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table,
                               "people": results, "actions": {m: {str(k): v for k, v in a.items()}
                                                              for m, a in actions.items()}}, indent=1))  # fmt: skip
    print(f"\nper-person figures: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
