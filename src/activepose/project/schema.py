"""The project database's schema: its tables as versioned migrations, how a connection is opened and checked,
and SQLite's failures as one-line `StoreError`s.

The schema is versioned with `PRAGMA user_version` and the `MIGRATIONS` list (migration i brings the
database from version i to i + 1); opening an older database migrates it in one transaction, opening a newer
one is refused. `_check_file` and `_inspect` check, without writing, that a file is an intact activepose
database (an empty, foreign, corrupt or newer file is refused and left byte-for-byte unchanged).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..errors import ActiveposeError

_MAX_LISTED = 20  # problems shown in a StoreError's message

DB_NAME = "project.db"
SUBFOLDERS = ("checkpoints", "caches", "exports")
BUSY_TIMEOUT_S = 30.0
IMAGE_STATES = ("unlabelled", "queued", "labelled", "skipped", "test")
ROUND_STATES = ("open", "labelled", "trained", "evaluated", "closed")
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
    [  # v2: model sha1 column; label history (superseded rows) instead of one row set per source
        "ALTER TABLE models ADD COLUMN sha1 TEXT",
        # v1 kept the checkpoint's sha1 in the metrics JSON: move it into the column
        "UPDATE models SET sha1 = json_extract(metrics, '$.sha1'), metrics = json_remove(metrics, '$.sha1') "
        "WHERE json_type(metrics, '$.sha1') = 'text'",
        "CREATE INDEX models_sha1 ON models(sha1)",
        """CREATE TABLE labels_v2 (
            id INTEGER PRIMARY KEY,
            image_id INTEGER NOT NULL REFERENCES images(id),
            person INTEGER NOT NULL CHECK (person >= 0),
            keypoints TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            round INTEGER REFERENCES rounds(id),
            seconds REAL,
            import_id INTEGER REFERENCES imports(id),
            superseded_at TEXT)""",
        # v1 could hold several sources per image; the most recent one (the source of the image's newest
        # row, what `keypoints_of` returned) stays current, the others are superseded when it was stored.
        """INSERT INTO labels_v2
               (id, image_id, person, keypoints, source, created_at, round, seconds, import_id, superseded_at)
           SELECT l.id, l.image_id, l.person, l.keypoints, l.source, l.created_at, l.round, l.seconds,
                  l.import_id,
                  CASE WHEN l.source = latest.source THEN NULL ELSE latest.created_at END
           FROM labels l JOIN (
               SELECT x.image_id, x.source, x.created_at FROM labels x
               WHERE x.id = (SELECT MAX(y.id) FROM labels y WHERE y.image_id = x.image_id)
           ) latest ON latest.image_id = l.image_id""",
        "DROP TABLE labels",
        "ALTER TABLE labels_v2 RENAME TO labels",
        "CREATE UNIQUE INDEX labels_current ON labels(image_id, person) WHERE superseded_at IS NULL",
        "CREATE INDEX labels_image ON labels(image_id)",
    ],
    [  # v3: who labelled each person and at what cost; image revisions and leases for the labelling page
        "ALTER TABLE labels ADD COLUMN annotator TEXT",
        "ALTER TABLE labels ADD COLUMN person_seconds REAL",
        "ALTER TABLE labels ADD COLUMN clicks INTEGER",
        "ALTER TABLE images ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE leases (
            image_id INTEGER PRIMARY KEY REFERENCES images(id),
            annotator TEXT NOT NULL,
            expires_at REAL NOT NULL)""",
    ],
    [  # v4: footage: the video an image is a frame of, its frame index and time (seconds) in that video
        "ALTER TABLE images ADD COLUMN video TEXT",
        "ALTER TABLE images ADD COLUMN frame INTEGER CHECK (frame IS NULL OR frame >= 0)",
        "ALTER TABLE images ADD COLUMN timestamp REAL",
        "CREATE INDEX images_video ON images(video, frame)",
    ],
]


class StoreError(ActiveposeError, RuntimeError):
    """The project store refused an operation; `problems` lists every finding."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        text = "".join(f"\n  - {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(message + text)


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    _setup(conn, db)
    return conn


def _setup(conn: sqlite3.Connection, db: Path) -> None:
    """Configure a read-write connection: busy timeout, foreign keys, WAL (the only step that may write)."""
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError(f"{db}: could not switch the database to WAL mode (got {mode!r})")


_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB = (
    13, 8, 10, 11, 14, 26,
)  # fmt: skip


def _environment_error(exc: sqlite3.Error, db: Path, doing: str) -> StoreError | None:
    """Return a one-line StoreError for an SQLite failure the environment caused (None: a bug, re-raise)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
    else:  # an SQLite error without a code (Python < 3.11 style): go by the standard messages
        text = str(exc).lower()
        known = {"disk is full": _SQLITE_FULL, "readonly database": _SQLITE_READONLY,
                 "disk image is malformed": _SQLITE_CORRUPT, "file is not a database": _SQLITE_NOTADB}  # fmt: skip
        primary = next((c for t, c in known.items() if t in text), None)
    if primary == _SQLITE_FULL:
        return StoreError(f"{db}: disk full ({exc}); {doing}")
    if primary == _SQLITE_READONLY:
        return StoreError(f"{db}: read-only (folder or file not writable); {doing}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreError(f"{db}: not a SQLite database / corrupt ({exc}); {doing}")
    if primary == _SQLITE_IOERR:
        return StoreError(f"{db}: I/O error ({exc}); {doing}")
    if primary == _SQLITE_CANTOPEN:
        return StoreError(f"{db}: cannot open the database ({exc}); {doing}")
    return None


def _check_file(db: Path) -> None:
    """Refuse an empty `project.db` before any SQLite connection touches it; everything else is SQLite's job.

    Only `stat` here, never `open()`: closing *any* file descriptor of the database drops every POSIX advisory
    lock the process holds on it, SQLite's own included ("How To Corrupt An SQLite Database File", section
    2.2). A process that already has a connection (the labelling server opens one per worker thread) would
    then look unused to the others, and the next one to close a connection would delete the write-ahead log
    the server still writes into: acknowledged saves lost. A file that is not an SQLite database (no header,
    garbage, truncated) is refused by `_inspect`, which reads it through SQLite ("file is not a database").
    """
    try:
        size = db.stat().st_size
    except OSError as exc:
        raise StoreError(f"{db}: cannot read the project database ({exc.strerror or exc})") from None
    if size == 0:
        raise StoreError(f"{db}: not an activepose project (empty database); the file was not changed")


def _folder_writable(db: Path) -> bool:
    folder = db.parent
    return os.access(folder, os.W_OK | os.X_OK) and os.access(db, os.W_OK)


def _open_readonly(db: Path) -> sqlite3.Connection:
    """Return a connection that cannot write: `mode=ro`, or `immutable=1` when the folder is not writable.

    A WAL database is read through its `-shm` index, which a `mode=ro` reader creates (and leaves behind) in a
    writable folder; in a read-only folder it cannot, so the file is opened `immutable` instead. That ignores
    a `-wal` file, so a non-empty one (commits not yet copied into the database) is refused rather than
    silently read without them.
    """
    uri = db.absolute().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.access(db.parent, os.W_OK):
            raise
    wal = Path(f"{db}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"{db}: read-only folder with unfinished write-ahead log {wal.name}; open the project once where "
            "it is writable (or copy the folder) to read it"
        )
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)


def _inspect(conn: sqlite3.Connection, db: Path, target: int) -> int:
    """Return the schema version of an intact activepose database; refuse anything else. Reads only."""
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        if version == 0:
            if not tables:
                raise StoreError(
                    f"{db}: not an activepose project (empty database); the file was not changed"
                )
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{db}: not an activepose project (an SQLite database with tables {shown})")
        if version > target:
            raise StoreError(
                f"{db}: schema version {version} is newer than this activepose knows ({target}); "
                "upgrade activepose"
            )
        check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as exc:
        raise _environment_error(exc, db, "the file was not changed") or StoreError(
            f"{db}: not a SQLite database / corrupt ({exc}); the file was not changed"
        ) from None
    if check != ["ok"]:
        found = " ".join(" ".join(check[:3]).split())[:200]
        raise StoreError(
            f"{db}: not a SQLite database / corrupt (integrity check: {found}); the file was not changed"
        )
    if "meta" not in tables:
        raise StoreError(f"{db}: not an activepose project (no meta table)")
    return version


def _migrated_in_memory(conn: sqlite3.Connection, db: Path) -> sqlite3.Connection:
    """Return an in-memory copy of `conn`'s database migrated to the current schema (`conn` is closed)."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.backup(mem)
        mem.execute("PRAGMA foreign_keys = ON")
        _migrate(mem, db, MIGRATIONS)
    except BaseException:
        mem.close()
        raise
    finally:
        conn.close()
    return mem


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
                    doing = f"migration to schema version {i + 1} failed, the database is unchanged"
                    raise _environment_error(exc, db, doing) or StoreError(
                        f"{db}: migration to schema version {i + 1} failed ({exc}); the database is unchanged"
                    ) from exc
        conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
