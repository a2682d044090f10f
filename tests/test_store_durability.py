"""Issue 17: a save the labelling server acknowledged survives other processes touching the project, and kill -9.

Closing any file descriptor of `project.db` drops every POSIX lock the process holds on it, SQLite's own. The
store used to read the file's header with a plain `open()` on every `Project.open` (each web worker thread
opens one): the server's locks were gone, the next process to close a connection thought it was the last
user and deleted the write-ahead log the server still wrote into, and kill -9 lost the acknowledged saves.
These tests run the real `activepose annotate` server and other commands as separate processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from activepose.interop.coco import import_coco
from activepose.pose.coco import load_coco
from activepose.project.schema import DB_NAME, StoreError
from activepose.project.store import Project

from .conftest import project_with_round, synthetic_project_data

ROUND = [3, 4, 5, 6, 7, 8]
K = 14
JSON = {"content-type": "application/json"}
CLI = [sys.executable, "-m", "activepose.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def project(tmp_path):
    root, gt_path = synthetic_project_data(tmp_path / "data", num_images=12, n_initial=0, n_test=0)
    gt = load_coco(gt_path)
    project_with_round(tmp_path / "proj", gt, ROUND).close()
    return tmp_path / "proj"


def cli(*args, check: int | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    return res


class Server:
    """`activepose annotate PROJECT` in its own process, killed with SIGKILL at the end."""

    def __init__(self, folder: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*CLI, "annotate", str(folder), "--port", str(self.port), "--no-predictions", "--device", "cpu", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.http = httpx.Client(base_url=self.url, headers={"X-Annotator": "ann"}, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if self.http.get("/api/round").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the server did not start in 60 s")

    def save(self, image_id: int, x: float) -> httpx.Response:
        rev = self.http.get(f"/api/images/{image_id}").json()["revision"]
        kps = [[x + j, 10.0 + j, 2] for j in range(K)]
        return self.http.post(
            f"/api/images/{image_id}/labels", json={"revision": rev, "people": [{"keypoints": kps}]}
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.http.close()


def _stored(folder: Path) -> dict[int, tuple[str, int, float | None]]:
    """{image id: (state, revision, x of the first keypoint of its first person)} read by a fresh process."""
    code = (
        "import json, sys; from activepose.project.store import Project\n"
        "with Project.open(sys.argv[1], readonly=True) as p:\n"
        "    out = {}\n"
        "    for i in p.image_ids():\n"
        "        img, rows = p.image(i), p.labels_of(i)\n"
        "        out[i] = [img.state, img.revision, float(rows[0].keypoints[0, 0]) if rows else None]\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return {int(k): tuple(v) for k, v in json.loads(res.stdout).items()}


def test_an_acknowledged_save_survives_a_failing_command_in_another_process_and_kill_9(project, tmp_path):
    server = Server(project)
    try:
        # Parallel requests: several worker threads of the server, each opening its own connection.
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: server.http.get("/api/round").status_code, range(48))) == {200}
        empty = tmp_path / "empty.json"
        empty.write_text("{}")
        failed = cli("label", project, "--oracle", "file", "--labels", empty, check=2)  # a mistaken import
        assert "error:" in failed.stdout and "Traceback" not in failed.stdout
        assert Path(f"{project / DB_NAME}-wal").exists()  # the server's write-ahead log is still there
        res = server.save(ROUND[0], 11.5)
        assert res.status_code == 200 and res.json()["state"] == "labelled" and res.json()["revision"] == 1
        status = cli("status", project, check=0).stdout  # another process sees the save at once
        assert "1/6" in " ".join(status.split()), status
        assert _stored(project)[ROUND[0]] == ("labelled", 1, 11.5)
    finally:
        server.kill()  # no checkpoint, no clean close: only the WAL holds the save
    assert _stored(project)[ROUND[0]] == ("labelled", 1, 11.5)
    with sqlite3.connect(project / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_stopping_the_server_normally_keeps_a_skip_made_by_another_process(project, tmp_path):
    """The issue's other loss: after a failing command, a save, then `label --skip` from another process, a
    normal stop (Ctrl-C) of the server wrote its own old pages over the skip and printed an I/O error."""
    server = Server(project)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: server.http.get("/api/round").status_code, range(48)))
        (tmp_path / "empty.json").write_text("{}")
        cli("label", project, "--oracle", "file", "--labels", tmp_path / "empty.json", check=2)
        assert server.save(ROUND[0], 12.0).status_code == 200
        skipped = cli("label", project, "--skip", ROUND[2], check=0)
        assert "1 skipped" in " ".join(skipped.stdout.split()), skipped.stdout
        assert server.save(ROUND[1], 13.0).status_code == 200
        server.proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down, the connections close
        out, _ = server.proc.communicate(timeout=30)
        assert "I/O error" not in out and "Traceback" not in out, out
    finally:
        server.kill()
    stored = _stored(project)
    assert stored[ROUND[2]][0] == "skipped"
    assert stored[ROUND[0]] == ("labelled", 1, 12.0) and stored[ROUND[1]] == ("labelled", 1, 13.0)


def test_a_second_server_on_the_project_is_refused_naming_the_first(project):
    server = Server(project)
    try:
        res = cli("annotate", project, "--port", _free_port(), "--no-predictions", "--device", "cpu", check=2)
        message = " ".join(res.stdout.split())
        assert "busy" in message and "activepose annotate" in message and f"pid {server.proc.pid}" in message
        # reading and importing still work while the server runs
        assert cli("status", project, check=0).returncode == 0
        assert server.save(ROUND[1], 20.0).status_code == 200
        refused = cli("select", project, "--budget", 1, "--strategy", "random", check=2)
        assert "busy" in refused.stdout
    finally:
        server.kill()
    assert _stored(project)[ROUND[1]][:2] == ("labelled", 1)


_WRITER = """
import sys
import numpy as np
from activepose.project.store import Project
folder, image_ids, n = sys.argv[1], [int(i) for i in sys.argv[2].split(",")], int(sys.argv[3])
for k in range(n):
    for image_id in image_ids:
        with Project.open(folder) as p:  # open and close every time: the pattern that dropped the locks
            kps = np.zeros((1, p.skeleton.num_keypoints, 3))
            kps[0, :, :2], kps[0, :, 2] = [5.0 + k, 6.0], 2
            p.add_labels({image_id: kps}, source=f"writer:{k}")
        print(image_id, k, flush=True)
"""


def test_two_writer_processes_under_a_burst_keep_every_acknowledged_write(project):
    """The server (one process) saves in a burst from 6 threads while another process opens, writes and
    closes the project 24 times; after kill -9 of the server every acknowledged write of both is stored."""
    server = Server(project)
    outside = [1, 2, 9, 10]  # pool images outside the round: the other process labels these
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(project), ",".join(map(str, outside)), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    acknowledged: dict[int, float] = {}
    lock = threading.Lock()

    def burst(image_id: int) -> None:
        for n in range(4):
            x = 30.0 + 10 * n + image_id / 100
            res = server.save(image_id, x)
            if res.status_code == 200:
                with lock:
                    acknowledged[image_id] = x
            else:
                assert res.status_code in (409, 422), res.text  # the round completes: later saves refused

    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(burst, ROUND))
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    finally:
        server.kill()
        if writer.poll() is None:
            writer.kill()
    assert set(acknowledged) == set(ROUND)
    stored = _stored(project)
    for image_id, x in acknowledged.items():
        assert stored[image_id][0] == "labelled" and stored[image_id][2] == pytest.approx(x), image_id
    assert len(out.splitlines()) == 6 * len(outside)  # every write of the other process returned
    for image_id in outside:  # its last write (k = 5) is the current one
        assert stored[image_id][0] == "labelled" and stored[image_id][2] == pytest.approx(5.0 + 5), image_id
    with Project.open(project) as p:
        assert p.round(1).state == "labelled"


@pytest.mark.parametrize("fmt", ["coco", "label-studio"])
@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_the_project_database_is_never_read_as_a_labels_file(project, fmt, suffix):
    """`label --labels PROJECT/project.db` would open the database with open(): refused before reading it."""
    with Project.open(project) as p:  # leaves a -wal companion (a WAL database keeps it while in use)
        p.take_lease(ROUND[0], "ann", 60)
        before = p.dump()
        path = Path(f"{project / DB_NAME}{suffix}")
        assert path.exists()  # an open WAL database keeps its -wal companion
        res = cli("label", project, "--oracle", "file", "--format", fmt, "--labels", path, check=2)
        message = " ".join(res.stdout.split())
        assert "the project's own database, not a labels file" in message and "Traceback" not in message
        assert p.dump() == before


def test_an_image_file_name_pointing_at_the_database_is_never_hashed(project, tmp_path, monkeypatch):
    """A COCO file whose image is named like no project image is matched by content hash; a `file_name` that
    is the project's database must not be opened for it (inside the import's write transaction)."""
    import activepose.project.store as store_module

    hashed = []
    real = store_module.file_sha1
    monkeypatch.setattr(store_module, "file_sha1", lambda p: hashed.append(Path(p)) or real(p))
    gt = json.loads((project.parent / "data" / "annotations.json").read_text())
    gt["images"] = [{**gt["images"][0], "id": 999, "file_name": str(project / DB_NAME)}]
    gt["annotations"] = [{**a, "image_id": 999} for a in gt["annotations"] if a["image_id"] == 1][:1]
    labels = tmp_path / "points_at_db.json"
    labels.write_text(json.dumps(gt))
    with Project.open(project) as p:
        before = p.dump()
        with pytest.raises(StoreError, match="no project image by id, name or hash"):
            import_coco(p, labels, source="file")
        assert p.dump() == before
    assert project / DB_NAME not in [h.resolve() for h in hashed]
