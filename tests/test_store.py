"""The project store: round trip, migrations, all-or-nothing writes, idempotent imports, rounds, concurrency
and SIGKILL in the middle of a transaction."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from activepose import store
from activepose.coco import annotation_dict, load_coco
from activepose.skeleton import get_skeleton
from activepose.store import Project, StoreError

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
    # A failing migration leaves the database at its version.
    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, ["CREATE TABLE t (x)", "NOT SQL"]])
    with pytest.raises(StoreError, match="migration to schema version 3 failed"):
        Project.open(folder)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="newer"):  # db at v2, code knows v1
        Project.open(folder)
    conn = sqlite3.connect(folder / store.DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
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


def test_labels_clipped_identical_noop_conflict_refused(project):
    kps = people(1)
    kps[0, 0, 0] = W + 0.5  # within the 1 % margin: clipped onto the border
    assert project.add_labels({1: kps}, "simulated") == 2
    assert project.keypoints_of(1)[0, 0, 0] == W
    assert project.add_labels({1: kps}, "simulated") == 0  # identical: no-op
    before = project.dump()
    with pytest.raises(StoreError, match="image id 1: source 'simulated' already stored"):
        project.add_labels({1: people(5)}, "simulated")
    assert project.dump() == before
    assert project.add_labels({1: people(5)}, "human:ann") == 2  # another source may relabel
    np.testing.assert_allclose(project.keypoints_of(1), people(5))


def test_import_twice_is_idempotent_and_export_round_trips(project, tmp_path):
    f = write_coco(tmp_path / "labels.json", {1: people(1), 2: people(2, 1)})
    r1 = project.import_coco(f)
    assert (r1.new_labels, r1.already_imported) == (3, False)
    before = project.dump()
    r2 = project.import_coco(f)
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
        project.import_coco(f)
    other = get_skeleton("lsp14")
    data = json.loads(f.read_text())
    data["categories"] = [other.to_coco_category()]
    (tmp_path / "sk.json").write_text(json.dumps(data))
    with pytest.raises(StoreError, match="do not match skeleton"):
        project.import_coco(tmp_path / "sk.json")
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
    project.add_labels({3: people(3), 5: people(5)}, "simulated", round=r)
    project.set_round_state(r, "labelled")
    m = project.add_model(
        "checkpoints/r1.pt", train_size=2, round=r, metrics={"ap": 0.5, "pck": float("nan")}
    )
    project.set_round_state(r, "trained", model_id=m)
    with pytest.raises(StoreError, match="cannot move back"):
        project.set_round_state(r, "open")
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
from activepose.store import Project
folder, go, files = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
while not go.exists():
    time.sleep(0.005)
with Project.open(folder) as p:
    print(sum(p.import_coco(f).new_labels for f in files))
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
from activepose import store
from activepose.store import Project
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
