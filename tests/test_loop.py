"""The active-learning loop: the planner's decisions, and `activepose run` surviving SIGKILL anywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from activepose.loop import next_step
from activepose.pose.skeleton import get_skeleton
from activepose.project.store import Project

from .conftest import synthetic_project_data

SKEL = get_skeleton("lsp14")


# --- the planner -------------------------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path):
    images = [(f"img{i}.png", 100, 80, f"h{i}", i) for i in range(1, 11)]
    with Project.create(tmp_path / "p", SKEL, images) as p:
        yield p


def _people(n=1):
    kps = np.zeros((n, SKEL.num_keypoints, 3))
    kps[..., 0], kps[..., 1], kps[..., 2] = 10, 20, 2
    return kps


def test_next_step_walks_a_round(project):
    assert next_step(project, 1).action == "select"  # nothing labelled, no model: choose round 1
    assert next_step(project, 0).action == "done"
    r = project.open_round("diversity", {}, [(1, 0.5), (2, 0.4)])
    step = next_step(project, 1)
    assert (step.action, step.round) == ("label", r)
    project.add_labels({1: _people(), 2: _people(2)}, "simulated", round=r)
    assert next_step(project, 1).action == "label"  # labelled images, but the round is not marked yet
    project.set_round_state(r, "labelled")
    assert (next_step(project, 1).action, next_step(project, 1).round) == ("train", r)
    m = project.add_model("checkpoints/model_1.pt", 2, round=r, mark_trained=True)
    assert project.round(r).state == "trained" and project.round(r).model_id == m
    assert next_step(project, 1).action == "evaluate"
    project.record_evaluation(m, {"clean": {"count_acc": 0.5}})
    assert project.round(r).state == "evaluated" and next_step(project, 1).action == "close"
    project.close_round(r)
    assert project.round(r).state == "closed"
    assert next_step(project, 1).action == "done"
    step = next_step(project, 3)
    assert (step.action, step.round) == ("select", 2)


def test_next_step_trains_and_evaluates_initial_labels_first(project):
    project.add_labels({3: _people()}, "file:init.json")
    step = next_step(project, 2)
    assert (step.action, step.round) == ("train", None) and "no model yet" in step.reason
    m = project.add_model("checkpoints/model_1.pt", 1)
    assert next_step(project, 2).action == "evaluate"
    project.record_evaluation(m, {"sha1": "x"})  # a fingerprint alone is not an evaluation
    assert next_step(project, 2).action == "evaluate"
    project.record_evaluation(m, {"clean": {"count_acc": 0.1}})
    assert next_step(project, 2).action == "select"
    project.add_labels({4: _people()}, "file:more.json")  # labels imported between rounds: train again
    assert next_step(project, 2).action == "train"


def test_closing_needs_the_rounds_own_model(project):
    from activepose.project.schema import StoreError

    r = project.open_round("random", {}, [(1, None)])
    project.add_labels({1: _people()}, "simulated", round=r)
    m0 = project.add_model("checkpoints/old.pt", 0)
    with pytest.raises(StoreError, match="only a round trained with model"):
        project.record_evaluation(m0, {"clean": {}}, round=r)  # the round is still 'open'
    assert project.round(r).state == "open" and project.models()[0].metrics == {}  # nothing half-written
    project.set_round_state(r, "labelled")
    m1 = project.add_model("checkpoints/new.pt", 1, round=r, mark_trained=True)
    with pytest.raises(StoreError, match="only a round trained with model"):
        project.record_evaluation(m0, {"clean": {}}, round=r)
    project.record_evaluation(m1, {"clean": {}}, round=r)
    project.close_round(r)
    assert project.round(r).state == "closed"


def test_next_step_rejects_negative_rounds(project):
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        next_step(project, -1)


# --- the loop from the command line, killed and resumed -------------------------------------------------------
TINY = ["--input-size", "64", "--width", "0.25", "--head-channels", "32", "--epochs", "2", "--workers", "0",
        "--no-pretrained", "--tta", "clean", "--device", "cpu"]  # fmt: skip
TRAIN_TINY = [a for a in TINY if a not in ("--tta", "clean")]
ROUNDS, BUDGET = 2, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_project_data(tmp_path_factory.mktemp("loopdata"), num_images=16, n_initial=4, n_test=3)


def _cli(*args, env_extra=None, check=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEPOSE_KILL_AT"}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})})
    proc = subprocess.run([sys.executable, "-m", "activepose.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _new_project(folder, data):
    root, gt = data
    _cli("init", folder, "--pool", gt, "--labels", root / "initial.json", "--test", root / "test.json")
    return folder


def _run_args(folder, data):
    return ["run", folder, "--rounds", ROUNDS, "--budget", BUDGET, "--ground-truth", data[1], *TINY]


def _state(folder) -> dict:
    """Everything a run decides, without wall-clock times: rounds, items, labels, images, models, weights."""
    con = sqlite3.connect(folder / "project.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        state = {
            "rounds": con.execute("SELECT id, strategy, budget, state, model_id FROM rounds ORDER BY id").fetchall(),
            "items": con.execute("SELECT round_id, image_id, rank FROM round_items ORDER BY round_id, rank").fetchall(),
            "scores": [s for (s,) in con.execute("SELECT score FROM round_items ORDER BY round_id, rank")],
            "labels": con.execute("SELECT image_id, person, keypoints, source, round, seconds, import_id FROM labels "
                                  "ORDER BY image_id, person, source").fetchall(),
            "images": con.execute("SELECT id, state, round FROM images ORDER BY id").fetchall(),
            "imports": con.execute("SELECT content_hash, n_labels FROM imports ORDER BY id").fetchall(),
            "models": con.execute("SELECT id, checkpoint, round, train_size FROM models ORDER BY id").fetchall(),
            "metrics": [json.loads(m)["clean"] for (m,) in con.execute("SELECT metrics FROM models ORDER BY id")],
        }  # fmt: skip
    finally:
        con.close()
    state["weights"] = [
        torch.load(folder / ckpt, map_location="cpu", weights_only=False)["model_state"]
        for _, ckpt, _, _ in state["models"]
    ]
    return state


def _assert_same(a: dict, b: dict) -> None:
    for key in ("rounds", "items", "labels", "images", "imports", "models", "metrics"):
        assert a[key] == b[key], key
    np.testing.assert_allclose(np.array(a["scores"], float), np.array(b["scores"], float), rtol=1e-5)
    assert len(a["weights"]) == len(b["weights"])
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def _invariants(folder) -> None:
    """What must hold after any crash: one active round at most, no label stored twice, states consistent."""
    con = sqlite3.connect(folder / "project.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM rounds WHERE state != 'closed'").fetchone()[0] <= 1
        dup = "SELECT COUNT(*) FROM (SELECT 1 FROM labels GROUP BY image_id, person HAVING COUNT(*) > 1)"
        assert con.execute(dup).fetchone()[0] == 0
        assert (
            con.execute(
                "SELECT COUNT(*) FROM images i WHERE (i.state = 'labelled') != "
                "EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id)"
            ).fetchone()[0]
            == 0
        )  # labelled exactly when it has labels (every synthetic image has people)
        queued = con.execute("SELECT COUNT(*) FROM images WHERE state = 'queued'").fetchone()[0]
        open_items = con.execute(
            "SELECT COUNT(*) FROM round_items ri JOIN images i ON i.id = ri.image_id "
            "JOIN rounds r ON r.id = ri.round_id WHERE r.state = 'open' AND i.state = 'queued'"
        ).fetchone()[0]
        assert queued == open_items  # queued images belong to the open round
    finally:
        con.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    folder = _new_project(tmp_path_factory.mktemp("straight") / "proj", data)
    out = _cli(*_run_args(folder, data)).stdout
    assert f"done: {ROUNDS} round(s) closed" in out
    return folder, _state(folder)


def test_uninterrupted_run_does_every_round(uninterrupted, data):
    folder, state = uninterrupted
    assert [(r[0], r[3]) for r in state["rounds"]] == [(1, "closed"), (2, "closed")]
    assert [m[3] for m in state["models"]] == [4, 4 + BUDGET, 4 + 2 * BUDGET]  # initial model + one per round
    assert [m[2] for m in state["models"]] == [None, 1, 2]
    assert (
        len(state["items"]) == ROUNDS * BUDGET and len({i for _, i, _ in state["items"]}) == ROUNDS * BUDGET
    )
    assert all(
        i not in (1, 2, 3, 4, 14, 15, 16) for _, i, _ in state["items"]
    )  # never labelled or test images
    assert (folder / "exports" / "learning_curve.png").stat().st_size > 0
    curve = json.loads((folder / "exports" / "learning_curve.json").read_text())
    assert [p["train_size"] for p in curve] == [4, 7, 10]
    assert curve[0]["label_seconds"] == 0 and curve[1]["label_seconds"] < curve[2]["label_seconds"]
    again = _cli(*_run_args(folder, data)).stdout  # the same command again: nothing to do, nothing changes
    assert "done: 2 round(s) closed" in again and "train" not in again.split("done:")[0]
    _assert_same(_state(folder), state)


# (kill point, the step it must have died in): the initial model's training (second epoch), round 1's selection
# (mid-scoring), its label transaction, its training, the copy before recording, and round 2's evaluation
# before its metrics are stored. Each run starts where the previous one died, so point counts restart.
KILLS = [("train:2", "initial labels: train"), ("select:2", "round 1: select"), ("label", "round 1: label"),
         ("train:2", "round 1: train"), ("record", "round 1: train"), ("evaluate:2", "round 2: evaluate")]  # fmt: skip


def _last_step(output: str) -> str | None:
    steps = re.findall(r"((?:initial labels|round \d+): \w+) \(", output)
    return steps[-1] if steps else None


def test_sigkill_at_every_stage_then_rerun_equals_uninterrupted(tmp_path, data, uninterrupted):
    folder = _new_project(tmp_path / "proj", data)
    for spec, where in KILLS:
        proc = _cli(*_run_args(folder, data), env_extra={"ACTIVEPOSE_KILL_AT": spec}, check=False)
        assert proc.returncode == -signal.SIGKILL, f"{spec}: not killed\n{proc.stdout}{proc.stderr}"
        assert _last_step(proc.stdout) == where, proc.stdout
        _invariants(folder)
        if spec == "label":  # killed inside the transaction: none of round 1's labels are stored
            with Project.open(folder) as p:
                assert p.round_summary().get(1) is None and p.round(1).state == "open"
    out = _cli(*_run_args(folder, data)).stdout
    assert f"done: {ROUNDS} round(s) closed" in out
    _invariants(folder)
    _assert_same(_state(folder), uninterrupted[1])


def test_external_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, data, uninterrupted):
    """A kill -9 from outside (not at a chosen point) while round 1 trains: the rerun finishes identically."""
    folder = _new_project(tmp_path / "proj", data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ACTIVEPOSE_KILL_AT", None)
    cmd = [sys.executable, "-m", "activepose.cli", *map(str, _run_args(folder, data))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 300
    try:
        for line in proc.stdout:
            seen.append(line)
            if "round 1: train" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "".join(seen)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    _invariants(folder)
    with Project.open(folder) as p:  # killed while round 1 was being trained (or just after)
        assert p.round(1).state in ("labelled", "trained")
    _cli(*_run_args(folder, data))
    _assert_same(_state(folder), uninterrupted[1])


def test_run_refuses_bad_requests(tmp_path, data):
    root, gt = data
    folder = tmp_path / "proj"
    _cli("init", folder, "--pool", gt, "--labels", root / "initial.json")  # no test set
    proc = _cli("run", folder, "--rounds", 1, "--budget", 2, "--ground-truth", gt, *TINY, check=False)
    assert proc.returncode == 2 and "no test set" in proc.stdout
    proc = _cli("run", folder, "--rounds", 1, "--budget", 2, *TINY, check=False)
    assert proc.returncode == 2 and "needs --ground-truth" in proc.stdout
    proc = _cli("run", folder, "--rounds", 1, "--budget", 2, "--oracle", "human", "--ground-truth", gt, *TINY,
                check=False)  # fmt: skip
    assert proc.returncode == 2 and "unknown --oracle" in proc.stdout
    before = (folder / "project.db").read_bytes()
    # a budget larger than what is left: 12 unlabelled images, 50 asked: refused before any training
    proc = _cli("run", folder, "--rounds", 1, "--budget", 50, "--ground-truth", gt, "--test", root / "test.json",
                "--strategy", "random", *TINY, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert "1 more round(s) of --budget 50 need 50 images but 12 unlabelled images are left" in proc.stdout
    with Project.open(folder) as p:
        assert p.rounds() == [] and p.models() == []  # nothing opened, nothing trained
    assert before == (folder / "project.db").read_bytes()
    # a ground truth that does not cover the pool: refused before the first step, not after a trained round
    partial = root / "initial.json"
    proc = _cli("run", folder, "--rounds", 1, "--budget", 2, "--ground-truth", partial, "--test", root / "test.json",
                *TINY, check=False)  # fmt: skip
    assert proc.returncode == 2 and "does not cover the project's pool" in proc.stdout, proc.stdout
    proc = _cli("run", folder, "--rounds", 1, "--budget", 2, "--ground-truth", gt, "--test", root / "test.json",
                *TINY[:-4], "--tta", "foo", check=False)  # fmt: skip
    assert proc.returncode == 2 and "unknown TTA 'foo'" in proc.stdout, proc.stdout
    assert before == (folder / "project.db").read_bytes()


_HOLDER = """
import sys, time
from activepose.lock import project_lock
with project_lock(sys.argv[1], "holder-for-test"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_loop_or_training_per_project(tmp_path, data):
    """A second writer on a busy project is refused, naming the holder; a SIGKILLed holder leaves no stale lock."""
    folder = _new_project(tmp_path / "proj", data)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (folder / "project.db").read_bytes()
        proc = _cli(*_run_args(folder, data), check=False)
        assert proc.returncode == 2 and "busy" in proc.stdout and "holder-for-test" in proc.stdout
        assert f"pid {holder.pid}" in proc.stdout
        proc = _cli("train", folder, *TRAIN_TINY, check=False)  # train PROJECT takes the same lock
        assert proc.returncode == 2 and "busy" in proc.stdout
        assert (folder / "project.db").read_bytes() == before
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdout.close()
    proc = _cli("train", folder, *TRAIN_TINY)  # the kernel released the dead holder's lock
    assert "recorded model 1" in proc.stdout


def test_ctrl_c_stops_cleanly_and_the_same_command_continues(tmp_path, data, uninterrupted):
    folder = _new_project(tmp_path / "proj", data)
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEPOSE_KILL_AT"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "activepose.cli", *map(str, _run_args(folder, data))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "round 1: select" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out and "run the same command to continue" in out
    _invariants(folder)
    _cli(*_run_args(folder, data))
    _assert_same(_state(folder), uninterrupted[1])


def _in_process_options(data, max_epochs: int):
    """`RunOptions` for `activepose.loop.run` equal to `_run_args`'s command line (with `max_epochs`)."""
    from activepose.config import EvalOptions, SelectOptions
    from activepose.loop import RunOptions
    from activepose.oracle.simulated import SimulatedLabeller
    from activepose.workflow import resolve_train_config

    train_cfg = resolve_train_config(None, None, input_size=64, width=0.25, head_channels=32, max_epochs=max_epochs,
                                     num_workers=0, pretrained=False, device="cpu")  # fmt: skip
    return RunOptions(budget=BUDGET, oracle=SimulatedLabeller(data[1]), train=train_cfg,
                      select=SelectOptions(budget=BUDGET, device="cpu"),
                      evaluate=EvalOptions(ttas=("clean",), device="cpu"))  # fmt: skip


def test_a_ctrl_c_lost_on_the_way_still_stops_the_loop_after_its_step(tmp_path, data):
    """Python drops a KeyboardInterrupt raised in a finalizer ("Exception ignored in ...") and a library may
    swallow one: the loop notices the SIGINT anyway and stops after the step it was in, that step stored."""
    from activepose.loop import run
    from activepose.workflow.reporting import Reporter

    class Swallowing(Reporter):
        """Ctrl-C during the first step's first note, lost as in a `__del__`."""

        sent = False

        def note(self, text: str) -> None:
            if not self.sent:
                self.sent = True
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)  # the handler raises in here
                except KeyboardInterrupt:
                    pass

    folder = _new_project(tmp_path / "proj", data)
    opts = _in_process_options(data, max_epochs=1)
    # SIGINT handled as in a terminal, however pytest was started
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        reporter = Swallowing()
        with pytest.raises(KeyboardInterrupt):
            run(folder, ROUNDS, opts, reporter)
        assert reporter.sent and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, outer)
    with Project.open(folder, readonly=True) as project:
        assert next_step(project, ROUNDS).action == "evaluate"  # the initial model is trained, nothing more


def test_loop_runs_in_process_and_equals_the_command(tmp_path, data, uninterrupted):
    """`activepose.loop.run` is the library call behind `activepose run`: driven from Python, same result."""
    from activepose.loop import run

    folder = _new_project(tmp_path / "proj", data)
    opts = _in_process_options(data, max_epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): same float sums, same weights
    try:
        outcome = run(folder, ROUNDS, opts)
    finally:
        torch.set_num_threads(threads)
    one_round = ["select", "label", "train", "evaluate"]
    assert [a for a, _, _ in outcome.steps] == ["train", "evaluate"] + one_round * ROUNDS
    assert outcome.reason.startswith(f"{ROUNDS} round(s) closed") and outcome.curve.is_file()
    _assert_same(_state(folder), uninterrupted[1])
    assert run(folder, ROUNDS, opts).steps == []  # done: the same call again does nothing
