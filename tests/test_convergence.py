"""Sessions trained to convergence: the plateau rule, the best checkpoint, the step cap, never a worse model than
the last one without saying so, where a new session starts, and resuming a converging session after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from activepose.config import SyntheticConfig, TrainConfig
from activepose.errors import ConfigError
from activepose.pose.checkpoint import load_checkpoint
from activepose.pose.coco import load_coco, save_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.pose.train import Trainer, read_sessions, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    path = make_synthetic_coco(
        out, "lsp14", SyntheticConfig(num_images=30, image_size=(64, 64), max_people=2), seed=5
    )
    return load_coco(path)


def _cfg(**kw) -> TrainConfig:
    base = dict(input_size=64, batch_size=4, num_workers=0, max_epochs=20, patience=100, device="cpu",
                pretrained=False, seed=2, width=0.25, head_channels=16, lr_schedule="plateau", lr=1e-3,
                lr_gamma=0.5, lr_patience=2, lr_drops=1, warmup_steps=0, steps_per_epoch=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _scripted(monkeypatch, scores):
    """Make validation return `scores` (as the loss) in turn; return the list of calls made."""
    calls = []

    def validate(self, model, dataset):
        calls.append(len(calls))
        return scores[min(len(calls) - 1, len(scores) - 1)], None

    monkeypatch.setattr(Trainer, "_validate", validate)
    return calls


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_plateau_rule_drops_the_rate_then_stops_and_keeps_the_best(data, tmp_path, monkeypatch):
    # best at epoch 2; epochs 3-4 no better: the rate halves; epochs 5-6 no better: converged
    _scripted(monkeypatch, [0.5, 0.3, 0.35, 0.4, 0.31, 0.32, 0.1])
    result = train(_cfg(), data, tmp_path)
    assert (result.stopped, result.epochs_run, result.steps) == ("converged", 6, 12)
    lrs = [h["lr"] for h in result.history]
    assert lrs[:4] == [pytest.approx(1e-3)] * 4 and lrs[4:] == [pytest.approx(5e-4)] * 2
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["train"]["epoch"] == 2 and last["train"]["epoch"] == 6
    assert not _same(best["model_state"], last["model_state"])
    [session] = read_sessions(tmp_path)
    assert (session["stopped"], session["steps"], session["epochs"], session["kept"]) == (
        "converged",
        12,
        6,
        "new",
    )
    assert session["best_val"] == pytest.approx(0.3)


def test_no_stopping_before_the_warm_up_ends(data, tmp_path, monkeypatch):
    _scripted(monkeypatch, [0.5] * 20)  # flat from the start (e.g. a cold start that finds nobody yet)
    result = train(_cfg(warmup_steps=8, lr_drops=0), data, tmp_path)
    assert result.stopped == "converged" and result.steps == 8 + 2 * 2  # warm-up, then 2 flat epochs


def test_pck_ties_go_to_the_lower_loss(data, tmp_path):
    t = Trainer(_cfg(val_metric="pck"), data, tmp_path)
    assert t._score(0.010, 0.0) < t._score(0.011, 0.0)  # both find nobody: the lower loss is better
    assert t._score(0.5, 1 / 1400) < t._score(0.001, 0.0)  # one keypoint of 100 images outweighs any loss
    assert t._score(0.01, None) == t._score(0.01, 0.0)


def test_the_step_cap_grows_with_the_labels_within_its_bounds(data, tmp_path):
    t = Trainer(_cfg(steps_per_image=1.0, steps_per_epoch=4, min_epochs=2, max_epochs=30), data, tmp_path)
    caps = [t.session_plan(n)["max_epochs"] for n in (4, 40, 100, 1000)]
    assert caps == [2, 10, 25, 30]  # ceil(n / 4) between 2 and 30
    assert TrainConfig(**{**_cfg().to_dict(), "augment": None}).steps_per_image is None
    assert Trainer(_cfg(), data, tmp_path).session_plan(1000)["max_epochs"] == 20  # no cap: max_epochs


def test_a_capped_session_trains_step_for_step_like_that_many_labels(data, tmp_path):
    """The compute control's fairness: a small set given the cap of a larger one gets the larger one's schedule."""
    cfg = _cfg(lr_schedule="onecycle", steps_per_epoch=None, steps_per_image=1.0, max_epochs=50)
    small, large = data.subset(data.image_ids[:10]), data
    assert Trainer(cfg, small, tmp_path).session_plan(len(large)) == Trainer(
        cfg, large, tmp_path
    ).session_plan(len(large))
    big = train(cfg, large, tmp_path / "large")
    capped = train(cfg, small, tmp_path / "capped", cap_images=len(large))
    alone = train(cfg, small, tmp_path / "alone")
    assert (capped.steps, capped.epochs_run) == (big.steps, big.epochs_run)
    assert alone.steps < capped.steps
    assert [h["images"] for h in capped.history] == [h["images"] for h in big.history]


@pytest.mark.parametrize("restart", ["warm", "initial"])
def test_a_session_that_never_beats_the_last_model_keeps_it_and_says_so(data, tmp_path, monkeypatch, restart):
    cfg = _cfg(max_epochs=2, restart=restart, lr_schedule="onecycle", keep_min_val=1)
    train(cfg, data.subset(data.image_ids[:20]), tmp_path)
    before = load_checkpoint(tmp_path / "best.pt")["model_state"]
    # the last model scores 0.1 on the new split; every epoch of the new session is worse (a collapse)
    calls = _scripted(monkeypatch, [0.1, 0.9, 0.8])
    result = train(cfg, data, tmp_path)
    assert len(calls) == 3  # the last model, then each epoch
    assert (result.session, result.kept, result.start_val) == (2, "previous", pytest.approx(0.1))
    assert _same(load_checkpoint(tmp_path / "best.pt")["model_state"], before)
    assert not _same(load_checkpoint(tmp_path / "last.pt")["model_state"], before)
    assert read_sessions(tmp_path)[-1]["kept"] == "previous"
    # a session that does beat it replaces it
    _scripted(monkeypatch, [0.1, 0.05])
    better = train(cfg, data.subset(data.image_ids[:25]), tmp_path, new_session=True)
    assert better.kept == "new" and not _same(load_checkpoint(tmp_path / "best.pt")["model_state"], before)


def test_a_validation_split_too_small_to_judge_hands_on_the_sessions_best(data, tmp_path, monkeypatch):
    """Fewer held-out images than keep_min_val: the last model is scored (recorded) but not kept, even though
    every epoch scores worse; with the minimum met, the same scores keep it."""
    for minimum, kept in ((10_000, "new"), (1, "previous")):
        cfg = _cfg(max_epochs=2, lr_schedule="onecycle", keep_min_val=minimum)
        run = tmp_path / str(minimum)
        train(cfg, data.subset(data.image_ids[:20]), run)
        before = load_checkpoint(run / "best.pt")["model_state"]
        _scripted(monkeypatch, [0.1, 0.9, 0.8])
        result = train(cfg, data, run)
        assert (result.kept, result.start_val) == (kept, pytest.approx(0.1))
        assert read_sessions(run)[-1]["kept"] == kept
        assert _same(load_checkpoint(run / "best.pt")["model_state"], before) == (kept == "previous")
        monkeypatch.undo()
        if kept == "new":  # the session's own best epoch (0.8), though the last model scored 0.1
            assert result.best_val_loss == pytest.approx(0.8)


def test_restart_initial_starts_each_session_from_the_first_weights(data, tmp_path, monkeypatch):
    cfg = _cfg(max_epochs=1, restart="initial", lr_schedule="onecycle")
    train(cfg, data.subset(data.image_ids[:20]), tmp_path)
    initial = load_checkpoint(tmp_path / "initial.pt")["model_state"]
    trained = load_checkpoint(tmp_path / "last.pt")["model_state"]
    assert not _same(initial, trained)
    monkeypatch.setattr(
        Trainer, "_train_epoch", lambda self, *a: (0.0, 0, 0)
    )  # no step: the start weights stay
    train(cfg, data, tmp_path)
    assert _same(load_checkpoint(tmp_path / "last.pt")["model_state"], initial)
    monkeypatch.undo()
    warm = tmp_path / "warm"
    train(_cfg(max_epochs=1, lr_schedule="onecycle"), data.subset(data.image_ids[:20]), warm)
    (warm / "initial.pt").unlink()
    with pytest.raises(ConfigError, match="initial.pt: missing"):
        train(cfg, data, warm)


def test_validation_pck_is_measured_on_decoded_people(data, tmp_path):
    result = train(_cfg(val_metric="pck", max_epochs=1), data, tmp_path)
    pck = result.history[-1]["val_pck"]
    assert pck is not None and 0.0 <= pck <= 1.0
    assert result.best_val_loss == pytest.approx(1 - pck + 1e-3 * result.history[-1]["val_loss"])


_TRAIN = "import sys; from activepose.cli import app; sys.argv[0] = 'activepose'; app()"


def _cli(args, kill=None):
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEPOSE_KILL_AT"}
    env.update(OMP_NUM_THREADS="1", **({"ACTIVEPOSE_KILL_AT": kill} if kill else {}))
    return subprocess.run([sys.executable, "-c", _TRAIN, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_a_converging_session_killed_mid_epoch_resumes_to_the_uninterrupted_result(data, tmp_path):
    """SIGKILL in the second session (after the last model was scored on the new split): the resumed run ends
    with the same history, the same stop and the same weights as one never interrupted."""
    small = data.path.parent / "first20.json"  # beside the images its file names are relative to
    save_coco(data.subset(data.image_ids[:20]), small)
    opts = ["--input-size", "64", "--width", "0.25", "--head-channels", "16", "--workers", "0", "--device", "cpu",
            "--no-pretrained", "--batch-size", "4", "--steps-per-epoch", "2", "--lr-schedule", "plateau",
            "--val-metric", "pck", "--lr-patience", "1", "--lr-drops", "1", "--epochs", "6", "--seed", "3"]  # fmt: skip
    runs = {}
    for name, kill in (("straight", None), ("killed", "train:3")):  # session 2's 3rd batch: mid epoch 2
        out = tmp_path / name
        first = _cli(["train", "--data", small, "--out", out, *opts])
        assert first.returncode == 0, first.stderr
        proc = _cli(["train", "--data", data.path, "--out", out, *opts], kill=kill)
        if kill:
            assert proc.returncode == -signal.SIGKILL, proc.stderr
            state = load_checkpoint(out / "last.pt")["train"]
            assert state["session"] == 2 and not state["complete"] and "start_val" in state
            proc = _cli(["train", "--data", data.path, "--out", out, *opts])
        assert proc.returncode == 0, proc.stderr
        runs[name] = out
    histories = [json.loads((runs[n] / "history.json").read_text()) for n in ("straight", "killed")]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in hist] for hist in histories]
    assert strip[0] == strip[1]
    a, b = (read_sessions(runs[n]) for n in ("straight", "killed"))
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in a] == [
        {k: v for k, v in s.items() if k != "seconds"} for s in b
    ]
    assert a[-1]["session"] == 2 and a[-1]["start_val"] is not None
    for name in ("best.pt", "last.pt"):
        assert _same(load_checkpoint(runs["straight"] / name)["model_state"],
                     load_checkpoint(runs["killed"] / name)["model_state"])  # fmt: skip


def test_a_small_labelled_set_gets_the_same_batches_per_epoch(data, tmp_path):
    """The youtube_pose collapse: with 100-200 labels an epoch used to be one pass (5-11 batches), so a session of
    5 epochs trained 25-55 steps and its model found nobody. An epoch is `steps_per_epoch` batches, however few
    the images (the set is cycled), so a small set trains as many steps as a large one."""
    cfg = _cfg(lr_schedule="onecycle", steps_per_epoch=8, max_epochs=2)
    few = train(
        cfg, data.subset(data.image_ids[:14]), tmp_path / "few"
    )  # 12 training images: 3 batches a pass
    many = train(cfg, data, tmp_path / "many")
    assert few.steps == many.steps == 16
    assert [h["images"] for h in few.history] == [32, 32]
