"""The project store: one SQLite database (`project.db`, WAL mode) per active-learning project.

Holds images (stable ids, paths, content hashes, sizes, states), labels (per person (K, 3) keypoints with
who labelled them, when, in which round and how long it took), imports (to make file imports idempotent),
rounds with their chosen items, and models (checkpoint, content sha1, metrics). Every write is one transaction
that validates its input first (inside the transaction, against the state it will modify): bad input raises
`StoreError` and leaves the database unchanged. Write transactions start with `BEGIN IMMEDIATE` and
connections wait up to `BUSY_TIMEOUT_S` for the write lock, so concurrent writers queue instead of failing
with "database is locked". Environment failures during a write (disk full, read-only file, I/O error) raise
`StoreError` naming the database too, after the transaction was rolled back.

Labels keep their history: an image has at most one set of *current* label rows (`superseded_at IS NULL`).
Storing labels whose content (the multiset of people's keypoints, compared within `LABEL_TOLERANCE_PX`)
equals the current ones is a no-op whatever their source or file name; different content replaces the
current rows, which stay in the table marked superseded.

Rounds move through `ROUND_MOVES` only (open -> labelled -> trained -> evaluated -> closed); every method that
changes a round's state checks that table.

The schema, its migrations and the checks made on opening are `project/schema.py`'s (an empty, foreign,
corrupt or newer file is refused and left byte-for-byte unchanged); only `Project.create` creates a schema. `Project.open(folder, readonly=True)` never writes (an older schema is
migrated in memory). A `Project` holds one connection: use it from one thread (open one per process/thread).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import faults
from ..fileio import _strict, file_sha1
from ..pose.coco import CocoKeypoints, Frame, check_people, save_coco
from ..pose.skeleton import Skeleton
from .leases import LabellingStore
from .matching import ImageMatcher
from .schema import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    IMAGE_STATES,
    MIGRATIONS,
    ROUND_STATES,
    SUBFOLDERS,
    StoreError,
    _check_file,
    _connect,
    _environment_error,
    _folder_writable,
    _inspect,
    _migrate,
    _migrated_in_memory,
    _open_readonly,
    _setup,
)

# The only legal round moves: state -> the states it may move to. Every method that changes a round's state
# goes through `Project._move_round`, which refuses anything else (naming from and to).
ROUND_MOVES: dict[str, tuple[str, ...]] = {
    "open": ("labelled",),
    "labelled": ("trained",),
    "trained": ("evaluated",),
    "evaluated": ("closed",),
    "closed": (),
}
# Two labellings of a person are the same when their visibility flags are equal and every coordinate is
# within this many pixels (COCO exports round to 0.01 px, and keypoints pass through float32 on the way).
LABEL_TOLERANCE_PX = 0.01


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str
    content_hash: str | None
    width: int
    height: int
    state: str
    round: int | None
    revision: int = 0  # writes to the image's labels / state by labelling (a save must name the one it saw)
    video: str | None = None  # footage: the video the image is a frame of (None: a still photo)
    frame: int | None = None  # its frame index in that video
    timestamp: float | None = None  # its time in that video, seconds


@dataclass(frozen=True)
class LabelRow:
    image_id: int
    person: int
    keypoints: np.ndarray  # (K, 3) float64
    source: str
    created_at: str
    round: int | None
    seconds: float | None  # the labelling time of the whole image (the same on each of its person rows)
    superseded_at: str | None = None  # None: a current label; else when newer labels replaced it
    annotator: str | None = None  # who labelled it (a person's name, a Label Studio user), when known
    person_seconds: float | None = None  # time spent on this person alone (the labelling page records it)
    clicks: int | None = None  # pointer actions spent on this person (the labelling page records it)


@dataclass(frozen=True)
class RoundInfo:
    id: int
    strategy: str
    params: dict[str, Any]
    budget: int
    state: str
    model_id: int | None
    created_at: str
    updated_at: str
    items: list[tuple[int, int, float | None]]  # (image_id, rank, score), by rank


@dataclass(frozen=True)
class ModelInfo:
    id: int
    checkpoint: str
    round: int | None
    train_size: int
    metrics: dict[str, Any]
    created_at: str
    sha1: str | None = None  # the checkpoint file's sha1 (its fingerprint), when recorded


@dataclass(frozen=True)
class ImportResult:
    new_labels: int  # label rows added (replacements included); 0 when the file brought nothing new
    already_imported: bool  # this very file (same bytes) was imported before
    message: str
    replaced: int = 0  # current label rows the import superseded (kept as history)
    round_completed: bool = (
        False  # with complete_round: the round moved open -> labelled in the same transaction
    )
    skipped: int = 0  # queued images of the round the file marked skipped


class RoundNotOpen(StoreError):
    """A write that needs an open round met one that was completed (or moved on) meanwhile."""


@dataclass(frozen=True)
class _Written:
    """What one label write changed."""

    new_rows: int = 0
    superseded: int = 0
    images: int = 0  # images whose labels or state changed

    @property
    def changed(self) -> bool:
        return bool(self.new_rows or self.superseded or self.images)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _relative(path: str | Path, folder: Path) -> str:
    """Return `path` relative to `folder` when it lies inside it, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            return str(path)
    return str(path)


def _image_rows(images: Sequence[tuple], folder: Path, taken: set[int]) -> tuple[list[tuple], list[str]]:
    """Return (rows of the images table, problems) for (path, w, h, hash, id | None[, video, frame, time])."""
    rows, problems = [], []
    given = [int(t[4]) for t in images if t[4] is not None]
    seen: set[int] = set(taken)
    next_id = max([*given, *taken], default=0) + 1
    for n, (path, width, height, chash, image_id, *footage) in enumerate(images):
        video, frame, stamp = (list(footage) + [None, None, None])[:3]
        if image_id is None:
            image_id, next_id = next_id, next_id + 1
        image_id = int(image_id)
        if image_id in seen:
            problems.append(f"image id {image_id} ({path}): duplicate id")
        seen.add(image_id)
        if not str(path):
            problems.append(f"images[{n}] (id {image_id}): empty path")
        if int(width) <= 0 or int(height) <= 0:
            problems.append(f"image id {image_id} ({path}): non-positive size {width}x{height}")
        if frame is not None and int(frame) < 0:
            problems.append(f"image id {image_id} ({path}): negative frame index {frame}")
        rows.append((image_id, _relative(path, folder), chash, int(width), int(height), video,
                     None if frame is None else int(frame), None if stamp is None else float(stamp)))  # fmt: skip
    return rows, problems


class Project(LabellingStore):
    """An active-learning project folder: `project.db` plus checkpoints/, caches/ and exports/."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, readonly: bool = False):
        self.folder = Path(folder).absolute()  # stored paths stay valid whatever the working directory
        self.db_path = folder / DB_NAME
        self.readonly = readonly
        self._conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        if "skeleton" not in meta:
            raise StoreError(f"{self.db_path}: not an activepose project (no skeleton in meta)")
        self.skeleton = Skeleton.from_dict(json.loads(meta["skeleton"]))
        self.meta = meta

    # --- creation and opening ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: str | Path,
        skeleton: Skeleton,
        images: Sequence[tuple],
        meta: Mapping[str, str] | None = None,
    ) -> Project:
        """Create a project in `folder` with `images` as (path, width, height, content_hash, id | None), each
        optionally followed by (video, frame, timestamp) for a frame of footage.

        Given ids are kept (the pool file's stable ids); images without one get ids after the largest
        given id, in order. The database is built under a temporary name and linked into place, so a crash
        never leaves a half-created project and two concurrent creates cannot both succeed.
        """
        folder = Path(folder)
        db = folder / DB_NAME
        if db.exists():
            raise StoreError(f"{folder}: a project already exists here ({db})")
        rows, problems = _image_rows(images, folder, set())
        if problems:
            raise StoreError(f"{folder}: cannot create the project", problems)
        folder.mkdir(parents=True, exist_ok=True)
        for sub in SUBFOLDERS:
            (folder / sub).mkdir(exist_ok=True)
        tmp = folder / f".{DB_NAME}.{os.getpid()}.tmp"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        conn = _connect(tmp)
        try:
            _migrate(conn, tmp, MIGRATIONS)
            conn.execute("BEGIN IMMEDIATE")
            values = {"skeleton": json.dumps(skeleton.to_dict()), "created_at": _now(), **(meta or {})}
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", values.items())
            conn.executemany(
                "INSERT INTO images (id, path, content_hash, width, height, video, frame, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints and removes the WAL: the single file is the whole database
        try:
            os.link(tmp, db)
        except FileExistsError:
            raise StoreError(f"{folder}: a project already exists here ({db})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path, readonly: bool = False) -> Project:
        """Open the project in `folder`, migrating an older schema; refuse a newer one.

        Refused with a one-line StoreError naming the file, which is left byte-for-byte unchanged: no
        `project.db`; an empty file or an SQLite database without activepose's schema (only `create` makes
        one); a file that is not an SQLite database or fails SQLite's quick integrity check (corrupt,
        truncated); a newer schema; and, unless `readonly`, a folder or database file that is not writable.

        `readonly=True` never writes (for `status` and other read commands, and read-only folders): the file
        is opened with SQLite's `mode=ro` (in a writable folder SQLite may still create the empty `-wal` /
        `-shm` companions a WAL reader needs; in a read-only folder it is opened `immutable`), an older
        schema is migrated in memory only, and every write method raises StoreError "read-only".
        """
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            raise StoreError(f"{folder}: no activepose project here ({DB_NAME} not found)")
        _check_file(db)
        if not readonly and not _folder_writable(db):
            raise StoreError(
                f"{db}: read-only (folder or file not writable); open it read-only to look at it"
            )
        try:
            conn = (
                _open_readonly(db)
                if readonly
                else sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            )
        except sqlite3.Error as exc:
            raise _environment_error(exc, db, "the file was not changed") or StoreError(
                f"{db}: cannot open the database ({exc})"
            ) from None
        try:
            version = _inspect(conn, db, len(MIGRATIONS))  # reads only: a refusal changes nothing
            if readonly:
                if version < len(MIGRATIONS):
                    conn = _migrated_in_memory(conn, db)
                conn.execute("PRAGMA query_only = ON")
            else:
                _setup(conn, db)
                _migrate(conn, db, MIGRATIONS)
            return cls(folder, conn, readonly=readonly)
        except sqlite3.Error as exc:
            conn.close()
            raise _environment_error(exc, db, "nothing changed") or StoreError(
                f"{db}: cannot open the database ({exc})"
            ) from None
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def is_own_database(self, path: str | Path) -> bool:
        """True when `path` is this project's database or its -wal / -shm companion (by device and inode).

        Such a file must never be read with `open()`: closing the descriptor drops every SQLite lock this
        process holds on the database (see `_check_file`), which can lose another process's commits.
        """
        try:
            given = os.stat(path)
        except OSError:
            return False
        for suffix in ("", "-wal", "-shm"):
            try:
                own = os.stat(f"{self.db_path}{suffix}")
            except OSError:
                continue
            if (own.st_dev, own.st_ino) == (given.st_dev, given.st_ino):
                return True
        return False

    def check_not_own_database(self, path: str | Path) -> None:
        """Refuse (StoreError) to read `path` as an input file when `is_own_database(path)`."""
        if self.is_own_database(path):
            raise StoreError(f"{path}: this is the project's own database, not a labels file; nothing read")

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the write lock up front (waiting for other writers).

        Environment failures (disk full, read-only file, I/O error, corruption) roll back and raise a
        one-line StoreError naming the database; other SQLite errors are bugs and propagate as they are.
        """
        if self.readonly:
            raise StoreError(f"{self.db_path}: read-only (folder or file not writable); nothing written")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            problem = _environment_error(exc, self.db_path, "nothing written")
            if problem is None:
                raise
            raise problem from None
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:  # SQLite rolls back by itself on some errors (e.g. disk full)
                self._conn.execute("ROLLBACK")
            problem = (
                _environment_error(exc, self.db_path, "nothing written")
                if isinstance(exc, sqlite3.Error)
                else None
            )
            if problem is None:
                raise
            raise problem from None

    # --- images ------------------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRow:
        row = self._conn.execute(
            "SELECT id, path, content_hash, width, height, state, round, revision, video, frame, timestamp "
            "FROM images WHERE id = ?",
            (int(image_id),),
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.folder}: no image with id {image_id}")
        return ImageRow(*row)

    def image_path(self, image_id: int) -> Path:
        p = Path(self.image(image_id).path)
        return p if p.is_absolute() else self.folder / p

    def _ids(self, state: str) -> list[int]:
        return [
            r[0] for r in self._conn.execute("SELECT id FROM images WHERE state = ? ORDER BY id", (state,))
        ]

    def image_ids(self) -> list[int]:
        """Return every image id of the project, in id order, whatever its state."""
        return [r[0] for r in self._conn.execute("SELECT id FROM images ORDER BY id")]

    def labelled_ids(self) -> list[int]:
        return self._ids("labelled")

    def unlabelled_ids(self) -> list[int]:
        return self._ids("unlabelled")

    def test_ids(self) -> list[int]:
        """Return the ids of test-only images (never selected or labelled for training)."""
        return self._ids("test")

    def queued_ids(self) -> list[int]:
        """Return the ids of images chosen in the open round and not labelled yet."""
        return self._ids("queued")

    def nearest_labelled_frame(self, image_id: int) -> int | None:
        """Return the labelled frame of the same video nearest to image `image_id` (by frame index) that has
        people in it, or None (a still photo, or no such frame)."""
        row = self.image(image_id)
        if row.video is None or row.frame is None:
            return None
        found = self._conn.execute(
            "SELECT id FROM images WHERE video = ? AND state = 'labelled' AND id != ? AND frame IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM labels l WHERE l.image_id = images.id AND l.superseded_at IS NULL) "
            "ORDER BY ABS(frame - ?), frame, id LIMIT 1",
            (row.video, int(image_id), int(row.frame)),
        ).fetchone()
        return None if found is None else int(found[0])

    def frames_per_video(self, image_ids: Sequence[int] | None = None) -> dict[str, int]:
        """Return {video: images} over `image_ids` (default: every image), most first; stills are not counted."""
        rows = self._conn.execute(
            "SELECT id, video FROM images WHERE video IS NOT NULL ORDER BY id"
        ).fetchall()
        wanted = None if image_ids is None else {int(i) for i in image_ids}
        out: dict[str, int] = {}
        for image_id, video in rows:
            if wanted is None or image_id in wanted:
                out[video] = out.get(video, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def counts(self) -> dict[str, int]:
        """Return the number of images in each state (every state present, zeros included)."""
        out = dict.fromkeys(IMAGE_STATES, 0)
        out.update(self._conn.execute("SELECT state, COUNT(*) FROM images GROUP BY state"))
        return out

    def add_images(self, images: Sequence[tuple]) -> list[int]:
        """Add unlabelled pool images, as `create` takes them (ids None: after the largest id); return their ids.

        All-or-nothing: a duplicate id, an empty path or a bad size raises StoreError and adds nothing.
        """
        with self._write() as c:
            taken = {int(i) for (i,) in c.execute("SELECT id FROM images")}
            rows, problems = _image_rows(images, self.folder, taken)
            if problems:
                raise StoreError(f"{self.folder}: no images added", problems)
            c.executemany(
                "INSERT INTO images (id, path, content_hash, width, height, video, frame, timestamp) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return [r[0] for r in rows]

    def videos(self) -> list[str]:
        """Names of the videos the project's images come from."""
        return [
            v
            for (v,) in self._conn.execute(
                "SELECT DISTINCT video FROM images WHERE video IS NOT NULL ORDER BY video"
            )
        ]

    def set_image_state(self, image_ids: Sequence[int], state: str) -> None:
        """Mark images 'skipped' / 'test' / 'unlabelled' (labelled and queued come from labels and rounds)."""
        if state not in ("unlabelled", "skipped", "test"):
            raise StoreError(f"cannot set image state {state!r} directly (use add_labels / open_round)")
        with self._write() as c:
            problems = self._unknown(c, image_ids)
            if problems:
                raise StoreError("set_image_state: nothing changed", problems)
            c.executemany(
                "UPDATE images SET state = ?, round = NULL WHERE id = ?", [(state, int(i)) for i in image_ids]
            )

    def skip_images(self, round_id: int, image_ids: Sequence[int], complete_round: bool = False) -> int:
        """Mark queued images of round `round_id` 'skipped' (cannot be labelled); return how many changed.

        A skipped image counts as done when deciding whether the round is fully labelled, and is never
        selected again. All-or-nothing: ids not in the round, or already labelled, raise StoreError and change
        nothing. Skipping an already skipped image is a no-op. With `complete_round`, the round moves
        open -> labelled in the same transaction when every one of its images is now labelled or skipped
        (read `round(round_id).state` to see whether it did).
        """
        with self._write() as c:
            self._check_open(c, round_id, "only an open round's images can be skipped")
            items = {
                i
                for (i,) in c.execute("SELECT image_id FROM round_items WHERE round_id = ?", (int(round_id),))
            }
            problems, todo = [], []
            for image_id in dict.fromkeys(int(i) for i in image_ids):
                state = c.execute("SELECT state FROM images WHERE id = ?", (image_id,)).fetchone()
                if image_id not in items:
                    problems.append(f"image id {image_id}: not in round {round_id}")
                elif state[0] == "labelled":
                    problems.append(f"image id {image_id}: already labelled")
                elif state[0] == "queued":
                    todo.append(image_id)
            if problems:
                raise StoreError(f"{self.folder}: nothing skipped", problems)
            self._mark_skipped(c, todo)
            if complete_round:
                self._complete_round(c, int(round_id))
        return len(todo)

    def _check_open(self, c: sqlite3.Connection, round_id: int, why: str) -> None:
        """Raise StoreError when round `round_id` does not exist, RoundNotOpen when it is not open."""
        row = c.execute("SELECT state FROM rounds WHERE id = ?", (int(round_id),)).fetchone()
        if row is None:
            raise StoreError(f"{self.folder}: no round {round_id}")
        if row[0] != "open":
            raise RoundNotOpen(f"{self.folder}: round {round_id} is {row[0]!r}, no longer open; {why}")

    @staticmethod
    def _mark_skipped(c: sqlite3.Connection, image_ids: Sequence[int]) -> int:
        """Mark those of `image_ids` that are queued 'skipped' (a write: the revision grows); return how many."""
        return sum(
            c.execute(
                "UPDATE images SET state = 'skipped', revision = revision + 1 WHERE id = ? AND state = 'queued'",
                (image_id,),
            ).rowcount
            for image_id in dict.fromkeys(int(i) for i in image_ids)
        )

    @staticmethod
    def _unknown(c: sqlite3.Connection, image_ids: Sequence[int]) -> list[str]:
        return [
            f"image id {i}: unknown image"
            for i in image_ids
            if c.execute("SELECT 1 FROM images WHERE id = ?", (int(i),)).fetchone() is None
        ]

    # --- labels ------------------------------------------------------------------------------------
    def add_labels(
        self,
        labels: Mapping[int, Any],
        source: str,
        round: int | None = None,
        seconds: float | Mapping[int, float] | None = None,
        complete_round: bool = False,
        *,
        annotator: str | Mapping[int, str] | None = None,
        people: Mapping[int, Sequence[tuple[float | None, int | None]]] | None = None,
    ) -> int:
        """Store {image_id: (N, K, 3) keypoints} from `source`; return the number of new label rows.

        Each image's labels replace its current ones, which are kept as history (marked superseded, see
        `labels_of(history=True)`), unless they have the same content: the same number of people with the same
        keypoints, in any person order, within `LABEL_TOLERANCE_PX`, whatever the source. Same content is a
        no-op (0 new rows, nothing written; an image not yet 'labelled' only becomes 'labelled'), so the same
        labels re-imported under another file name are not stored twice. An empty (0, K, 3) array records
        the image as labelled with nobody in it.

        All-or-nothing: unknown or test-only images, wrong shapes or keypoint counts, non-finite values,
        visibility flags other than 0/1/2 and labelled keypoints outside the image (beyond the margin of
        `coco.OUTSIDE_TOLERANCE`) raise StoreError listing every problem, and nothing is written. Keypoints a
        little past the border are clipped onto it, as `coco.load_coco` does. `seconds` is the labelling time,
        per image or one number for every image (stored on each of the image's person rows).

        Round attribution: new rows belong to `round`, or, when it is None, to the image's round (the round
        that queued it or last labelled it; None for images outside any round), so a correction imported
        later stays with the round the image was chosen in. The image's round becomes `round` when given.

        With `complete_round` (needs `round`), the round moves open -> labelled in the same transaction when
        every one of its images is labelled or skipped: labelling and the state change can never be split by
        a crash. Read `round(round).state` to see whether it did.

        `annotator` (one name, or one per image) says who labelled; `people` {image_id: [(seconds, clicks)
        per person]} what each person cost (the labelling page measures both).
        """
        if complete_round and round is None:
            raise StoreError("add_labels: complete_round needs the round")
        with self._write() as c:
            written = self._add_labels(c, labels, source, round, seconds, None, annotator, people)
            if complete_round:
                self._complete_round(c, int(round))
            return written.new_rows

    def _add_labels(
        self,
        c: sqlite3.Connection,
        labels: Mapping[int, Any],
        source: str,
        round: int | None,
        seconds: float | Mapping[int, float] | None,
        import_id: int | None,
        annotator: str | Mapping[int, str] | None = None,
        people: Mapping[int, Sequence[tuple[float | None, int | None]]] | None = None,
    ) -> _Written:
        problems: list[str] = []
        if not isinstance(source, str) or not source:
            problems.append("source must be a non-empty string (e.g. 'simulated', 'file:NAME', 'human:USER')")
        if (
            round is not None
            and c.execute("SELECT 1 FROM rounds WHERE id = ?", (int(round),)).fetchone() is None
        ):
            problems.append(f"round {round}: no such round")
        todo: list[tuple[int, np.ndarray, float | None, int | None, str | None, list]] = []
        state_only: list[int] = []
        for raw_id, raw in labels.items():
            try:
                image_id = int(raw_id)
            except (TypeError, ValueError):
                problems.append(f"image id {raw_id!r}: not an integer")
                continue
            row = c.execute(
                "SELECT width, height, state, round FROM images WHERE id = ?", (image_id,)
            ).fetchone()
            if row is None:
                problems.append(f"image id {image_id}: unknown image")
                continue
            width, height, state, image_round = row
            if state == "test":
                problems.append(f"image id {image_id}: test-only image, not labelled for training")
                continue
            kps, found = check_people(raw, self.skeleton, width, height, where=f"image id {image_id}")
            if found:  # shapes, types, NaN, visibility, outside the image; a little past the border: clipped
                problems += found
                continue
            current = [
                np.asarray(json.loads(r[0]), dtype=np.float64)
                for r in c.execute(
                    "SELECT keypoints FROM labels WHERE image_id = ? AND superseded_at IS NULL ORDER BY person",
                    (image_id,),
                )
            ]
            if same_people(current, kps):  # already stored, from whichever source or file
                if state != "labelled":
                    state_only.append(image_id)
                continue
            secs = seconds.get(image_id, seconds.get(raw_id)) if isinstance(seconds, Mapping) else seconds
            if secs is not None and (not math.isfinite(float(secs)) or float(secs) < 0):
                problems.append(f"image id {image_id}: seconds must be a finite number >= 0, got {secs!r}")
                continue
            row_round = int(round) if round is not None else image_round
            who = annotator.get(image_id) if isinstance(annotator, Mapping) else annotator
            if who is not None and (not isinstance(who, str) or not who.strip()):
                problems.append(f"image id {image_id}: annotator must be a non-empty string, got {who!r}")
                continue
            costs = list((people or {}).get(image_id) or [(None, None)] * len(kps))
            if len(costs) != len(kps):
                problems.append(f"image id {image_id}: {len(costs)} per-person cost(s) for {len(kps)} people")
                continue
            bad = [
                (ps, cl) for ps, cl in costs
                if (ps is not None and (not math.isfinite(float(ps)) or float(ps) < 0))
                or (cl is not None and int(cl) < 0)
            ]  # fmt: skip
            if bad:
                problems.append(
                    f"image id {image_id}: per-person seconds / clicks must be >= 0, got {bad[0]}"
                )
                continue
            todo.append((image_id, kps, None if secs is None else float(secs), row_round, who, costs))
        if problems:
            raise StoreError(f"{self.folder}: labels refused, nothing stored", problems)
        now, n, superseded = _now(), 0, 0
        for image_id, kps, secs, row_round, who, costs in todo:
            superseded += c.execute(
                "UPDATE labels SET superseded_at = ? WHERE image_id = ? AND superseded_at IS NULL",
                (now, image_id),
            ).rowcount
            c.executemany(
                "INSERT INTO labels (image_id, person, keypoints, source, created_at, round, seconds, import_id, "
                "annotator, person_seconds, clicks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        image_id,
                        p,
                        json.dumps(kps[p].tolist()),
                        source,
                        now,
                        row_round,
                        secs,
                        import_id,
                        who,
                        None if costs[p][0] is None else float(costs[p][0]),
                        None if costs[p][1] is None else int(costs[p][1]),
                    )
                    for p in range(len(kps))
                ],  # fmt: skip
            )
            n += len(kps)
            c.execute(
                "UPDATE images SET state = 'labelled', round = COALESCE(?, round), revision = revision + 1 "
                "WHERE id = ?",
                (round, image_id),
            )
            faults.point("label")  # a crash here must leave no partial labelling behind
        c.executemany(
            "UPDATE images SET state = 'labelled', round = COALESCE(?, round), revision = revision + 1 "
            "WHERE id = ?",
            [(round, i) for i in state_only],
        )
        return _Written(n, superseded, len(todo) + len(state_only))

    def labels_of(self, image_id: int, history: bool = False) -> list[LabelRow]:
        """Return the image's current person labels, oldest first; with `history`, superseded ones too."""
        where = "" if history else " AND superseded_at IS NULL"
        rows = self._conn.execute(
            "SELECT image_id, person, keypoints, source, created_at, round, seconds, superseded_at, annotator, "
            f"person_seconds, clicks FROM labels WHERE image_id = ?{where} ORDER BY id",
            (int(image_id),),
        )
        return [
            LabelRow(i, p, np.asarray(json.loads(k), dtype=np.float64), s, t, r, sec, sup, who, psec, clicks)
            for i, p, k, s, t, r, sec, sup, who, psec, clicks in rows
        ]

    def keypoints_of(self, image_id: int) -> np.ndarray:
        """Return the image's current (N, K, 3) keypoints, by person ((0, K, 3) when none)."""
        rows = sorted(self.labels_of(image_id), key=lambda r: r.person)
        if not rows:
            return np.zeros((0, self.skeleton.num_keypoints, 3))
        return np.stack([r.keypoints for r in rows])

    # --- imports -----------------------------------------------------------------------------------
    def import_frames(
        self,
        path: str | Path,
        digest: str,
        data: CocoKeypoints,
        source: str,
        round: int | None = None,
        include_empty: bool = False,
        complete_round: bool = False,
    ) -> ImportResult:
        """Store the labels of a parsed labels file (`interop.coco.import_coco` reads and checks it) as one import.

        Each file image maps to a project image by `ImageMatcher`'s rule (inside the transaction); an
        unmatched image is an error and nothing is stored. Images without people are skipped unless
        `include_empty`. Idempotent by `digest` (the file's content hash) and by label content, as `_import`.
        """
        path = Path(path)

        def labels_of_file(c: sqlite3.Connection) -> dict[int, np.ndarray]:
            mapping, problems = self._map_frames(c, data)
            if problems:
                raise StoreError(f"{path}: cannot import, nothing stored", problems)
            return {mapping[f.image_id]: f.keypoints for f in data.frames if f.num_people or include_empty}

        return self._import(path, digest, labels_of_file, source, round, complete_round)

    def import_labels(
        self,
        path: str | Path,
        labels: Mapping[int, Any],
        source: str,
        round: int | None = None,
        complete_round: bool = False,
        content_hash: str | None = None,
        *,
        seconds: Mapping[int, float] | None = None,
        annotators: Mapping[int, str] | None = None,
        skip: Sequence[int] = (),
    ) -> ImportResult:
        """Store labels read from the file `path` (by another importer, e.g. Label Studio) as one import.

        Idempotent by the file's content hash (`content_hash`, default: the sha1 of the file's bytes, read
        now): a file imported before adds nothing. Otherwise exactly `import_coco`'s rules after parsing:
        with `round` every image must belong to it, labels are stored as `add_labels` stores them, an import
        that changes nothing is not recorded, and `complete_round` completes the round in the same
        transaction. `seconds` {image_id: labelling time} and `annotators` {image_id: who} are stored with the
        labels; `skip` (needs `round`) marks those of the round's images that are still queued 'skipped' in
        the same transaction (the file says they cannot be labelled; labelled or skipped ones are unchanged).
        """
        path = Path(path)
        self.check_not_own_database(path)
        if content_hash is None:
            try:
                content_hash = file_sha1(path)
            except OSError as exc:
                raise StoreError(f"{path}: cannot import: {exc}") from exc
        if skip and round is None:
            raise StoreError(f"{path}: skipping images needs the round")
        extra = {"seconds": seconds, "annotators": annotators, "skip": skip}
        return self._import(
            path, content_hash, lambda c: dict(labels), source, round, complete_round, **extra
        )

    def _import(
        self,
        path: Path,
        digest: str,
        read_labels: Any,
        source: str,
        round: int | None,
        complete_round: bool,
        seconds: Mapping[int, float] | None = None,
        annotators: Mapping[int, str] | None = None,
        skip: Sequence[int] = (),
    ) -> ImportResult:
        if complete_round and round is None:
            raise StoreError(f"{path}: complete_round needs the round")
        with self._write() as c:
            done = c.execute(
                "SELECT name, imported_at FROM imports WHERE content_hash = ?", (digest,)
            ).fetchone()
            if done is not None:
                completed = self._complete_round(c, int(round)) if complete_round else False
                msg = f"{path}: already imported (as {done[0]!r} at {done[1]}); 0 new labels"
                return ImportResult(0, True, msg, round_completed=completed)
            labels = read_labels(c)
            if round is not None:  # a round's export must come back with that round's images only
                items = {
                    i
                    for (i,) in c.execute(
                        "SELECT image_id FROM round_items WHERE round_id = ?", (int(round),)
                    )
                }
                outside = sorted({int(i) for i in [*labels, *skip] if int(i) not in items})
                if outside:
                    raise StoreError(
                        f"{path}: cannot import, nothing stored",
                        [f"image id {i}: not in round {round}" for i in outside],
                    )
            cur = c.execute(
                "INSERT INTO imports (content_hash, name, imported_at, n_labels) VALUES (?, ?, ?, 0)",
                (digest, path.name, _now()),
            )
            import_id = cur.lastrowid
            try:
                written = self._add_labels(c, labels, source, round, seconds, import_id, annotators)
            except StoreError as exc:
                raise StoreError(f"{path}: cannot import, nothing stored", exc.problems) from None
            n_skipped = self._mark_skipped(c, skip)
            if written.changed or n_skipped:
                c.execute("UPDATE imports SET n_labels = ? WHERE id = ?", (written.new_rows, import_id))
            else:  # nothing new (the same labels under another file name): leave no trace
                c.execute("DELETE FROM imports WHERE id = ?", (import_id,))
            completed = self._complete_round(c, int(round)) if complete_round else False
        n = written.new_rows
        if not written.changed and not n_skipped:
            msg = f"{path}: every label of its {len(labels)} image(s) is already stored; 0 new labels"
        else:
            msg = f"{path}: imported {n} new person label(s) from {len(labels)} image(s)"
            if written.superseded:
                msg += f", replacing {written.superseded} earlier person label(s) (kept as history)"
            if n_skipped:
                msg += f"; {n_skipped} image(s) marked skipped"
        if completed:
            msg += f"; round {round} is labelled"
        return ImportResult(n, False, msg, written.superseded, completed, n_skipped)

    def _map_frames(self, c: sqlite3.Connection, data: CocoKeypoints) -> tuple[dict[int, int], list[str]]:
        """Map a COCO file's image ids to the project's by `ImageMatcher`'s rule (id, name, then content)."""
        matcher = ImageMatcher(c.execute("SELECT id, path, video, frame FROM images"))
        mapping, problems = {}, []
        for f in data.frames:
            fp = data.image_path(f)

            def by_content(fp: Path = fp) -> list[int]:
                if not fp.is_file() or self.is_own_database(fp):  # never hash the database itself
                    return []
                return [
                    r[0] for r in c.execute("SELECT id FROM images WHERE content_hash = ?", (file_sha1(fp),))
                ]

            found = matcher.match(f.image_id, [Path(f.file_name).name], by_content, (f.video, f.frame))
            if found.image_id is not None:
                mapping[f.image_id] = found.image_id
                continue
            why = f"{found.ambiguous} project images share that file name" if found.ambiguous else "no match"
            problems.append(
                f"image id {f.image_id} ({f.file_name!r}): no project image by id, name or hash ({why})"
            )
        return mapping, problems

    # --- rounds ------------------------------------------------------------------------------------
    def open_round(
        self,
        strategy: str,
        params: Mapping[str, Any],
        chosen: Sequence[tuple[int, float | None]],
        budget: int | None = None,
    ) -> int:
        """Open the next round with `chosen` (image_id, score) in rank order; return its number.

        Refused (nothing written) while another round is not closed, or when an id is unknown, repeated
        or not unlabelled. The chosen images become 'queued' in this round.
        """
        budget = len(chosen) if budget is None else int(budget)
        with self._write() as c:
            active = c.execute("SELECT id, state FROM rounds WHERE state != 'closed'").fetchone()
            if active is not None:
                raise StoreError(
                    f"{self.folder}: round {active[0]} is still {active[1]!r}; close it before opening another"
                )
            problems, seen = [], set()
            for image_id, score in chosen:
                image_id = int(image_id)
                row = c.execute("SELECT state FROM images WHERE id = ?", (image_id,)).fetchone()
                if row is None:
                    problems.append(f"image id {image_id}: unknown image")
                elif image_id in seen:
                    problems.append(f"image id {image_id}: chosen twice")
                elif row[0] != "unlabelled":
                    problems.append(f"image id {image_id}: is {row[0]}, not unlabelled")
                if score is not None and not math.isfinite(float(score)):
                    problems.append(f"image id {image_id}: score {score!r} is not finite")
                seen.add(image_id)
            if len(chosen) > budget:
                problems.append(f"{len(chosen)} images chosen for a budget of {budget}")
            if problems:
                raise StoreError(f"{self.folder}: round not opened", problems)
            now = _now()
            cur = c.execute(
                "INSERT INTO rounds (strategy, params, budget, state, created_at, updated_at) "
                "VALUES (?, ?, ?, 'open', ?, ?)",
                (strategy, json.dumps(dict(params), sort_keys=True), budget, now, now),
            )
            r = int(cur.lastrowid)
            c.executemany(
                "INSERT INTO round_items (round_id, image_id, rank, score) VALUES (?, ?, ?, ?)",
                [(r, int(i), rank, None if s is None else float(s)) for rank, (i, s) in enumerate(chosen)],
            )
            c.executemany(
                "UPDATE images SET state = 'queued', round = ? WHERE id = ?", [(r, int(i)) for i, _ in chosen]
            )
        return r

    def round(self, r: int) -> RoundInfo:
        row = self._conn.execute(
            "SELECT id, strategy, params, budget, state, model_id, created_at, updated_at FROM rounds WHERE id = ?",
            (int(r),),
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.folder}: no round {r}")
        items = [
            (i, k, s)
            for i, k, s in self._conn.execute(
                "SELECT image_id, rank, score FROM round_items WHERE round_id = ? ORDER BY rank", (int(r),)
            )
        ]
        return RoundInfo(row[0], row[1], json.loads(row[2]), *row[3:], items=items)

    def rounds(self) -> list[RoundInfo]:
        return [self.round(r) for (r,) in self._conn.execute("SELECT id FROM rounds ORDER BY id").fetchall()]

    def current_round(self) -> RoundInfo | None:
        """Return the round that is not closed, if any."""
        row = self._conn.execute("SELECT id FROM rounds WHERE state != 'closed'").fetchone()
        return None if row is None else self.round(row[0])

    def _move_round(self, c: sqlite3.Connection, r: int, to: str, model_id: int | None = None) -> bool:
        """Move round `r` to `to` inside transaction `c` if `ROUND_MOVES` allows it; return whether it moved.

        Asking for the state the round already has (and its model, if given) is a no-op (False). Moving to
        'labelled' needs every image of the round labelled or skipped; 'trained' needs a model (`model_id`,
        or one the round already has).
        """
        row = c.execute("SELECT state, model_id FROM rounds WHERE id = ?", (int(r),)).fetchone()
        if row is None:
            raise StoreError(f"{self.folder}: no round {r}")
        frm, current_model = row
        if frm == to and (model_id is None or model_id == current_model):
            return False
        if to not in ROUND_MOVES.get(frm, ()):
            legal = ", ".join(repr(s) for s in ROUND_MOVES.get(frm, ())) or "nothing (final)"
            raise StoreError(
                f"{self.folder}: round {r} cannot move from {frm!r} to {to!r} (from {frm!r} only to {legal})"
            )
        if (
            model_id is not None
            and c.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is None
        ):
            raise StoreError(f"{self.folder}: no model {model_id}")
        if to == "labelled":
            left = [
                i
                for (i,) in c.execute(
                    "SELECT ri.image_id FROM round_items ri JOIN images i ON i.id = ri.image_id "
                    "WHERE ri.round_id = ? AND i.state NOT IN ('labelled', 'skipped') ORDER BY ri.rank",
                    (int(r),),
                )
            ]
            if left:
                raise StoreError(
                    f"{self.folder}: round {r} cannot move from {frm!r} to {to!r}: "
                    f"{len(left)} of its image(s) are neither labelled nor skipped",
                    [f"image id {i}: not labelled" for i in left],
                )
        if to == "trained" and model_id is None and current_model is None:
            raise StoreError(f"{self.folder}: round {r} cannot move from {frm!r} to {to!r} without a model")
        c.execute(
            "UPDATE rounds SET state = ?, model_id = COALESCE(?, model_id), updated_at = ? WHERE id = ?",
            (to, model_id, _now(), int(r)),
        )
        return True

    def set_round_state(self, r: int, state: str, model_id: int | None = None) -> None:
        """Move round `r` to `state` along `ROUND_MOVES` (open -> labelled -> trained -> evaluated -> closed).

        Any other move (backwards, skipping a state, out of 'closed') raises StoreError naming from and to;
        asking for the current state is a no-op. 'labelled' needs all the round's images labelled or
        skipped, 'trained' a model (`model_id` records it on the round). Prefer the methods that change the
        state together with what justifies it: `add_labels(..., complete_round=True)` /
        `complete_round_if_done`, `add_model(..., mark_trained=True)`, `record_evaluation`, `close_round`.
        """
        if state not in ROUND_STATES:
            raise StoreError(f"unknown round state {state!r}; use one of {', '.join(ROUND_STATES)}")
        with self._write() as c:
            self._move_round(c, r, state, model_id)

    def _complete_round(self, c: sqlite3.Connection, r: int) -> bool:
        row = c.execute("SELECT state FROM rounds WHERE id = ?", (int(r),)).fetchone()
        if row is None:
            raise StoreError(f"{self.folder}: no round {r}")
        if row[0] != "open":
            return False
        left = c.execute(
            "SELECT COUNT(*) FROM round_items ri JOIN images i ON i.id = ri.image_id "
            "WHERE ri.round_id = ? AND i.state NOT IN ('labelled', 'skipped')",
            (int(r),),
        ).fetchone()[0]
        return left == 0 and self._move_round(c, r, "labelled")

    def complete_round_if_done(self, r: int) -> bool:
        """In one transaction: when round `r` is open and each of its images is labelled or skipped, move it
        to 'labelled'. Return True when it moved (False: images left, or the round is past 'open')."""
        with self._write() as c:
            return self._complete_round(c, r)

    def close_round(self, r: int) -> None:
        """Move round `r` from 'evaluated' to 'closed' (a no-op when it is closed already; else StoreError).

        `record_evaluation` then `close_round` is the normal end of a round: a crash between them leaves the
        round 'evaluated', which the loop planner closes.
        """
        with self._write() as c:
            self._move_round(c, r, "closed")

    def record_evaluation(
        self, model_id: int, metrics: Mapping[str, Any], round: int | None = None
    ) -> int | None:
        """Store a model's evaluation and move its round 'trained' -> 'evaluated', in one transaction.

        `metrics` is merged into the model's stored metrics (given keys replace stored ones). `round`
        defaults to the round trained with this model that is 'trained' or 'evaluated' (none: the model of
        the initial labels, only the metrics are stored). A round that is 'evaluated' already stays so (the
        metrics are updated: re-running an evaluation is harmless); any other state, or a round trained with
        another model, raises StoreError and stores nothing. Return the round that is now 'evaluated', or
        None.
        """
        metrics, sha1 = _split_sha1(metrics, None)
        with self._write() as c:
            row = c.execute("SELECT metrics FROM models WHERE id = ?", (int(model_id),)).fetchone()
            if row is None:
                raise StoreError(f"{self.folder}: no model {model_id}")
            if round is None:
                found = c.execute(
                    "SELECT id FROM rounds WHERE model_id = ? AND state IN ('trained', 'evaluated') "
                    "ORDER BY id DESC LIMIT 1",
                    (int(model_id),),
                ).fetchone()
                round = None if found is None else int(found[0])
            if round is not None:
                r_row = c.execute("SELECT state, model_id FROM rounds WHERE id = ?", (int(round),)).fetchone()
                if r_row is None:
                    raise StoreError(f"{self.folder}: no round {round}")
                if r_row[1] != model_id:
                    raise StoreError(
                        f"{self.folder}: round {round} is {r_row[0]!r} with model {r_row[1]}; only a round "
                        f"trained with model {model_id} can be evaluated by it"
                    )
                self._move_round(c, int(round), "evaluated")
            self._store_metrics(c, int(model_id), {**json.loads(row[0]), **metrics}, sha1)
        return round

    # --- models ------------------------------------------------------------------------------------
    def add_model(
        self,
        checkpoint: str | Path,
        train_size: int,
        round: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        mark_trained: bool = False,
        sha1: str | None = None,
    ) -> int:
        """Register a checkpoint (with its file's `sha1`, see `model_by_sha1`); return the model id.

        With `mark_trained` and a `round`, that round moves 'labelled' -> 'trained' with this model in the
        same transaction, so a crash can never leave a recorded model whose round still waits for training;
        a round in any other state refuses the move (StoreError naming from and to, nothing recorded). A
        'sha1' key in `metrics` (where schema 1 kept it) is stored in the sha1 column instead.
        """
        metrics, sha1 = _split_sha1(metrics, sha1)
        with self._write() as c:
            if (
                round is not None
                and c.execute("SELECT 1 FROM rounds WHERE id = ?", (int(round),)).fetchone() is None
            ):
                raise StoreError(f"{self.folder}: no round {round}")
            cur = c.execute(
                "INSERT INTO models (checkpoint, round, train_size, metrics, created_at, sha1) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _relative(checkpoint, self.folder),
                    round,
                    int(train_size),
                    _metrics_json(metrics),
                    _now(),
                    sha1,
                ),
            )
            model_id = int(cur.lastrowid)
            if mark_trained and round is not None:
                self._move_round(c, int(round), "trained", model_id)
            return model_id

    def _store_metrics(
        self, c: sqlite3.Connection, model_id: int, metrics: Mapping[str, Any], sha1: str | None
    ) -> None:
        if sha1 is not None:
            (stored,) = c.execute("SELECT sha1 FROM models WHERE id = ?", (model_id,)).fetchone()
            if stored not in (None, sha1):
                raise StoreError(f"{self.folder}: model {model_id} has sha1 {stored}, not {sha1}")
            c.execute("UPDATE models SET sha1 = ? WHERE id = ?", (sha1, model_id))
        c.execute("UPDATE models SET metrics = ? WHERE id = ?", (_metrics_json(metrics), model_id))

    def checkpoint_path(self, model: ModelInfo) -> Path:
        """Return a model's checkpoint file (stored relative to the project folder when inside it)."""
        return self.folder / model.checkpoint  # an absolute stored path stays as it is

    _MODEL_COLUMNS = "id, checkpoint, round, train_size, metrics, created_at, sha1"

    @staticmethod
    def _model(row: Sequence[Any]) -> ModelInfo:
        return ModelInfo(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])

    def latest_model(self) -> ModelInfo | None:
        row = self._conn.execute(
            f"SELECT {self._MODEL_COLUMNS} FROM models ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else self._model(row)

    def models(self) -> list[ModelInfo]:
        """Return every registered model, oldest first."""
        rows = self._conn.execute(f"SELECT {self._MODEL_COLUMNS} FROM models ORDER BY id").fetchall()
        return [self._model(r) for r in rows]

    def model_by_sha1(self, sha1: str) -> ModelInfo | None:
        """Return the (oldest) model whose checkpoint file has this sha1, or None."""
        row = self._conn.execute(
            f"SELECT {self._MODEL_COLUMNS} FROM models WHERE sha1 = ? ORDER BY id LIMIT 1", (sha1,)
        ).fetchone()
        return None if row is None else self._model(row)

    def round_summary(self) -> dict[int | None, dict[str, float]]:
        """Return {round (None: outside any round): {"images", "people", "seconds", "timed", ...}}.

        Current labels only, so each person counts once however often the image was relabelled: `images`
        counts the round's chosen images that are now labelled (for None: labelled images without a round),
        `people` the current label rows, `seconds` the labelling time of the current labels (each image's
        time once, however many people it holds; unknown times count 0), `timed` the current label rows whose
        time is known, `skipped` (when any) the round's images marked skipped, and `superseded` /
        `superseded_seconds` (when any) the replaced label rows and the time spent on them.
        """
        out: dict[int | None, dict[str, float]] = {}
        empty = {"images": 0, "people": 0, "seconds": 0.0, "timed": 0}
        # one labelling event = (image, created_at): its time is stored on each of its person rows
        events = (
            "SELECT round, COUNT(*) AS people, COUNT(seconds) AS timed, MAX(seconds) AS secs FROM labels "
            "WHERE superseded_at IS {} NULL GROUP BY round, image_id, created_at"
        )
        for r, people, secs, timed in self._conn.execute(
            f"SELECT round, SUM(people), COALESCE(SUM(secs), 0), SUM(timed) FROM ({events.format('')}) GROUP BY round"
        ):
            out[r] = {"images": 0, "people": int(people), "seconds": float(secs), "timed": int(timed)}
        for r, people, secs in self._conn.execute(
            f"SELECT round, SUM(people), COALESCE(SUM(secs), 0) FROM ({events.format('NOT')}) GROUP BY round"
        ):
            s = out.setdefault(r, dict(empty))
            s["superseded"], s["superseded_seconds"] = int(people), float(secs)
        for r, n in self._conn.execute(
            "SELECT ri.round_id, COUNT(*) FROM round_items ri JOIN images i ON i.id = ri.image_id "
            "WHERE i.state = 'labelled' GROUP BY ri.round_id"
        ):
            out.setdefault(r, dict(empty))["images"] = int(n)
        for r, n in self._conn.execute(
            "SELECT ri.round_id, COUNT(*) FROM round_items ri JOIN images i ON i.id = ri.image_id "
            "WHERE i.state = 'skipped' GROUP BY ri.round_id"
        ):
            out.setdefault(r, dict(empty))["skipped"] = int(n)
        n = self._conn.execute(
            "SELECT COUNT(*) FROM images WHERE state = 'labelled' AND round IS NULL"
        ).fetchone()[0]
        if n:
            out.setdefault(None, dict(empty))["images"] = int(n)
        return out

    def annotator_summary(self) -> dict[str, dict[str, float | int | None]]:
        """Return {annotator: {"images", "people", "median_seconds", "median_clicks"}} over current labels.

        Only labels that name their annotator (the labelling page, Label Studio imports); the medians are per
        person, over the people whose seconds / clicks were recorded (None when none were).
        """
        rows: dict[str, list[tuple[int, float | None, int | None]]] = {}
        for who, image_id, secs, clicks in self._conn.execute(
            "SELECT annotator, image_id, person_seconds, clicks FROM labels "
            "WHERE superseded_at IS NULL AND annotator IS NOT NULL ORDER BY id"
        ):
            rows.setdefault(who, []).append((image_id, secs, clicks))

        def median(values: list) -> float | None:
            values = [v for v in values if v is not None]
            return float(np.median(values)) if values else None

        return {
            who: {"images": len({r[0] for r in people}), "people": len(people),
                  "median_seconds": median([r[1] for r in people]), "median_clicks": median([r[2] for r in people])}
            for who, people in rows.items()
        }  # fmt: skip

    # --- export ------------------------------------------------------------------------------------
    def to_coco(
        self, image_ids: Sequence[int] | None = None, relative_to: str | Path | None = None
    ) -> CocoKeypoints:
        """Return images with their current labels (see `keypoints_of`) as an in-memory data set.

        `image_ids` default: every labelled image. File names are relative to `relative_to` (default: the
        project folder), which becomes the data set's root.
        """
        root = Path(relative_to) if relative_to is not None else self.folder
        ids = self.labelled_ids() if image_ids is None else [int(i) for i in image_ids]
        problems = self._unknown(self._conn, ids)
        if problems:
            raise StoreError(f"{self.folder}: unknown images", problems)
        frames = []
        for image_id in ids:
            img = self.image(image_id)
            name = os.path.relpath(self.image_path(image_id).resolve(), root.resolve())
            kps = self.keypoints_of(image_id).astype(np.float32)
            frames.append(
                Frame(
                    image_id,
                    Path(name).as_posix(),
                    img.width,
                    img.height,
                    kps,
                    video=img.video,
                    frame=img.frame,
                )
            )
        return CocoKeypoints(frames=frames, skeleton=self.skeleton, root=root)

    def export_coco(self, path: str | Path, image_ids: Sequence[int] | None = None) -> Path:
        """Write the current labels as COCO keypoint JSON, atomically.

        `image_ids` default: every labelled image. File names are relative to the exported file's folder.
        """
        path = Path(path)
        try:
            data = self.to_coco(image_ids, relative_to=path.parent)
        except StoreError as exc:
            raise StoreError(f"{path}: nothing exported", exc.problems) from exc
        return save_coco(data, path)

    def dump(self) -> str:
        """Return the whole database as SQL text (for comparisons and debugging)."""
        return "\n".join(self._conn.iterdump())


def _metrics_json(metrics: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(_strict(dict(metrics or {})), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"metrics must be JSON-serialisable ({exc})") from exc


def _split_sha1(metrics: Mapping[str, Any] | None, sha1: str | None) -> tuple[dict[str, Any], str | None]:
    """Return (metrics without a 'sha1' key, the sha1): schema 1 kept a checkpoint's sha1 in its metrics."""
    metrics = dict(metrics or {})
    if "sha1" in metrics:
        key = metrics.pop("sha1")
        if not isinstance(key, str) or (sha1 is not None and key != sha1):
            raise StoreError(f"metrics['sha1'] = {key!r} disagrees with sha1 = {sha1!r}")
        sha1 = key
    return metrics, sha1


def same_people(stored: Sequence[np.ndarray] | np.ndarray, new: np.ndarray) -> bool:
    """True when two labellings of an image hold the same people, in any order.

    People match when their visibility flags are equal and each coordinate is within `LABEL_TOLERANCE_PX`
    (both sides normalised as the store keeps them: unlabelled keypoints at (0, 0)).
    """
    b = np.asarray(new, dtype=np.float64)
    a = np.asarray(stored, dtype=np.float64).reshape((-1, *b.shape[1:]))
    if a.shape != b.shape:
        return False
    if len(a) == 0:
        return True
    # match[i, j]: stored person i is new person j
    match = (a[:, None, :, 2] == b[None, :, :, 2]).all(-1) & (
        np.abs(a[:, None, :, :2] - b[None, :, :, :2]) <= LABEL_TOLERANCE_PX
    ).all((-1, -2))
    free = list(range(len(a)))
    for j in range(len(b)):
        i = next((i for i in free if match[i, j]), None)
        if i is None:
            return False
        free.remove(i)
    return True
