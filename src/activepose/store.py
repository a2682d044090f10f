"""The project store: one SQLite database (`project.db`, WAL mode) per active-learning project.

Holds images (stable ids, paths, content hashes, sizes, states), labels (per person (K, 3) keypoints with
who labelled them, when, in which round and how long it took), imports (to make file imports idempotent),
rounds with their chosen items, and models. Every write is one transaction that validates its input first
(inside the transaction, against the state it will modify): bad input raises `StoreError` and leaves the
database unchanged. Write transactions start with `BEGIN IMMEDIATE` and connections wait up to
`BUSY_TIMEOUT_S` for the write lock, so concurrent writers queue instead of failing with "database is locked".

The schema is versioned with `PRAGMA user_version` and the `MIGRATIONS` list (migration i brings the
database from version i to i + 1); opening an older database migrates it in one transaction, opening a newer
one is refused. A `Project` holds one connection: use it from one thread (open one per process/thread).
"""

from __future__ import annotations

import hashlib
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

from . import faults
from .coco import OUTSIDE_TOLERANCE, CocoError, CocoKeypoints, Frame, parse_coco, save_coco
from .fileio import _strict, file_sha1
from .skeleton import Skeleton

DB_NAME = "project.db"
SUBFOLDERS = ("checkpoints", "caches", "exports")
BUSY_TIMEOUT_S = 30.0
IMAGE_STATES = ("unlabelled", "queued", "labelled", "skipped", "test")
ROUND_STATES = ("open", "labelled", "trained", "evaluated", "closed")
_MAX_LISTED = 20

# Migration i takes the schema from version i to i + 1; each is a list of SQL statements run in one
# transaction. Never edit a released migration: append a new one.
MIGRATIONS: list[list[str]] = [
    [  # v1
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            content_hash TEXT,
            width INTEGER NOT NULL CHECK (width > 0),
            height INTEGER NOT NULL CHECK (height > 0),
            state TEXT NOT NULL DEFAULT 'unlabelled' CHECK (state IN ({", ".join(map(repr, IMAGE_STATES))})),
            round INTEGER REFERENCES rounds(id))""",
        "CREATE INDEX images_hash ON images(content_hash)",
        "CREATE INDEX images_state ON images(state)",
        """CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            content_hash TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            imported_at TEXT NOT NULL,
            n_labels INTEGER NOT NULL)""",
        """CREATE TABLE labels (
            id INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id),
            person INTEGER NOT NULL CHECK (person >= 0),
            keypoints TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            round INTEGER REFERENCES rounds(id),
            seconds REAL,
            import_id INTEGER REFERENCES imports(id),
            UNIQUE (image_id, person, source))""",
        f"""CREATE TABLE rounds (
            id INTEGER PRIMARY KEY,
            strategy TEXT NOT NULL,
            params TEXT NOT NULL,
            budget INTEGER NOT NULL CHECK (budget >= 0),
            state TEXT NOT NULL CHECK (state IN ({", ".join(map(repr, ROUND_STATES))})),
            model_id INTEGER REFERENCES models(id),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        # At most one round that is not closed, enforced by the database itself.
        "CREATE UNIQUE INDEX rounds_one_active ON rounds((state != 'closed')) WHERE state != 'closed'",
        """CREATE TABLE round_items (
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            image_id INTEGER NOT NULL REFERENCES images(id),
            rank INTEGER NOT NULL,
            score REAL,
            PRIMARY KEY (round_id, image_id))""",
        """CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            checkpoint TEXT NOT NULL,
            round INTEGER REFERENCES rounds(id),
            train_size INTEGER NOT NULL,
            metrics TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL)""",
    ],
]


class StoreError(RuntimeError):
    """The project store refused an operation; `problems` lists every finding."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        text = "".join(f"\n  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(message + text)


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str
    content_hash: str | None
    width: int
    height: int
    state: str
    round: int | None


@dataclass(frozen=True)
class LabelRow:
    image_id: int
    person: int
    keypoints: np.ndarray  # (K, 3) float64
    source: str
    created_at: str
    round: int | None
    seconds: float | None


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


@dataclass(frozen=True)
class ImportResult:
    new_labels: int
    already_imported: bool
    message: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError(f"{db}: could not switch the database to WAL mode (got {mode!r})")
    return conn


def _migrate(conn: sqlite3.Connection, db: Path, migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to len(migrations); refuse a database newer than this code."""
    target = len(migrations)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > target:
        raise StoreError(
            f"{db}: schema version {version} is newer than this activepose knows ({target}); upgrade activepose"
        )
    if version == target:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
        for i in range(version, target):
            for statement in migrations[i]:
                try:
                    conn.execute(statement)
                except sqlite3.Error as exc:
                    raise StoreError(
                        f"{db}: migration to schema version {i + 1} failed ({exc}); the database is unchanged"
                    ) from exc
        conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _relative(path: str | Path, folder: Path) -> str:
    """Return `path` relative to `folder` when it lies inside it, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            return str(path)
    return str(path)


class Project:
    """An active-learning project folder: `project.db` plus checkpoints/, caches/ and exports/."""

    def __init__(self, folder: Path, conn: sqlite3.Connection):
        self.folder = Path(folder).absolute()  # stored paths stay valid whatever the working directory
        self.db_path = folder / DB_NAME
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
        images: Sequence[tuple[str | Path, int, int, str | None, int | None]],
        meta: Mapping[str, str] | None = None,
    ) -> Project:
        """Create a project in `folder` with `images` as (path, width, height, content_hash, id | None).

        Given ids are kept (the pool file's stable ids); images without one get ids after the largest
        given id, in order. The database is built under a temporary name and linked into place, so a crash
        never leaves a half-created project and two concurrent creates cannot both succeed.
        """
        folder = Path(folder)
        db = folder / DB_NAME
        if db.exists():
            raise StoreError(f"{folder}: a project already exists here ({db})")
        rows, problems = [], []
        given = [int(i) for *_, i in images if i is not None]
        seen: set[int] = set()
        next_id = max(given, default=0) + 1
        for n, (path, width, height, chash, image_id) in enumerate(images):
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
            rows.append((image_id, _relative(path, folder), chash, int(width), int(height)))
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
                "INSERT INTO images (id, path, content_hash, width, height) VALUES (?, ?, ?, ?, ?)", rows
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
    def open(cls, folder: str | Path) -> Project:
        """Open the project in `folder`, migrating an older schema; refuse a newer one."""
        folder = Path(folder)
        db = folder / DB_NAME
        if not db.is_file():
            raise StoreError(f"{folder}: no activepose project here ({DB_NAME} not found)")
        conn = _connect(db)
        try:
            _migrate(conn, db, MIGRATIONS)
            return cls(folder, conn)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the write lock up front (waiting for other writers)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    # --- images ------------------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRow:
        row = self._conn.execute(
            "SELECT id, path, content_hash, width, height, state, round FROM images WHERE id = ?",
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

    def counts(self) -> dict[str, int]:
        """Return the number of images in each state (every state present, zeros included)."""
        out = dict.fromkeys(IMAGE_STATES, 0)
        out.update(self._conn.execute("SELECT state, COUNT(*) FROM images GROUP BY state"))
        return out

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

    def skip_images(self, round_id: int, image_ids: Sequence[int]) -> int:
        """Mark queued images of round `round_id` 'skipped' (cannot be labelled); return how many changed.

        A skipped image counts as done when deciding whether the round is fully labelled, and is never
        selected again. All-or-nothing: ids not in the round, or already labelled, raise StoreError and change
        nothing. Skipping an already skipped image is a no-op.
        """
        with self._write() as c:
            row = c.execute("SELECT state FROM rounds WHERE id = ?", (int(round_id),)).fetchone()
            if row is None:
                raise StoreError(f"{self.folder}: no round {round_id}")
            if row[0] != "open":
                raise StoreError(
                    f"{self.folder}: round {round_id} is {row[0]!r}; only an open round's images can be skipped"
                )
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
            c.executemany("UPDATE images SET state = 'skipped' WHERE id = ?", [(i,) for i in todo])
        return len(todo)

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
    ) -> int:
        """Store {image_id: (N, K, 3) keypoints} from `source`; return the number of new label rows.

        All-or-nothing: unknown or test-only images, wrong shapes or keypoint counts, non-finite values,
        visibility flags other than 0/1/2, labelled keypoints outside the image (beyond the margin of
        `coco.OUTSIDE_TOLERANCE`) and labels that differ from what `source` already stored for the image
        raise StoreError listing every problem, and nothing is written. Labels identical to stored ones are
        a no-op. Keypoints a little past the border are clipped onto it, as `coco.load_coco` does.
        `seconds` is the labelling time, per image or one number for every image.
        """
        with self._write() as c:
            return self._add_labels(c, labels, source, round, seconds, None)

    def _add_labels(
        self,
        c: sqlite3.Connection,
        labels: Mapping[int, Any],
        source: str,
        round: int | None,
        seconds: float | Mapping[int, float] | None,
        import_id: int | None,
    ) -> int:
        k = self.skeleton.num_keypoints
        problems: list[str] = []
        if not isinstance(source, str) or not source:
            problems.append("source must be a non-empty string (e.g. 'simulated', 'file:NAME', 'human:USER')")
        if (
            round is not None
            and c.execute("SELECT 1 FROM rounds WHERE id = ?", (int(round),)).fetchone() is None
        ):
            problems.append(f"round {round}: no such round")
        todo: list[tuple[int, np.ndarray, float | None]] = []
        for raw_id, raw in labels.items():
            try:
                image_id = int(raw_id)
            except (TypeError, ValueError):
                problems.append(f"image id {raw_id!r}: not an integer")
                continue
            row = c.execute("SELECT width, height, state FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                problems.append(f"image id {image_id}: unknown image")
                continue
            width, height, state = row
            if state == "test":
                problems.append(f"image id {image_id}: test-only image, not labelled for training")
                continue
            try:
                kps = np.array(raw, dtype=np.float64)
            except (TypeError, ValueError):
                problems.append(f"image id {image_id}: keypoints must be numbers")
                continue
            if kps.size == 0:
                kps = kps.reshape(0, k, 3)
            if kps.ndim != 3 or kps.shape[1:] != (k, 3):
                problems.append(
                    f"image id {image_id}: keypoint array of shape {kps.shape}, expected (N, {k}, 3) "
                    f"for skeleton {self.skeleton.name!r}"
                )
                continue
            if not np.isfinite(kps).all():
                problems.append(f"image id {image_id}: keypoints contain NaN or infinity")
                continue
            if not np.isin(kps[..., 2], (0, 1, 2)).all():
                problems.append(f"image id {image_id}: visibility flags must be 0, 1 or 2")
                continue
            lab = kps[..., 2] > 0
            t = max(1.0, OUTSIDE_TOLERANCE * max(width, height))
            x, y = kps[..., 0], kps[..., 1]
            out = lab & ((x < -t) | (y < -t) | (x > width + t) | (y > height + t))
            if out.any():
                p, j = (int(v[0]) for v in np.nonzero(out))
                problems.append(
                    f"image id {image_id}: person {p} keypoint {self.skeleton.keypoints[j]!r} at "
                    f"({x[p, j]:.1f}, {y[p, j]:.1f}) lies outside the {width}x{height} image "
                    f"({int(out.sum())} such keypoint(s))"
                )
                continue
            kps[..., 0] = np.where(lab, np.clip(x, 0.0, width), 0.0)
            kps[..., 1] = np.where(lab, np.clip(y, 0.0, height), 0.0)
            old = [
                np.asarray(json.loads(r[0]), dtype=np.float64)
                for r in c.execute(
                    "SELECT keypoints FROM labels WHERE image_id = ? AND source = ? ORDER BY person",
                    (image_id, source),
                )
            ]
            if old:
                if len(old) == len(kps) and all(np.array_equal(a, b) for a, b in zip(old, kps, strict=True)):
                    continue  # identical re-submission: nothing to do
                problems.append(
                    f"image id {image_id}: source {source!r} already stored {len(old)} different person label(s)"
                )
                continue
            secs = seconds.get(image_id, seconds.get(raw_id)) if isinstance(seconds, Mapping) else seconds
            if secs is not None and (not math.isfinite(float(secs)) or float(secs) < 0):
                problems.append(f"image id {image_id}: seconds must be a finite number >= 0, got {secs!r}")
                continue
            todo.append((image_id, kps, None if secs is None else float(secs)))
        if problems:
            raise StoreError(f"{self.folder}: labels refused, nothing stored", problems)
        now, n = _now(), 0
        for image_id, kps, secs in todo:
            c.executemany(
                "INSERT INTO labels (image_id, person, keypoints, source, created_at, round, seconds, import_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (image_id, p, json.dumps(kps[p].tolist()), source, now, round, secs, import_id)
                    for p in range(len(kps))
                ],
            )
            n += len(kps)
            c.execute(
                "UPDATE images SET state = 'labelled', round = COALESCE(?, round) WHERE id = ?",
                (round, image_id),
            )
            faults.point("label")  # a crash here must leave no partial labelling behind
        return n

    def labels_of(self, image_id: int) -> list[LabelRow]:
        """Return every stored person label of an image (all sources), oldest first."""
        rows = self._conn.execute(
            "SELECT image_id, person, keypoints, source, created_at, round, seconds FROM labels "
            "WHERE image_id = ? ORDER BY id",
            (int(image_id),),
        )
        return [
            LabelRow(i, p, np.asarray(json.loads(k), dtype=np.float64), s, t, r, sec)
            for i, p, k, s, t, r, sec in rows
        ]

    def keypoints_of(self, image_id: int) -> np.ndarray:
        """Return the (N, K, 3) keypoints of the image's most recent labelling source ((0, K, 3) when none)."""
        rows = self.labels_of(image_id)
        if not rows:
            return np.zeros((0, self.skeleton.num_keypoints, 3))
        latest = rows[-1].source
        return np.stack([r.keypoints for r in sorted(rows, key=lambda r: r.person) if r.source == latest])

    # --- imports -----------------------------------------------------------------------------------
    def import_coco(
        self,
        path: str | Path,
        source: str | None = None,
        round: int | None = None,
        include_empty: bool = False,
    ) -> ImportResult:
        """Import a COCO keypoint file's labels; idempotent by the file's content hash.

        The file must use the project's keypoints. Each file image maps to a project image: by id when
        that id exists and its file name (last path component) matches; else by a unique file name match;
        else by content hash when the image file is readable next to the JSON. Unmatched images are
        errors (nothing imported). Images without annotations are skipped unless `include_empty`, which
        records them as labelled with nobody in them. With `round`, every labelled image must belong to
        that round. `source` defaults to 'file:<file name>'.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()  # hash and parse the same bytes
        except OSError as exc:
            raise StoreError(f"{path}: cannot import: {exc}") from exc
        digest = hashlib.sha1(raw).hexdigest()
        try:
            try:
                parsed = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CocoError(path, [f"not valid JSON: {exc}"]) from exc
            data = parse_coco(parsed, path=path, root=path.parent, skeleton=self.skeleton, check_images=False)
        except CocoError as exc:
            raise StoreError(f"{path}: cannot import: {exc}") from exc
        source = source or f"file:{path.name}"
        with self._write() as c:
            done = c.execute(
                "SELECT name, imported_at FROM imports WHERE content_hash = ?", (digest,)
            ).fetchone()
            if done is not None:
                msg = f"{path}: already imported (as {done[0]!r} at {done[1]}); 0 new labels"
                return ImportResult(0, True, msg)
            mapping, problems = self._map_frames(c, data)
            if problems:
                raise StoreError(f"{path}: cannot import, nothing stored", problems)
            labels = {mapping[f.image_id]: f.keypoints for f in data.frames if f.num_people or include_empty}
            if round is not None:  # a round's export must come back with that round's images only
                items = {
                    i
                    for (i,) in c.execute(
                        "SELECT image_id FROM round_items WHERE round_id = ?", (int(round),)
                    )
                }
                outside = sorted(i for i in labels if i not in items)
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
                n = self._add_labels(c, labels, source, round, None, import_id)
            except StoreError as exc:
                raise StoreError(f"{path}: cannot import, nothing stored", exc.problems) from None
            c.execute("UPDATE imports SET n_labels = ? WHERE id = ?", (n, import_id))
        return ImportResult(n, False, f"{path}: imported {n} new person label(s) from {len(labels)} image(s)")

    def _map_frames(self, c: sqlite3.Connection, data: CocoKeypoints) -> tuple[dict[int, int], list[str]]:
        by_name: dict[str, list[int]] = {}
        by_id: dict[int, str] = {}
        for image_id, p in c.execute("SELECT id, path FROM images"):
            name = Path(p).name
            by_name.setdefault(name, []).append(image_id)
            by_id[image_id] = name
        mapping, problems = {}, []
        for f in data.frames:
            name = Path(f.file_name).name
            if by_id.get(f.image_id) == name:
                mapping[f.image_id] = f.image_id
                continue
            candidates = by_name.get(name, [])
            if len(candidates) == 1:
                mapping[f.image_id] = candidates[0]
                continue
            fp = data.image_path(f)
            if fp.is_file():
                hits = [
                    r[0] for r in c.execute("SELECT id FROM images WHERE content_hash = ?", (file_sha1(fp),))
                ]
                if len(hits) == 1:
                    mapping[f.image_id] = hits[0]
                    continue
            why = f"{len(candidates)} project images share that file name" if candidates else "no match"
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

    def set_round_state(self, r: int, state: str, model_id: int | None = None) -> None:
        """Move round `r` forward to `state` (open -> labelled -> trained -> evaluated -> closed)."""
        if state not in ROUND_STATES:
            raise StoreError(f"unknown round state {state!r}; use one of {', '.join(ROUND_STATES)}")
        with self._write() as c:
            row = c.execute("SELECT state FROM rounds WHERE id = ?", (int(r),)).fetchone()
            if row is None:
                raise StoreError(f"{self.folder}: no round {r}")
            if ROUND_STATES.index(state) < ROUND_STATES.index(row[0]):
                raise StoreError(f"{self.folder}: round {r} is {row[0]!r}; cannot move back to {state!r}")
            if (
                model_id is not None
                and c.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is None
            ):
                raise StoreError(f"{self.folder}: no model {model_id}")
            c.execute(
                "UPDATE rounds SET state = ?, model_id = COALESCE(?, model_id), updated_at = ? WHERE id = ?",
                (state, model_id, _now(), int(r)),
            )

    # --- models ------------------------------------------------------------------------------------
    def add_model(
        self,
        checkpoint: str | Path,
        train_size: int,
        round: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        mark_trained: bool = False,
    ) -> int:
        """Register a checkpoint; return the model id.

        With `mark_trained`, a `round` that is 'labelled' moves to 'trained' with this model in the same
        transaction, so a crash can never leave a recorded model whose round still waits for training.
        """
        with self._write() as c:
            row = None
            if round is not None:
                row = c.execute("SELECT state FROM rounds WHERE id = ?", (int(round),)).fetchone()
                if row is None:
                    raise StoreError(f"{self.folder}: no round {round}")
            now = _now()
            cur = c.execute(
                "INSERT INTO models (checkpoint, round, train_size, metrics, created_at) VALUES (?, ?, ?, ?, ?)",
                (_relative(checkpoint, self.folder), round, int(train_size), _metrics_json(metrics), now),
            )
            model_id = int(cur.lastrowid)
            if mark_trained and row is not None and row[0] == "labelled":
                c.execute(
                    "UPDATE rounds SET state = 'trained', model_id = ?, updated_at = ? WHERE id = ?",
                    (model_id, now, int(round)),
                )
            return model_id

    def set_model_metrics(
        self, model_id: int, metrics: Mapping[str, Any], close_round: int | None = None
    ) -> None:
        """Store a model's metrics; with `close_round`, that round (trained with this model) is closed too.

        Both happen in one transaction: a crash leaves either neither or both. Closing is refused unless the
        round is 'trained' or 'evaluated' and was trained with `model_id`.
        """
        with self._write() as c:
            if (
                c.execute(
                    "UPDATE models SET metrics = ? WHERE id = ?", (_metrics_json(metrics), model_id)
                ).rowcount
                != 1
            ):
                raise StoreError(f"{self.folder}: no model {model_id}")
            if close_round is None:
                return
            row = c.execute("SELECT state, model_id FROM rounds WHERE id = ?", (int(close_round),)).fetchone()
            if row is None:
                raise StoreError(f"{self.folder}: no round {close_round}")
            if row[0] not in ("trained", "evaluated") or row[1] != model_id:
                raise StoreError(
                    f"{self.folder}: round {close_round} is {row[0]!r} with model {row[1]}; only a round "
                    f"trained with model {model_id} can be closed by its evaluation"
                )
            c.execute(
                "UPDATE rounds SET state = 'closed', updated_at = ? WHERE id = ?", (_now(), int(close_round))
            )

    def checkpoint_path(self, model: ModelInfo) -> Path:
        """Return a model's checkpoint file (stored relative to the project folder when inside it)."""
        return self.folder / model.checkpoint  # an absolute stored path stays as it is

    def latest_model(self) -> ModelInfo | None:
        row = self._conn.execute(
            "SELECT id, checkpoint, round, train_size, metrics, created_at FROM models ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return ModelInfo(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])

    def models(self) -> list[ModelInfo]:
        """Return every registered model, oldest first."""
        rows = self._conn.execute(
            "SELECT id, checkpoint, round, train_size, metrics, created_at FROM models ORDER BY id"
        ).fetchall()
        return [ModelInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def round_summary(self) -> dict[int | None, dict[str, float]]:
        """Return {round (None: outside any round): {"images", "people", "seconds"}} of the stored labels.

        `images` counts the round's chosen images that are now labelled (for None: labelled images without a
        round), `people` the label rows, `seconds` the summed labelling time (unknown times count 0), `timed`
        the label rows whose time is known and `skipped` (when any) the round's images marked skipped.
        """
        out: dict[int | None, dict[str, float]] = {}
        for r, people, secs, timed in self._conn.execute(
            "SELECT round, COUNT(*), COALESCE(SUM(seconds), 0), COUNT(seconds) FROM labels GROUP BY round"
        ):
            out[r] = {"images": 0, "people": int(people), "seconds": float(secs), "timed": int(timed)}
        empty = {"images": 0, "people": 0, "seconds": 0.0, "timed": 0}
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

    # --- export ------------------------------------------------------------------------------------
    def to_coco(
        self, image_ids: Sequence[int] | None = None, relative_to: str | Path | None = None
    ) -> CocoKeypoints:
        """Return images with their labels (each image's most recent source) as an in-memory data set.

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
            frames.append(Frame(image_id, Path(name).as_posix(), img.width, img.height, kps))
        return CocoKeypoints(frames=frames, skeleton=self.skeleton, root=root)

    def export_coco(self, path: str | Path, image_ids: Sequence[int] | None = None) -> Path:
        """Write the labels (each image's most recent source) as COCO keypoint JSON, atomically.

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
