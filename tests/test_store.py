"""The project store: round trip, migrations, all-or-nothing writes, idempotent imports, rounds, concurrency
and SIGKILL in the middle of a transaction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from activepose.interop.coco import import_coco
from activepose.pose.coco import annotation_dict, load_coco
from activepose.pose.skeleton import get_skeleton
from activepose.project import leases, store
from activepose.project.schema import StoreError
from activepose.project.store import Project

SK = get_skeleton("coco17")
K = SK.num_keypoints
W, H = 100, 80
SRC = Path(__file__).resolve().parents[1] / "src"


def images(n: int = 10):
    return [(f"img/{i}.jpg", W, H, f"hash{i}", i) for i in range(1, n + 1)]


def person(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kps = np.zeros((K, 3))
    kps[:, 0] = rng.uniform(0, W, K).round(2)
    kps[:, 1] = rng.uniform(0, H, K).round(2)
    kps[:, 2] = 2
    return kps


def people(image_id: int, n: int = 2) -> np.ndarray:
    return np.stack([person(100 * image_id + p) for p in range(n)])


def write_coco(path: Path, labels: dict[int, np.ndarray]) -> Path:
    anns, aid = [], 1
    for i, kps in labels.items():
        for p in kps:
            anns.append(annotation_dict(aid, i, p))
            aid += 1
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in labels],
        "annotations": anns,
        "categories": [SK.to_coco_category()],
    }
    path.write_text(json.dumps(data))
    return path


def row_counts(p: Project) -> dict[str, int]:
    tables = ["meta", "images", "labels", "imports", "rounds", "round_items", "models"]
    return {t: p._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


@pytest.fixture
def project(tmp_path):
    p = Project.create(tmp_path / "proj", SK, images())
    yield p
    p.close()


def test_create_open_round_trip(tmp_path):
    folder = tmp_path / "proj"
    imgs = images(3) + [(folder / "inside.jpg", 50, 40, None, None)]
    with Project.create(folder, SK, imgs) as p:
        assert p.counts()["unlabelled"] == 4
        p.add_labels({1: people(1)}, "simulated", seconds=15.0)
    for sub in store.SUBFOLDERS:
        assert (folder / sub).is_dir()
    with Project.open(folder) as p:
        assert p.skeleton == SK
        assert p.schema_version == len(store.MIGRATIONS)
        assert p._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert p.image(4).path == "inside.jpg"  # assigned id after the largest given one; relative path
        assert p.labelled_ids() == [1] and p.unlabelled_ids() == [2, 3, 4]
        np.testing.assert_allclose(p.keypoints_of(1), people(1))
        assert [r.seconds for r in p.labels_of(1)] == [15.0, 15.0]
    with pytest.raises(StoreError, match=str(folder)):
        Project.create(folder, SK, images())
    with pytest.raises(StoreError, match="no activepose project"):
        Project.open(tmp_path / "nothing")


def test_migration_applied_and_newer_refused(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    Project.create(folder, SK, images(2)).close()  # current schema
    extra = ["ALTER TABLE images ADD COLUMN note TEXT", "UPDATE images SET note = 'migrated'"]
    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, extra])
    with Project.open(folder) as p:  # the older db is migrated in one transaction
        assert p.schema_version == len(store.MIGRATIONS)
        assert {r[0] for r in p._conn.execute("SELECT note FROM images")} == {"migrated"}
        assert p.counts()["unlabelled"] == 2
    n = len(store.MIGRATIONS)  # the database is at version n now
    # A failing migration leaves the database at its version.
    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, ["CREATE TABLE t (x)", "NOT SQL"]])
    with pytest.raises(StoreError, match=f"migration to schema version {n + 1} failed"):
        Project.open(folder)
    monkeypatch.undo()
    before = (folder / store.DB_NAME).read_bytes()
    with pytest.raises(
        StoreError, match=f"schema version {n} is newer than this activepose knows \\({n - 1}\\)"
    ):
        Project.open(folder)
    assert (folder / store.DB_NAME).read_bytes() == before  # refused without touching the file
    conn = sqlite3.connect(folder / store.DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == n
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 't'").fetchone()[0] == 0
    conn.close()


@pytest.mark.parametrize(
    "labels, needle",
    [
        ({3: people(3), 99: people(9)}, "image id 99: unknown image"),
        ({3: people(3)[:, :5]}, "image id 3: keypoint array of shape (2, 5, 3)"),
        ({3: people(3) + np.array([W + 5, 0, 0])}, "image id 3: person 0 keypoint 'nose'"),
        ({4: np.full((1, K, 3), np.nan)}, "image id 4: keypoints contain NaN"),
    ],
)
def test_bad_labels_leave_store_unchanged(project, labels, needle):
    project.add_labels({1: people(1)}, "simulated")
    before, counts = project.dump(), row_counts(project)
    with pytest.raises(StoreError) as err:
        project.add_labels({2: people(2), **labels}, "simulated")
    assert needle in str(err.value)
    assert project.dump() == before and row_counts(project) == counts


def test_labels_clipped_identical_noop_changed_replaced(project):
    kps = people(1)
    kps[0, 0, 0] = W + 0.5  # within the 1 % margin: clipped onto the border
    assert project.add_labels({1: kps}, "simulated") == 2
    assert project.keypoints_of(1)[0, 0, 0] == W
    before = project.dump()
    assert project.add_labels({1: kps}, "simulated") == 0  # identical: no-op
    assert project.add_labels({1: kps[::-1]}, "human:ann") == 0  # same people, other order and source
    assert project.add_labels({1: kps + [0.004, -0.004, 0]}, "file:x.json") == 0  # within the tolerance
    assert project.dump() == before
    assert project.add_labels({1: people(5)}, "simulated") == 2  # the same source corrects its labels
    np.testing.assert_allclose(project.keypoints_of(1), people(5))
    assert project.add_labels({1: people(6, 3)}, "human:ann") == 3  # so may another source
    np.testing.assert_allclose(project.keypoints_of(1), people(6, 3))
    assert [r.source for r in project.labels_of(1)] == ["human:ann"] * 3
    history = project.labels_of(1, history=True)
    assert [(r.source, r.superseded_at is None) for r in history] == [("simulated", False)] * 4 + [
        ("human:ann", True)
    ] * 3
    assert row_counts(project)["labels"] == 7


def test_import_twice_is_idempotent_and_export_round_trips(project, tmp_path):
    f = write_coco(tmp_path / "labels.json", {1: people(1), 2: people(2, 1)})
    r1 = import_coco(project, f)
    assert (r1.new_labels, r1.already_imported) == (3, False)
    before = project.dump()
    r2 = import_coco(project, f)
    assert (r2.new_labels, r2.already_imported) == (0, True) and "already imported" in r2.message
    assert project.dump() == before
    assert {r.source for r in project.labels_of(1)} == {"file:labels.json"}
    out = project.export_coco(tmp_path / "out" / "export.json")
    back = load_coco(out, check_images=False)
    assert back.image_ids == [1, 2]
    np.testing.assert_allclose(back.frame(1).keypoints, people(1), atol=0.01)


def test_import_bad_file_leaves_store_unchanged(project, tmp_path):
    before = project.dump()
    f = write_coco(tmp_path / "bad.json", {1: people(1), 42: people(2)})  # 42.jpg matches nothing
    with pytest.raises(StoreError, match=r"image id 42 \('42.jpg'\)"):
        import_coco(project, f)
    other = get_skeleton("lsp14")
    data = json.loads(f.read_text())
    data["categories"] = [other.to_coco_category()]
    (tmp_path / "sk.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="do not match skeleton"):
        import_coco(project, tmp_path / "sk.json")
    assert project.dump() == before


def test_rounds(project):
    r = project.open_round("hybrid", {"alpha": 0.5}, [(3, 0.9), (5, 0.7)])
    assert r == 1 and project.counts()["queued"] == 2
    info = project.current_round()
    assert info.items == [(3, 0, 0.9), (5, 1, 0.7)] and info.params == {"alpha": 0.5} and info.state == "open"
    before = project.dump()
    with pytest.raises(StoreError, match="round 1 is still 'open'"):
        project.open_round("hybrid", {}, [(4, 0.1)])
    assert project.dump() == before
    with pytest.raises(StoreError, match="cannot move from 'open' to 'labelled': 2 of its image"):
        project.set_round_state(r, "labelled")  # nothing labelled yet
    project.add_labels({3: people(3), 5: people(5)}, "simulated", round=r)
    project.set_round_state(r, "labelled")
    project.set_round_state(r, "labelled")  # the state it has: a no-op
    m = project.add_model(
        "checkpoints/r1.pt", train_size=2, round=r, metrics={"ap": 0.5, "pck": float("nan")}
    )
    project.set_round_state(r, "trained", model_id=m)
    with pytest.raises(StoreError, match="cannot move from 'trained' to 'open'"):
        project.set_round_state(r, "open")
    with pytest.raises(StoreError, match="cannot move from 'trained' to 'closed'"):
        project.set_round_state(r, "closed")  # not evaluated yet
    project.set_round_state(r, "evaluated")
    project.set_round_state(r, "closed")
    assert project.latest_model().metrics == {"ap": 0.5, "pck": None}
    with pytest.raises(StoreError) as err:
        project.open_round("random", {}, [(3, None), (77, None), (6, None), (6, None)])
    assert "image id 3: is labelled" in str(err.value) and "image id 77: unknown" in str(err.value)
    assert "image id 6: chosen twice" in str(err.value)
    assert project.open_round("random", {}, [(6, None)]) == 2
    assert project.round(1).model_id == m and project.image(3).round == 1


_IMPORTER = """
import sys, time
from pathlib import Path
from activepose.interop.coco import import_coco
from activepose.project.store import Project
folder, go, files = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
while not go.exists():
    time.sleep(0.005)
with Project.open(folder) as p:
    print(sum(import_coco(p, f).new_labels for f in files))
"""


def test_two_processes_import_concurrently(project, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = []
    for w in range(2):
        ids = range(1 + 5 * w, 6 + 5 * w)
        files = [str(write_coco(tmp_path / f"w{w}_{i}.json", {i: people(i)})) for i in ids]
        cmd = [sys.executable, "-c", _IMPORTER, str(project.folder), str(go), *files]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [int(o.strip()) for o, _ in outs] == [10, 10]
    assert project.labelled_ids() == list(range(1, 11))
    assert row_counts(project)["labels"] == 20 and row_counts(project)["imports"] == 10


_KILLED = """
import sys, time
from activepose.project import store
from activepose.project.store import Project
import numpy as np
K = int(sys.argv[2])
p = Project.open(sys.argv[1])
for i in range(1, 6):  # five committed transactions
    p.add_labels({i: np.full((2, K, 3), 2.0)}, "simulated")
    print("committed", i, flush=True)
original = Project._add_labels
def stall(self, *args):
    n = original(self, *args)
    print("inside", flush=True)  # all rows written, COMMIT not yet issued
    time.sleep(60)
    return n
Project._add_labels = stall
p.add_labels({i: np.full((3, K, 3), 2.0) for i in range(6, 11)}, "simulated")
"""


def test_sigkill_mid_transaction_keeps_whole_transactions(project):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-c", _KILLED, str(project.folder), str(K)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while (line := proc.stdout.readline()) and line.strip() != "inside":
        lines.append(line.strip())
    assert line.strip() == "inside", (lines, proc.stderr.read())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    project.close()
    with Project.open(project.folder) as p:
        assert p._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert p.labelled_ids() == [1, 2, 3, 4, 5]
        assert row_counts(p)["labels"] == 10
        assert p.add_labels({6: people(6)}, "simulated") == 2  # the store still takes writes


# --- schema v2: migration of a v1 project -------------------------------------------------------------------
def make_v1_project(folder: Path, extra_models: list[tuple] = ()) -> Path:
    """Build a schema-1 project with the v1 statements only, as activepose <= schema 1 wrote it: image 1
    labelled by two sources (the newer one is current), model sha1 kept in the metrics JSON."""
    folder.mkdir(parents=True)
    db = folder / store.DB_NAME
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    store._migrate(conn, db, store.MIGRATIONS[:1])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute("BEGIN")
    conn.execute("INSERT INTO meta (key, value) VALUES ('skeleton', ?)", (json.dumps(SK.to_dict()),))
    conn.executemany(
        "INSERT INTO images (id, path, content_hash, width, height, state, round) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(1, "img/1.jpg", "hash1", W, H, "labelled", 1), (2, "img/2.jpg", "hash2", W, H, "labelled", 1),
         (3, "img/3.jpg", "hash3", W, H, "labelled", None), (4, "img/4.jpg", "hash4", W, H, "unlabelled", None)],
    )  # fmt: skip
    conn.execute(
        "INSERT INTO rounds (id, strategy, params, budget, state, created_at, updated_at) "
        "VALUES (1, 'random', '{}', 2, 'labelled', 't0', 't0')"
    )
    conn.execute("INSERT INTO round_items VALUES (1, 1, 0, NULL), (1, 2, 1, NULL)")
    rows = [  # id, image, person, keypoints, source, created_at, round, seconds
        (1, 1, 0, people(1)[0], "file:a.json", "t1", 1, None),
        (2, 1, 1, people(1)[1], "file:a.json", "t1", 1, None),
        (3, 2, 0, people(2)[0], "simulated", "t1", 1, 30.0),
        (4, 2, 1, people(2)[1], "simulated", "t1", 1, 30.0),
        (5, 3, 0, people(3)[0], "file:a.json", "t1", None, None),
        (6, 1, 0, people(7)[0], "human:ann", "t2", 1, 12.0),  # newer source for image 1: one person
    ]
    conn.executemany(
        "INSERT INTO labels (id, image_id, person, keypoints, source, created_at, round, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(i, img, p, json.dumps(k.tolist()), s, t, r, sec) for i, img, p, k, s, t, r, sec in rows],
    )
    conn.executemany(
        "INSERT INTO models (id, checkpoint, round, train_size, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [(1, "checkpoints/model_1.pt", None, 1, json.dumps({"ap": 0.5, "sha1": "abc"}), "t3"),
         (2, "checkpoints/model_2.pt", 1, 3, json.dumps({"ap": 0.7}), "t4"), *extra_models],
    )  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    return folder


def test_v1_project_migrates_on_open(tmp_path):
    folder = make_v1_project(tmp_path / "v1")
    with Project.open(folder) as p:
        assert p.schema_version == len(store.MIGRATIONS) == 4
        assert p.image(1).revision == 0 and p.labels_of(2)[0].annotator is None  # v3 columns, empty
        assert (p.image(1).video, p.image(1).frame, p.image(1).timestamp) == (None, None, None)  # v4: stills
        assert p.frames_per_video() == {} and p.to_coco().frame(1).video is None
        assert p._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert p._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # sha1 moved from the metrics into its own column
        m1, m2 = p.models()
        assert (m1.sha1, m1.metrics) == ("abc", {"ap": 0.5}) and (m2.sha1, m2.metrics) == (None, {"ap": 0.7})
        assert p.model_by_sha1("abc").id == 1 and p.model_by_sha1("nope") is None
        # the newest source of image 1 stays current, the older one is history (ids kept)
        np.testing.assert_array_equal(p.keypoints_of(1), people(7)[:1])
        history = p.labels_of(1, history=True)
        assert [(r.source, r.person, r.superseded_at) for r in history] == [
            ("file:a.json", 0, "t2"), ("file:a.json", 1, "t2"), ("human:ann", 0, None)
        ]  # fmt: skip
        ids = [r[0] for r in p._conn.execute("SELECT id FROM labels ORDER BY id")]
        assert ids == [1, 2, 3, 4, 5, 6]
        np.testing.assert_array_equal(p.keypoints_of(2), people(2))
        # status counts each person once (current rows) and each image's time once
        summary = p.round_summary()
        assert summary[1] == {
            "images": 2, "people": 3, "seconds": 42.0, "timed": 3, "superseded": 2, "superseded_seconds": 0.0
        }  # fmt: skip
        assert summary[None] == {"images": 1, "people": 1, "seconds": 0.0, "timed": 0}
        assert len(p.to_coco().frame(1).keypoints) == 1
        # the v1 constraint UNIQUE(image_id, person, source) is gone, one current row per (image, person)
        sql = p._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'labels'").fetchone()[0]
        assert "UNIQUE" not in sql.upper() and "superseded_at" in sql
        with pytest.raises(sqlite3.IntegrityError):
            p._conn.execute(
                "INSERT INTO labels (image_id, person, keypoints, source, created_at) "
                "VALUES (2, 0, '[]', 'file:a.json', 't9')"
            )
        # and the migrated project takes corrections
        assert p.add_labels({1: people(1)}, "file:a.json") == 2
        np.testing.assert_array_equal(p.keypoints_of(1), people(1))
        assert len(p.labels_of(1, history=True)) == 5


def test_v1_migration_is_one_transaction(tmp_path):
    # a model whose metrics are not JSON makes the data step of the migration fail halfway
    folder = make_v1_project(tmp_path / "v1", [(3, "checkpoints/bad.pt", None, 1, "not json", "t5")])
    db = folder / store.DB_NAME
    before = sqlite3.connect(db).iterdump()
    before = "\n".join(before)
    with pytest.raises(StoreError, match="migration to schema version 2 failed .*the database is unchanged"):
        Project.open(folder)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "\n".join(conn.iterdump()) == before
    conn.close()


def test_v1_project_read_only_is_migrated_in_memory(tmp_path):
    folder = make_v1_project(tmp_path / "v1")
    db = folder / store.DB_NAME
    before = db.read_bytes()
    with Project.open(folder, readonly=True) as p:
        assert p.schema_version == len(store.MIGRATIONS) and p.models()[0].sha1 == "abc"
        np.testing.assert_array_equal(p.keypoints_of(1), people(7)[:1])
        with pytest.raises(StoreError, match="read-only"):
            p.add_labels({4: people(4)}, "simulated")
    assert db.read_bytes() == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()


# --- label history and content keys ----------------------------------------------------------------------
def test_replacement_keeps_history_and_round(project):
    r = project.open_round("random", {}, [(3, None), (4, None)])
    assert project.add_labels({3: people(3), 4: people(4)}, "simulated", round=r, seconds=20.0) == 4
    # a correction without a round stays with the round the image was chosen in
    assert project.add_labels({3: people(8, 1)}, "human:ann", seconds=5.0) == 1
    current = project.labels_of(3)
    assert [(c.source, c.round, c.seconds, c.superseded_at) for c in current] == [("human:ann", r, 5.0, None)]
    old = [row for row in project.labels_of(3, history=True) if row.superseded_at is not None]
    assert len(old) == 2 and all(o.round == r and o.source == "simulated" for o in old)
    assert old[0].superseded_at == current[0].created_at
    summary = project.round_summary()[r]
    assert (summary["people"], summary["timed"], summary["seconds"]) == (3, 3, 25.0)  # each image once
    assert (summary["superseded"], summary["superseded_seconds"]) == (2, 20.0)
    # an image outside any round keeps round None; an empty labelling supersedes everyone
    project.add_labels({7: people(7)}, "file:a.json")
    assert project.add_labels({7: np.zeros((0, K, 3))}, "file:b.json") == 0
    assert project.keypoints_of(7).shape == (0, K, 3) and project.image(7).state == "labelled"
    assert [row.round for row in project.labels_of(7, history=True)] == [None, None]
    assert all(row.superseded_at for row in project.labels_of(7, history=True))
    assert len(project.to_coco([3, 7]).frame(3).keypoints) == 1


def test_same_labels_under_another_file_name_add_nothing(project, tmp_path):
    first = write_coco(tmp_path / "labels.json", {1: people(1), 2: people(2, 1)})
    assert import_coco(project, first).new_labels == 3
    before = project.dump()
    # the same labels, people in another order, under another name (other bytes, so not "already imported")
    again = write_coco(tmp_path / "labels_again.json", {2: people(2, 1), 1: people(1)[::-1]})
    res = import_coco(project, again)
    assert (res.new_labels, res.already_imported, res.replaced) == (0, False, 0)
    assert "already stored" in res.message
    # the project's own export, re-imported: the "export everything and re-import" workflow
    out = project.export_coco(tmp_path / "exports" / "all.json")
    res = import_coco(project, out)
    assert (res.new_labels, res.already_imported) == (0, False)
    assert project.dump() == before and row_counts(project)["imports"] == 1
    # a corrected file replaces that image's labels only
    fixed = write_coco(tmp_path / "fixed.json", {1: people(11), 2: people(2, 1)})
    res = import_coco(project, fixed)
    assert (res.new_labels, res.replaced) == (2, 2) and "replacing 2" in res.message
    np.testing.assert_allclose(project.keypoints_of(1), people(11), atol=1e-4)
    assert row_counts(project)["labels"] == 5 and len(project.labels_of(2, history=True)) == 1
    assert project.round_summary()[None]["people"] == 3


def test_import_coco_refuses_predictions_without_consent(project, tmp_path):
    f = write_coco(tmp_path / "preds.json", {1: people(1), 2: people(2, 1)})
    data = json.loads(f.read_text())
    for n, ann in enumerate(data["annotations"]):
        ann["score"] = 0.5 + 0.1 * n
    f.write_text(json.dumps(data))
    before = project.dump()
    with pytest.raises(StoreError, match="3 annotation.*model predictions.*--accept-predictions") as err:
        import_coco(project, f)
    assert "annotation id 1 (image id 1): score 0.5" in str(err.value)
    assert project.dump() == before
    assert import_coco(project, f, accept_predictions=True).new_labels == 3
    np.testing.assert_allclose(project.keypoints_of(1), people(1), atol=1e-4)


# --- rounds: one table of legal moves ----------------------------------------------------------------------
def advance(p: Project, state: str) -> tuple[int, int | None]:
    """Bring a new round (images 3, 4) to `state` through the methods that move it; return (round, model)."""
    r, m = p.open_round("random", {}, [(3, None), (4, None)]), None
    steps = store.ROUND_STATES[1 : store.ROUND_STATES.index(state) + 1]
    for step in steps:
        if step == "labelled":
            p.add_labels({3: people(3), 4: people(4)}, "simulated", round=r, complete_round=True)
        elif step == "trained":
            m = p.add_model("checkpoints/m.pt", 2, round=r, mark_trained=True, sha1="s1")
        elif step == "evaluated":
            assert p.record_evaluation(m, {"clean": {"ap": 0.5}}) == r
        else:
            p.close_round(r)
    assert p.round(r).state == state
    return r, m


def test_round_moves_table_is_linear():
    assert list(store.ROUND_MOVES) == list(store.ROUND_STATES)
    for a, b in zip(store.ROUND_STATES, store.ROUND_STATES[1:], strict=False):
        assert store.ROUND_MOVES[a] == (b,)
    assert store.ROUND_MOVES["closed"] == ()


@pytest.mark.parametrize("state", store.ROUND_STATES)
def test_every_illegal_round_move_is_refused(project, state):
    r, m = advance(project, state)
    before = project.dump()
    illegal = [s for s in store.ROUND_STATES if s != state and s not in store.ROUND_MOVES[state]]
    assert len(illegal) == (3 if state != "closed" else 4)
    for to in illegal:
        with pytest.raises(StoreError, match=f"round {r} cannot move from '{state}' to '{to}'"):
            project.set_round_state(r, to)
    if state != "labelled":  # add_model(mark_trained) moves labelled -> trained only
        with pytest.raises(StoreError, match=f"cannot move from '{state}' to 'trained'"):
            project.add_model("checkpoints/other.pt", 2, round=r, mark_trained=True)
    if state not in ("evaluated", "closed"):  # close_round moves evaluated -> closed only (closed: no-op)
        with pytest.raises(StoreError, match=f"cannot move from '{state}' to 'closed'"):
            project.close_round(r)
    if state == "closed":  # the model's own round, but evaluating a closed round would move it back
        with pytest.raises(StoreError, match="cannot move from 'closed' to 'evaluated'"):
            project.record_evaluation(m, {"clean": {}}, round=r)
    if m is None:  # no model trained for this round yet: evaluating or closing with some model is refused
        other = project.add_model("checkpoints/x.pt", 0)
        before = project.dump()
        with pytest.raises(StoreError, match="only a round trained with model"):
            project.record_evaluation(other, {"clean": {}}, round=r)
    assert project.dump() == before and project.round(r).state == state


def test_trained_needs_a_model_and_labelled_needs_every_image(project):
    r = project.open_round("random", {}, [(3, None), (4, None)])
    project.add_labels({3: people(3)}, "simulated", round=r)
    with pytest.raises(StoreError, match="(?s)1 of its image.*image id 4: not labelled"):
        project.set_round_state(r, "labelled")
    project.skip_images(r, [4])
    project.set_round_state(r, "labelled")
    with pytest.raises(StoreError, match="cannot move from 'labelled' to 'trained' without a model"):
        project.set_round_state(r, "trained")
    assert project.round(r).state == "labelled"


def test_record_evaluation_then_close_round(project):
    r, m = advance(project, "trained")
    assert project.round(r).model_id == m
    assert project.record_evaluation(m, {"clean": {"ap": 0.4}}) == r
    info = project.models()[-1]
    assert project.round(r).state == "evaluated"
    assert (info.sha1, info.metrics) == ("s1", {"clean": {"ap": 0.4}})
    # re-running the evaluation (a crash before closing) only updates the metrics
    assert project.record_evaluation(m, {"clean": {"ap": 0.45}, "tta": 1}, round=r) == r
    assert project.round(r).state == "evaluated" and project.models()[-1].metrics["clean"] == {"ap": 0.45}
    project.close_round(r)
    project.close_round(r)  # already closed: a no-op
    assert project.round(r).state == "closed" and project.current_round() is None
    # the model of the initial labels has no round: only its metrics are stored
    m0 = project.add_model("checkpoints/m0.pt", 1)
    assert project.record_evaluation(m0, {"clean": {}}) is None
    assert project.models()[-1].metrics == {"clean": {}}


def test_evaluation_then_close_moves_through_evaluated(project):
    r, m = advance(project, "trained")
    assert project.record_evaluation(m, {"clean": {"ap": 0.3}}) == r  # the round trained with the model
    assert project.round(r).state == "evaluated"
    project.close_round(r)
    assert project.round(r).state == "closed" and project.latest_model().metrics == {"clean": {"ap": 0.3}}


def advance_second(p: Project) -> tuple[int, int]:
    r = p.open_round("random", {}, [(5, None)])
    p.add_labels({5: people(5)}, "simulated", round=r, complete_round=True)
    return r, p.add_model("checkpoints/m2.pt", 3, round=r, mark_trained=True)


def test_labelling_completes_the_round_in_the_same_transaction(project, tmp_path):
    r = project.open_round("random", {}, [(3, None), (4, None), (5, None)])
    with pytest.raises(StoreError, match="complete_round needs the round"):
        project.add_labels({3: people(3)}, "simulated", complete_round=True)
    project.add_labels({3: people(3)}, "simulated", round=r, complete_round=True)
    assert project.round(r).state == "open"  # images left
    assert project.skip_images(r, [4], complete_round=True) == 1
    assert project.round(r).state == "open"
    res = import_coco(project, write_coco(tmp_path / "r.json", {5: people(5)}), round=r, complete_round=True)
    assert res.round_completed and res.new_labels == 2 and "round 1 is labelled" in res.message
    assert project.round(r).state == "labelled"
    assert project.complete_round_if_done(r) is False  # past 'open': nothing to do


def test_complete_round_if_done(project):
    r = project.open_round("random", {}, [(3, None), (4, None)])
    project.add_labels({3: people(3)}, "simulated", round=r)
    assert project.complete_round_if_done(r) is False and project.round(r).state == "open"
    project.add_labels({4: np.zeros((0, K, 3))}, "simulated", round=r)  # labelled with nobody in it
    assert project.round(r).state == "open"  # labelling alone does not move the round
    assert project.complete_round_if_done(r) is True and project.round(r).state == "labelled"
    with pytest.raises(StoreError, match="no round 9"):
        project.complete_round_if_done(9)


def test_model_sha1(project):
    m1 = project.add_model("checkpoints/a.pt", 1, sha1="aaa")
    m2 = project.add_model("checkpoints/b.pt", 1, metrics={"sha1": "bbb", "x": 1})  # the v1 convention
    assert project.model_by_sha1("aaa").id == m1 and project.model_by_sha1("bbb").id == m2
    assert project.models()[1].metrics == {"x": 1} and project.models()[1].sha1 == "bbb"
    before = project.dump()
    with pytest.raises(StoreError, match="disagrees"):
        project.add_model("checkpoints/c.pt", 1, metrics={"sha1": "ccc"}, sha1="ddd")
    with pytest.raises(StoreError, match="has sha1 aaa, not zzz"):
        project.record_evaluation(m1, {"sha1": "zzz"})
    assert project.dump() == before


# --- opening safely ----------------------------------------------------------------------------------------
def make_project(tmp_path) -> Path:
    folder = tmp_path / "proj"
    with Project.create(folder, SK, images(20)) as p:
        p.add_labels({i: people(i, 3) for i in range(1, 21)}, "simulated")
    return folder


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize(
    "damage, needle",
    [
        pytest.param("empty", "not an activepose project \\(empty database\\)", id="empty"),
        pytest.param("no tables", "not an activepose project \\(empty database\\)", id="no-tables"),
        pytest.param(
            "foreign", "not an activepose project \\(an SQLite database with tables other", id="foreign"
        ),
        pytest.param("garbage", "not a SQLite database / corrupt", id="garbage"),
        pytest.param("truncated", "not a SQLite database / corrupt", id="truncated"),
        pytest.param("scribbled", "not a SQLite database / corrupt", id="scribbled"),
        pytest.param("newer", "schema version 99 is newer", id="newer"),
    ],
)
def test_open_refuses_bad_files_without_changing_them(tmp_path, damage, needle, readonly):
    folder = make_project(tmp_path)
    db = folder / store.DB_NAME
    data = db.read_bytes()
    if damage == "empty":
        db.write_bytes(b"")
    elif damage in ("no tables", "foreign"):
        db.unlink()
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = WAL")  # a valid, non-empty SQLite file
        if damage == "foreign":
            conn.execute("CREATE TABLE other (x)")
        conn.close()
    elif damage == "garbage":
        db.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif damage == "scribbled":  # a page in the middle overwritten
        page = 4096
        db.write_bytes(data[: 2 * page] + np.random.default_rng(1).bytes(page) + data[3 * page :])
    else:
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
    before = db.read_bytes()
    assert damage == "empty" or len(before) > 0
    with pytest.raises(StoreError, match=needle) as err:
        Project.open(folder, readonly=readonly)
    message = str(err.value)
    assert "\n" not in message and str(db) in message
    assert db.read_bytes() == before  # byte for byte


def test_open_read_only_never_writes(tmp_path):
    folder = make_project(tmp_path)
    db = folder / store.DB_NAME
    before = db.read_bytes()
    with Project.open(folder, readonly=True) as p:
        assert p.readonly and p.counts()["labelled"] == 20
        assert p.round_summary()[None]["people"] == 60
        for write in (
            lambda: p.add_labels({1: people(9)}, "simulated"),
            lambda: p.open_round("random", {}, [(1, None)]),
            lambda: p.add_model("checkpoints/x.pt", 1),
            lambda: p.set_image_state([2], "test"),
        ):
            with pytest.raises(StoreError, match=r"project.db: read-only \(folder or file not writable\)"):
                write()
        with pytest.raises(sqlite3.OperationalError):  # even a raw write cannot get through
            p._conn.execute("UPDATE images SET state = 'test'")
    assert db.read_bytes() == before
    with Project.open(folder) as p:  # and the project is still fine for writers
        assert p.add_labels({1: people(9)}, "simulated") == 2


_READ_ONLY = """
import sys
from pathlib import Path
from activepose.project.store import Project, StoreError
folder = Path(sys.argv[1])
try:
    (folder / "probe").touch()
    print("WRITABLE")  # permissions do not apply to this process: the test cannot check anything
    sys.exit(0)
except OSError:
    pass
try:
    Project.open(folder)
    print("OPENED FOR WRITING")
except StoreError as exc:
    print("refused:", exc)
with Project.open(folder, readonly=True) as p:
    print("labelled:", p.counts()["labelled"])
    try:
        p.add_labels({1: [[[0, 0, 0]] * 17]}, "simulated")
    except StoreError as exc:
        print("write refused:", exc)
print("files:", sorted(x.name for x in folder.iterdir()))
"""


def test_read_only_folder(tmp_path):
    folder = make_project(tmp_path)
    db = folder / store.DB_NAME
    before = db.read_bytes()
    cmd = [sys.executable, "-c", _READ_ONLY, str(folder)]
    if os.geteuid() == 0:  # root ignores permissions unless it gives up the capability to
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        out = subprocess.run(
            cmd, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=60
        )
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    if out.stdout.startswith("WRITABLE"):
        pytest.skip("this process can write to a read-only folder")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"refused: {db}: read-only (folder or file not writable)"), lines
    assert lines[1] == "labelled: 20"
    assert lines[2].startswith(f"write refused: {db}: read-only (folder or file not writable)")
    assert lines[3] == "files: ['caches', 'checkpoints', 'exports', 'project.db']"  # no -wal / -shm
    assert db.read_bytes() == before


def test_disk_full_is_a_store_error_and_changes_nothing(project):
    project.add_labels({1: people(1)}, "simulated")
    before = project.dump()
    pages = project._conn.execute("PRAGMA page_count").fetchone()[0]
    project._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own limit: no room for more pages
    big = {i: people(i, 30) for i in range(2, 11)}
    with pytest.raises(
        StoreError, match=r"project.db: disk full \(database or disk is full\); nothing written"
    ):
        project.add_labels(big, "simulated")
    assert project.dump() == before
    assert not project._conn.in_transaction
    project._conn.execute("PRAGMA max_page_count = 1073741823")
    assert project.add_labels(big, "simulated") == 270  # the store still takes writes


# --- schema v3: leases, revisions and per-person costs for the labelling page ------------------------------
def test_leases_expire_and_belong_to_one_annotator(project):
    lease = project.take_lease(1, "ann", 60, now=1000.0)
    assert (lease.annotator, lease.expires_at) == ("ann", 1060.0)
    with pytest.raises(leases.LeaseHeld, match="being labelled by 'ann'") as err:
        project.take_lease(1, "bob", 60, now=1030.0)
    assert err.value.lease.annotator == "ann"
    assert project.take_lease(1, "ann", 60, now=1030.0).expires_at == 1090.0  # renewed
    assert project.take_lease(1, "bob", 60, now=1091.0).annotator == "bob"  # expired: bob takes it
    assert set(project.leases(now=1100.0)) == {1} and project.leases(now=2000.0) == {}
    assert not project.release_lease(1, "ann") and project.release_lease(1, "bob")
    with pytest.raises(StoreError, match="no image with id 99"):
        project.take_lease(99, "ann", 60)


def test_save_labels_checks_round_lease_and_revision_in_one_transaction(project):
    project.open_round("random", {}, [(1, None), (2, None)])
    assert project.image(1).revision == 0
    project.take_lease(1, "ann", 60, now=time.time())
    with pytest.raises(leases.LeaseHeld):
        project.save_labels(1, people(1), source="web:bob", round=1, annotator="bob", revision=0)
    res = project.save_labels(1, people(1), source="web:ann", round=1, annotator="ann", revision=0,
                              seconds=9.0, people=[(4.0, 3), (5.0, 7)])  # fmt: skip
    assert (res.new_labels, res.revision, res.state, res.round_completed) == (2, 1, "labelled", False)
    assert [(r.annotator, r.person_seconds, r.clicks, r.seconds) for r in project.labels_of(1)] == [
        ("ann", 4.0, 3, 9.0), ("ann", 5.0, 7, 9.0)]  # fmt: skip
    assert project.leases() == {}
    with pytest.raises(leases.LabelConflict, match="revision 1") as err:  # a page that loaded revision 0
        project.save_labels(1, people(3), source="web:bob", round=1, annotator="bob", revision=0)
    assert err.value.revision == 1 and project.image(1).revision == 1
    with pytest.raises(StoreError, match="1 per-person cost.s. for 2 people"):
        project.save_labels(
            1, people(3), source="web:bob", round=1, annotator="bob", revision=1, people=[(1.0, 1)]
        )
    with pytest.raises(StoreError, match="not in round 1"):
        project.save_labels(5, people(5), source="web:ann", round=1, annotator="ann", revision=0)
    with pytest.raises(StoreError, match="it cannot be skipped"):
        project.skip_image(1, round=1, annotator="ann", revision=1)
    res = project.skip_image(2, round=1, annotator="ann", revision=0)
    assert (res.state, res.revision, res.round_completed) == ("skipped", 1, True)
    assert project.round(1).state == "labelled"
    with pytest.raises(StoreError, match="no longer open"):
        project.save_labels(1, people(3), source="web:ann", round=1, annotator="ann", revision=1)
    np.testing.assert_array_equal(project.keypoints_of(1), people(1))


def test_import_labels_stores_seconds_annotators_and_skips(project, tmp_path):
    project.open_round("random", {}, [(1, None), (2, None), (3, None)])
    f = tmp_path / "ls.json"
    f.write_text("[]")
    res = project.import_labels(f, {1: people(1)}, "label-studio:ls.json", round=1, complete_round=True,
                                seconds={1: 42.0}, annotators={1: "ann@x.org"}, skip=[2])  # fmt: skip
    assert res.skipped == 1 and not res.round_completed and "1 image(s) marked skipped" in res.message
    assert [(r.seconds, r.annotator) for r in project.labels_of(1)] == [(42.0, "ann@x.org")] * 2
    assert project.image(2).state == "skipped" and project.image(2).revision == 1
    with pytest.raises(StoreError, match="image id 5: not in round 1"):
        project.import_labels(tmp_path / "other.json", {}, "x", round=1, content_hash="h2", skip=[5])
    with pytest.raises(StoreError, match="needs the round"):
        project.import_labels(f, {}, "x", content_hash="h3", skip=[3])


def test_label_studio_coco_export_is_refused_as_coco(project, tmp_path):
    f = write_coco(tmp_path / "result.json", {1: people(1)})
    data = json.loads(f.read_text())
    data["info"] = {"year": 2026, "version": "1.0", "contributor": "Label Studio"}
    f.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="Label Studio's COCO export, which merges all people"):
        import_coco(project, f)
    assert project.labels_of(1) == []


def test_annotator_summary_counts_current_labels_with_per_person_medians(project):
    project.open_round("random", {}, [(1, None), (2, None), (3, None)])
    kw = {"round": 1, "revision": None}
    project.save_labels(
        1, people(1, 3), source="web:ann", annotator="ann", people=[(2.0, 1), (4.0, 3), (9.0, 20)], **kw
    )
    project.save_labels(2, people(2, 1), source="web:bob", annotator="bob", people=[(None, None)], **kw)
    project.save_labels(3, people(3, 1), source="web:ann", annotator="ann", **kw)
    project.add_labels({4: people(4)}, "simulated")  # no annotator: not listed
    assert project.annotator_summary() == {
        "ann": {"images": 2, "people": 4, "median_seconds": 4.0, "median_clicks": 3.0},
        "bob": {"images": 1, "people": 1, "median_seconds": None, "median_clicks": None},
    }
    project.add_labels({2: people(7, 1)}, "web:cy", annotator="cy")  # bob's labels superseded: cy's count
    assert set(project.annotator_summary()) == {"ann", "cy"}


def test_frames_of_footage_keep_their_video_and_frame_through_the_store_and_coco(tmp_path):
    """v4: an image may be a frame of a video; the store keeps video, frame and time, and COCO export carries
    `images[].video` / `.frame` (the fields of ../shared/data/youtube_pose), stills carry neither."""
    images = [("a.jpg", W, H, "h1", 1, "cam-1", 30, 1.0), ("b.jpg", W, H, "h2", 2, "cam-1", 60, 2.0),
              ("c.jpg", W, H, "h3", 3, "cam-2", 0, 0.0), ("d.jpg", W, H, "h4", 4)]  # fmt: skip
    with Project.create(tmp_path / "p", SK, images) as p:
        assert (p.image(2).video, p.image(2).frame, p.image(2).timestamp) == ("cam-1", 60, 2.0)
        assert p.image(4).video is None
        assert p.frames_per_video() == {"cam-1": 2, "cam-2": 1}
        assert p.frames_per_video([2, 3, 4]) == {"cam-1": 1, "cam-2": 1}
        out = p.export_coco(tmp_path / "out.json", image_ids=[1, 3, 4])
    data = json.loads(out.read_text())
    by_id = {im["id"]: im for im in data["images"]}
    assert (by_id[1]["video"], by_id[1]["frame"], by_id[3]["video"]) == ("cam-1", 30, "cam-2")
    assert "video" not in by_id[4] and "frame" not in by_id[4]
    mixed = [("a.jpg", W, H, "h1", None, "cam-1", 7), ("b.jpg", W, H, "h2", 8, "cam-1", 1)]  # ids, not frames
    with Project.create(tmp_path / "r", SK, mixed) as p:
        assert p.image_ids() == [8, 9] and p.image(9).frame == 7
    with pytest.raises(store.StoreError, match="negative frame index"):
        Project.create(tmp_path / "q", SK, [("a.jpg", W, H, "h1", 1, "cam-1", -1)])
