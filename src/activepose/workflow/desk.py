"""A round served to people: what the labelling page (and `run --oracle web`) does, without any HTTP.

`LabellingDesk` opens one round of a project and answers the page's questions: the round's images and
progress, one image with the model's pre-annotations and its current labels, and saves / skips. Every write
is one store transaction (`Project.save_labels` / `skip_image`) that checks the annotator's lease and the
image revision the page started from, so two annotators never silently overwrite each other, and the last
image's save completes the round in the same transaction. The oracle for `activepose run --oracle web` that
serves the page until the round is complete is `web.labeller.WebLabeller`.

Pre-annotations are the served model's people, decoded once per round and model and cached in
`exports/round_<R>/preannotations.json`. A weak model (a first CPU model) often finds nobody with the
evaluation thresholds: on such an image the people found with relaxed thresholds (`relaxed_parts`,
`relaxed_score`) are offered instead, their weak keypoints highlighted by the page, so there is still
something to correct rather than a blank image.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import AnnotateOptions
from ..errors import ActiveposeError, ConfigError, StateError
from ..fileio import atomic_write_json, file_sha1
from ..pose.coco import ANNOTATOR_NAME, MAX_PEOPLE_PER_IMAGE, check_people
from ..project.leases import LeaseHeld
from ..project.store import Project
from .reporting import SILENT, Reporter
from .rounds import image_states, round_progress

# How a saved person started: the model's pre-annotation, the annotator's clicks, or a copy of the people of the
# nearest labelled frame of the same video.
ORIGINS = ("predicted", "manual", "copied")


class UnknownImage(ActiveposeError, LookupError):
    """An image id that is not in the served round."""


class InvalidLabels(ActiveposeError, ValueError):
    """A save whose people do not fit the skeleton or the image."""


def check_annotator(name: str | None) -> str:
    """Return the annotator name, 'anonymous' for none; raise ConfigError for names the page cannot show."""
    if name is None or name == "":
        return "anonymous"
    if not ANNOTATOR_NAME.fullmatch(name) or not name.strip():
        raise ConfigError(
            f"annotator name {name[:80]!r} is not allowed: 1-64 letters, digits, spaces, '.', '_', '@' or '-'"
        )
    return name.strip()


def sides(names: tuple[str, ...] | list[str]) -> list[str]:
    """Return 'left' / 'right' / 'center' for each keypoint name (prefixes left_, l_, right_, r_)."""
    out = []
    for n in names:
        low = n.lower()
        if low.startswith(("left", "l_")):
            out.append("left")
        elif low.startswith(("right", "r_")):
            out.append("right")
        else:
            out.append("center")
    return out


@dataclass(frozen=True)
class Person:
    """One person of a save: (K, 3) keypoints with COCO visibility, and what labelling them cost."""

    keypoints: np.ndarray
    seconds: float | None = None
    clicks: int | None = None
    origin: str = "manual"


def pick_round(project, round_id: int | None) -> int:
    """Return the round to serve: `round_id` (must exist) or the open round; StateError when there is none."""
    if round_id is not None:
        project.round(round_id)  # StoreError naming the project when it does not exist
        return int(round_id)
    current = project.current_round()
    if current is None or current.state != "open":
        where = "" if current is None else f" (round {current.id} is {current.state})"
        raise StateError(
            f"{project.folder}: no open round to label{where}; open one with `activepose select {project.folder} "
            "--budget N`"
        )
    return current.id


# --- pre-annotations --------------------------------------------------------------------------------------
def preannotate(project, round_id: int, opts: AnnotateOptions, reporter: Reporter = SILENT) -> dict:
    """Return {"model": name or None, "people": {image_id: [{"score", "keypoints"}]}} for the round's images.

    Cached in exports/round_<R>/preannotations.json by model sha1 and thresholds; images added since are
    predicted, the rest read back.
    """

    if not opts.predictions:
        return {"model": None, "people": {}}
    model = opts.model
    if model is None:
        latest = project.latest_model()
        if latest is None:
            return {"model": None, "people": {}}
        model = project.checkpoint_path(latest)
    model = Path(model)
    key = {"sha1": file_sha1(model), "relaxed_parts": opts.relaxed_parts, "relaxed_score": opts.relaxed_score}
    cache = project.folder / "exports" / f"round_{round_id}" / "preannotations.json"
    people: dict[int, list] = {}
    try:
        old = json.loads(cache.read_text())
        if old.get("key") == key:
            people = {int(k): v for k, v in old["people"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    ids = [i for i, _, _ in project.round(round_id).items]
    todo = [i for i in ids if i not in people]
    if todo:
        from ..config import DecoderConfig
        from ..pose.skeleton import same_keypoints
        from .models import decoder_for, load, predict_files

        loaded = load(model, opts.device)
        loaded.net.trunk_cache = (
            None  # each image is predicted once (then cached here): no trunk feature cache
        )
        same_keypoints(str(model), loaded.skeleton, project.skeleton, "the project's")
        decoder = decoder_for(loaded.skeleton, opts.relaxed_parts, opts.relaxed_score)
        strict = DecoderConfig()
        preds, unreadable = predict_files(
            loaded, [(i, project.image_path(i)) for i in todo], decoder=decoder, reporter=reporter
        )
        for message in unreadable:
            reporter.note(f"no pre-annotation: {message}")
        for image_id, (kps, scores) in preds.items():
            people[image_id] = _people(kps, scores, strict.min_parts, strict.min_person_score)
        atomic_write_json(cache, {"key": key, "model": model.name, "people": people}, indent=None)
    return {"model": model.name, "people": people}


def _people(kps: np.ndarray, scores: np.ndarray, min_parts: int, min_score: float) -> list[dict]:
    """People as the page gets them; those passing the evaluation thresholds, or all when none does."""
    out = []
    for person, score in zip(np.asarray(kps, dtype=np.float64), np.asarray(scores).reshape(-1), strict=True):
        found = person[:, 2] > 0
        rows = [[round(float(x), 2), round(float(y), 2), round(float(c), 4)] if f else [0.0, 0.0, 0.0]
                for (x, y, c), f in zip(person, found, strict=True)]  # fmt: skip
        out.append({"score": round(float(score), 4), "keypoints": rows, "strict": bool(
            found.sum() >= min(min_parts, len(found)) and score >= min_score)})  # fmt: skip
    if any(p["strict"] for p in out):
        out = [p for p in out if p["strict"]]
    out.sort(key=lambda p: -p["score"])
    return [{"score": p["score"], "keypoints": p["keypoints"]} for p in out]


# --- the desk ---------------------------------------------------------------------------------------------
class LabellingDesk:
    """One round of a project, served to annotators. Thread-safe: one store connection per thread."""

    def __init__(self, folder: str | Path, opts: AnnotateOptions | None = None, reporter: Reporter = SILENT):

        self.folder = Path(folder)
        self.opts = opts or AnnotateOptions()
        self._local = threading.local()
        with Project.open(self.folder) as project:
            self.round_id = pick_round(project, self.opts.round_id)
            self.skeleton = project.skeleton
            self.pre = preannotate(project, self.round_id, self.opts, reporter)
            items = project.round(self.round_id).items
        self._items = {i: rank for i, rank, _ in items}  # in rank order
        self._scores = {i: score for i, _, score in items}

    def _project(self):

        project = getattr(self._local, "project", None)
        if project is None:
            project = self._local.project = Project.open(self.folder)
        return project

    def close(self) -> None:
        project = getattr(self._local, "project", None)
        if project is not None:
            project.close()
            self._local.project = None

    # --- reading ---------------------------------------------------------------------------------------
    def _check(self, image_id: int) -> int:
        if image_id not in self._items:
            raise UnknownImage(f"image id {image_id} is not in round {self.round_id}")
        return image_id

    def progress(self) -> dict[str, int]:
        return round_progress(list(image_states(self._project(), self.round_id).values()))

    def state(self) -> str:
        return self._project().round(self.round_id).state

    def is_complete(self) -> bool:
        return self.state() != "open"

    def next_text(self) -> str:
        f = self.folder
        return (
            f"Round {self.round_id} is labelled. Train on it: `activepose train {f}` then `activepose evaluate "
            f"{f}` (a loop started with `activepose run {f} --oracle web` goes on by itself)."
        )

    def _lease_view(self, lease, annotator: str) -> dict[str, Any] | None:
        if lease is None:
            return None
        return {"annotator": lease.annotator, "expires_in": round(max(0.0, lease.expires_at - time.time()), 1),
                "mine": lease.annotator == annotator}  # fmt: skip

    def round_view(self, annotator: str) -> dict[str, Any]:
        project = self._project()
        leases = project.leases()
        images = []
        for image_id, rank in self._items.items():
            img = project.image(image_id)
            images.append({"id": image_id, "rank": rank, "file": Path(img.path).name, "state": img.state,
                           "lease": self._lease_view(leases.get(image_id), annotator),
                           "uncertainty": self._scores.get(image_id)})  # fmt: skip
        state = project.round(self.round_id).state
        latest = project.latest_model()
        model = None
        if self.pre["model"] is not None:
            model = {
                "id": latest.id if latest and self.opts.model is None else None,
                "file": self.pre["model"],
            }
        sk = self.skeleton
        return {
            "project": self.folder.name, "round": self.round_id, "state": state, "complete": state != "open",
            "read_only": state != "open",
            "skeleton": {"name": sk.name, "keypoints": list(sk.keypoints), "limbs": [list(x) for x in sk.limbs],
                         "sides": sides(sk.keypoints)},
            "progress": round_progress([i["state"] for i in images]), "images": images, "model": model,
            "lease_seconds": self.opts.lease_seconds, "next": self.next_text() if state != "open" else "",
        }  # fmt: skip

    def image_view(self, image_id: int, annotator: str) -> dict[str, Any]:
        """One image for `annotator`: takes its lease when free and the round is open."""

        project = self._project()
        image_id = self._check(int(image_id))
        lease = None
        if project.round(self.round_id).state == "open":
            try:
                lease = project.take_lease(image_id, annotator, self.opts.lease_seconds)
            except LeaseHeld as exc:
                lease = exc.lease
        img = project.image(image_id)
        labels = [
            {"keypoints": r.keypoints.tolist(), "source": r.source, "annotator": r.annotator,
             "seconds": r.person_seconds, "clicks": r.clicks}
            for r in sorted(project.labels_of(image_id), key=lambda r: r.person)
        ]  # fmt: skip
        return {
            "id": image_id, "file": Path(img.path).name, "width": img.width, "height": img.height,
            "state": img.state, "revision": img.revision, "rank": self._items[image_id],
            "lease": self._lease_view(lease, annotator),
            "predictions": self.pre["people"].get(image_id, []), "labels": labels,
            "video": img.video, "frame": img.frame, "time": img.timestamp,
            "neighbour": self._neighbour(project, img),
        }  # fmt: skip

    @staticmethod
    def _neighbour(project, img) -> dict[str, Any] | None:
        """The nearest labelled frame of the image's video with people: its frame, time and people (scaled to
        this image's size), the starting point the page's Copy button offers. None for a still photo."""
        other = project.nearest_labelled_frame(img.id)
        if other is None:
            return None
        src = project.image(other)
        kps = project.keypoints_of(other).copy()
        kps[..., 0] *= img.width / src.width
        kps[..., 1] *= img.height / src.height
        kps[kps[..., 2] <= 0] = 0
        return {"id": other, "frame": src.frame, "time": src.timestamp, "people": kps.tolist()}

    def image_file(self, image_id: int) -> Path:
        return self._project().image_path(self._check(int(image_id)))

    # --- writing ---------------------------------------------------------------------------------------
    def _validated(self, image_id: int, people: list[Person]) -> np.ndarray:
        img = self._project().image(image_id)
        if len(people) > MAX_PEOPLE_PER_IMAGE:  # the cap label imports apply too
            raise InvalidLabels(f"people: {len(people)} people, at most {MAX_PEOPLE_PER_IMAGE} per image")
        kps, problems = check_people(
            [p.keypoints for p in people], self.skeleton, img.width, img.height,
            where=[f"people[{n}]" for n in range(len(people))],
        )  # fmt: skip
        if problems:  # the store's rule: a point a little past the border (a click on the edge) is clipped
            raise InvalidLabels("; ".join(problems))
        for n, person in enumerate(people):
            if not (kps[n, :, 2] > 0).any():
                raise InvalidLabels(f"people[{n}]: no labelled keypoint (delete the person instead)")
            if person.origin not in ORIGINS:
                raise InvalidLabels(f"people[{n}].origin must be one of {', '.join(ORIGINS)}")
        return kps

    def save(
        self, image_id: int, annotator: str, people: list[Person], revision: int | None, *,
        force: bool = False, seconds: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Store the image's people (an empty list: nobody in it); return the new state and progress."""
        image_id = self._check(int(image_id))
        kps = self._validated(image_id, people)
        if seconds is None and people and all(p.seconds is not None for p in people):
            seconds = float(sum(p.seconds for p in people))
        res = self._project().save_labels(
            image_id, kps, source=f"web:{annotator}", round=self.round_id, annotator=annotator,
            revision=revision, force=force, seconds=seconds, people=[(p.seconds, p.clicks) for p in people],
        )  # fmt: skip
        return self._saved(res)

    def skip(
        self, image_id: int, annotator: str, revision: int | None, force: bool = False
    ) -> dict[str, Any]:
        image_id = self._check(int(image_id))
        res = self._project().skip_image(
            image_id, round=self.round_id, annotator=annotator, revision=revision, force=force
        )
        return self._saved(res)

    def _saved(self, res) -> dict[str, Any]:
        state = self.state()
        return {"revision": res.revision, "state": res.state, "new_labels": res.new_labels,
                "progress": self.progress(), "complete": state != "open",
                "next": self.next_text() if state != "open" else ""}  # fmt: skip

    def renew(self, image_id: int, annotator: str) -> dict[str, Any] | None:
        image_id = self._check(int(image_id))
        lease = self._project().take_lease(image_id, annotator, self.opts.lease_seconds)
        return self._lease_view(lease, annotator)

    def release(self, image_id: int, annotator: str) -> None:
        self._project().release_lease(self._check(int(image_id)), annotator)

    def conflict(self, image_id: int) -> dict[str, Any]:
        """What is stored now for an image whose save conflicted (shown next to the page's version)."""
        project = self._project()
        rows = sorted(project.labels_of(image_id), key=lambda r: r.person)
        img = project.image(image_id)
        return {"revision": img.revision, "state": img.state,
                "labels": [r.keypoints.tolist() for r in rows],
                "annotator": rows[0].annotator if rows else None}  # fmt: skip
