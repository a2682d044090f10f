"""Issue 17, item 4: opening a checkpoint never runs code (weights_only=True), and old checkpoints still load.

A crafted checkpoint whose unpickling would run a command is refused with a CheckpointError naming the file,
directly and through the CLI (exit 2, one `error:` line), and the command never runs. Checkpoints store their
RNG state as plain data now; ones written before (numpy's `np.random.get_state()` tuple with a uint32 array)
load through a scoped allowlist of just the numpy globals that state needs, and restore it exactly.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from activepose.cli import app
from activepose.config import SyntheticConfig, TrainConfig
from activepose.pose.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.pose.train import _rng_state, _set_rng_state, train
from activepose.project.store import Project

from .conftest import synthetic_project_data

runner = CliRunner()


class RunsACommand:
    """Unpickling this runs a shell command that creates `marker`: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class RunsPython:
    """Unpickling this runs Python code (builtins.exec) that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = [RunsACommand, RunsPython]


def crafted_checkpoint(path: Path, payload, marker: Path) -> Path:
    """Write an activepose-looking checkpoint at `path` whose unpickling would create `marker`."""
    torch.save({"format": "activepose", "version": 1, "model_config": payload(marker)}, path)
    return path


def no_unsafe_globals(path: Path) -> list[str]:
    """The globals in `path` that a plain `torch.load(weights_only=True)` refuses (none for a safe file)."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(path)


def draws() -> tuple:
    """The next values of every RNG a training run uses (gauss draws use the cached second normal)."""
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), float(np.random.randn()),
            torch.rand(3).tolist())  # fmt: skip


def scramble_rngs() -> None:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def advance_rngs() -> None:
    """Seed, then leave every RNG mid-stream with a cached gaussian (odd numbers of normal draws)."""
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    random.gauss(0, 1)
    np.random.randn(3)
    torch.rand(10)


# --- 1. a crafted checkpoint is refused and runs nothing ----------------------------------------------------
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_the_payloads_do_run_code_when_unpickled(tmp_path, payload):
    """The refusal tests below mean something: plain unpickling of these payloads creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "ran"
    path = crafted_checkpoint(tmp_path / "model_1.pt", payload, marker)
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"{path}: refused: loading it needs ")
        assert ("posix.system," if payload is RunsACommand else "exec,") in message
        assert "\n" not in message and "activepose train" in message
        assert not marker.exists()


def test_corrupt_checkpoint_is_still_unreadable_not_refused(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"last.pt: not a readable checkpoint \(\w") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "refused" not in str(err.value)


def test_the_numpy_allowlist_is_narrow_and_scoped(tmp_path):
    """Only the uint32 array of an RNG state is allowed, and only inside load_checkpoint."""
    floats = tmp_path / "floats.pt"
    torch.save({"format": "activepose", "x": np.zeros(3)}, floats)  # float64: not an RNG state
    with pytest.raises(CheckpointError, match=r"floats.pt: refused: loading it needs .*Float64DType"):
        load_checkpoint(floats)
    old = tmp_path / "old.pt"
    torch.save({"format": "activepose", "rng": {"numpy": np.random.get_state()}}, old)
    assert load_checkpoint(old)["rng"]["numpy"][1].dtype == np.uint32
    assert np.ndarray not in torch.serialization.get_safe_globals()  # nothing left behind
    with pytest.raises(pickle.UnpicklingError):
        torch.load(old, weights_only=True)  # outside load_checkpoint the numpy globals stay refused


@pytest.fixture(scope="module")
def crafted_project(tmp_path_factory):
    """A small project (12 synthetic images, 3 labelled, 2 test) whose model 1 is a crafted checkpoint."""
    root, gt = synthetic_project_data(tmp_path_factory.mktemp("data"), num_images=12, n_initial=3, n_test=2)
    folder = tmp_path_factory.mktemp("proj") / "proj"
    result = runner.invoke(app, ["init", str(folder), "--pool", str(gt), "--labels", str(root / "initial.json"),
                                 "--test", str(root / "test.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    marker = tmp_path_factory.mktemp("marker") / "ran"
    model = crafted_checkpoint(folder / "checkpoints" / "model_1.pt", RunsACommand, marker)
    with Project.open(folder) as p:
        p.add_model(model, 3)
    return folder, gt, model, marker


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_refuses_a_projects_crafted_model(tmp_path, crafted_project, command):
    folder, gt, model, marker = crafted_project
    out = tmp_path / "out.json"
    args = {"predict": ["predict", "--model", model, "--images", gt, "--out", out, "--device", "cpu"],
            "evaluate": ["evaluate", folder, "--device", "cpu"]}[command]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    text = result.output
    assert result.exit_code == 2, text
    assert text.count("error:") == 1 and "Traceback" not in text and "internal error" not in text, text
    message = " ".join(text[text.index("error:") :].split())
    assert f"{model}: refused: loading it needs posix.system" in message, text
    assert not marker.exists() and not out.exists()


def test_status_of_a_project_with_a_crafted_model_runs_nothing(crafted_project):
    folder, _, _, marker = crafted_project
    result = runner.invoke(app, ["status", str(folder)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert not marker.exists()


# --- 2. a checkpoint written the old way (numpy RNG state as np.random.get_state()) -------------------------
def test_old_checkpoint_with_numpy_rng_state_loads_and_restores_exactly(tmp_path):
    advance_rngs()
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path / "last.pt"
    torch.save({"format": "activepose", "version": 1, "rng": old}, path)  # as the code before wrote it
    assert {"numpy.ndarray", "numpy.dtype"} <= set(no_unsafe_globals(path))  # really the old form
    expected = draws()
    scramble_rngs()
    _set_rng_state(load_checkpoint(path)["rng"])
    name, key, pos, has_gauss, cached = np.random.get_state()
    assert (name, pos, has_gauss, cached) == (old["numpy"][0], *old["numpy"][2:]) and has_gauss == 1
    assert np.array_equal(key, old["numpy"][1])
    assert random.getstate() == old["python"] and torch.equal(torch.get_rng_state(), old["torch"])
    assert draws() == expected


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy's `_reconstruct` under numpy 1's module name, as a checkpoint saved with numpy 1 has it."""

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def test_old_checkpoint_written_with_numpy_1_loads(tmp_path):
    module = type(sys)("numpy1_pickle")
    module.Pickler = _Numpy1Pickler
    state = np.random.get_state()
    path = tmp_path / "numpy1.pt"
    torch.save({"format": "activepose", "rng": {"numpy": state}}, path, pickle_module=module)
    assert "numpy.core.multiarray._reconstruct" in no_unsafe_globals(path)
    key = load_checkpoint(path)["rng"]["numpy"][1]
    assert key.dtype == np.uint32 and np.array_equal(key, state[1])


# --- 3. a new checkpoint's RNG state is plain data and restores exactly -------------------------------------
def test_new_rng_state_is_plain_and_round_trips_exactly(tmp_path):
    advance_rngs()
    saved = _rng_state()
    numpy_state = saved["numpy"]
    assert isinstance(numpy_state, dict) and isinstance(numpy_state["key"], list)
    assert all(type(k) is int for k in numpy_state["key"]) and len(numpy_state["key"]) == 624
    assert numpy_state["has_gauss"] == 1  # an odd number of normal draws: the cached one must come back
    path = save_checkpoint(tmp_path / "last.pt", {"rng": saved})
    assert no_unsafe_globals(path) == []
    expected = draws()
    scramble_rngs()
    _set_rng_state(torch.load(path, weights_only=True)["rng"])  # a plain weights-only load, no allowlist
    assert draws() == expected


def test_saving_anything_but_plain_data_is_refused(tmp_path):
    """save_checkpoint refuses what load_checkpoint would: no checkpoint that cannot be opened is written."""
    with pytest.raises(TypeError, match=r"old.pt: checkpoint state holds .*numpy"):
        save_checkpoint(tmp_path / "old.pt", {"rng": {"numpy": np.random.get_state()}})
    assert not (tmp_path / "old.pt").exists()


# --- 4. a real (tiny) training run's last.pt and best.pt load under weights_only=True -----------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return load_coco(make_synthetic_coco(out, "lsp14", SyntheticConfig(num_images=12, image_size=(64, 64),
                                                                       max_people=2), seed=3))  # fmt: skip


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(input_size=64, batch_size=4, num_workers=0, max_epochs=2, patience=10,
                                 device="cpu", pretrained=False, seed=1, width=0.25, head_channels=32), **kw})  # fmt: skip


@pytest.mark.parametrize("schedule", ["step", "onecycle"])
def test_training_checkpoints_load_with_weights_only(tiny_data, tmp_path, schedule):
    result = train(_cfg(lr_schedule=schedule, max_minutes=0.0), tiny_data, tmp_path)  # stops after epoch 1
    assert result.stopped == "time_budget"
    for name in ("last.pt", "best.pt"):
        path = tmp_path / name
        assert no_unsafe_globals(path) == [], name
        state = torch.load(path, weights_only=True)  # no allowlist at all
        again = load_checkpoint(path)
        assert state.keys() == again.keys() and state["train"] == again["train"]
        for k, v in state["model_state"].items():
            assert torch.equal(v, again["model_state"][k]), k
        assert state["rng"]["numpy"]["bit_generator"] == "MT19937"
        assert state["train_config"]["lr_schedule"] == schedule and state["train"]["epoch"] == 1
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["optimizer"]["state"] and last["scheduler"]["last_epoch"] >= 1
    if schedule == "onecycle":  # OneCycle's fields, stored as a dict: 2 epochs x 2 batches of 4 (11 images)
        assert last["scheduler"]["lr_lambdas"][0]["total"] == 2 * 2
    loaded = load_model(tmp_path / "best.pt")
    assert loaded.epoch == 1 and loaded.train_config == _cfg(lr_schedule=schedule, max_minutes=0.0)


def test_resume_from_an_old_last_pt_equals_an_uninterrupted_run(tiny_data, tmp_path):
    """A last.pt written before this change (numpy RNG state as np.random.get_state()) resumes exactly."""
    full = train(_cfg(), tiny_data, tmp_path / "full")
    assert full.epochs_run == 2
    part = train(_cfg(max_minutes=0.0), tiny_data, tmp_path / "split")
    assert part.stopped == "time_budget" and part.epochs_run == 1
    last = tmp_path / "split" / "last.pt"
    state = load_checkpoint(last)
    plain = state["rng"]["numpy"]
    state["rng"]["numpy"] = (plain["bit_generator"], np.array(plain["key"], dtype=np.uint32), plain["pos"],
                             plain["has_gauss"], plain["cached_gaussian"])  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    last.write_bytes(buffer.getvalue())
    assert "numpy.ndarray" in no_unsafe_globals(last)
    done = train(_cfg(), tiny_data, tmp_path / "split")
    assert done.epochs_run == 2 and [h["epoch"] for h in done.history] == [1, 2]
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model_state"] for run in ("full", "split"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"weights differ after resuming an old last.pt: {k}")
    assert done.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"])
    assert no_unsafe_globals(last) == []  # the resumed run rewrote it in the new, plain form
