"""Training: checkpoints, resume after interruption (in-process and after SIGKILL), sessions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from activepose.checkpoint import CheckpointError, load_checkpoint, load_model
from activepose.coco import load_coco
from activepose.synthetic import SyntheticConfig, make_synthetic_coco
from activepose.train import TrainConfig, split_ids, suggest_lr, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    path = make_synthetic_coco(
        out, "lsp14", SyntheticConfig(num_images=24, image_size=(64, 64), max_people=2), seed=3
    )
    return load_coco(path)


def _cfg(**kw):
    base = dict(
        input_size=64,
        batch_size=4,
        num_workers=0,
        max_epochs=2,
        patience=10,
        device="cpu",
        pretrained=False,
        seed=1,
        width=0.25,
        head_channels=32,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / name)["model_state"]


def test_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    full = train(_cfg(), tiny_data, tmp_path / "full")
    assert full.epochs_run == 2 and full.stopped == "max_epochs"

    part = train(_cfg(max_minutes=0.0), tiny_data, tmp_path / "split")  # stops after epoch 1, resumable
    assert part.stopped == "time_budget" and part.epochs_run == 1
    done = train(_cfg(), tiny_data, tmp_path / "split")
    assert done.epochs_run == 2
    assert [h["epoch"] for h in done.history] == [1, 2]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"weights differ after resume: {k}")
    assert done.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"])


def test_time_budget_can_end_the_session(tiny_data, tmp_path):
    """Projects and the loop: --max-minutes ends the session, so grown data starts the next one cleanly."""
    cut = train(_cfg(max_minutes=0.0, budget_ends_session=True), tiny_data, tmp_path)
    assert cut.stopped == "time_budget" and cut.epochs_run == 1
    again = train(_cfg(max_minutes=0.0, budget_ends_session=True), tiny_data, tmp_path)
    assert again.stopped == "already_complete" and again.epochs_run == 1
    grown = tiny_data.subset(tiny_data.image_ids[:20])
    nxt = train(_cfg(max_minutes=0.0, budget_ends_session=True), grown, tmp_path)
    assert nxt.session == 2 and nxt.stopped == "time_budget"


def test_complete_session_is_not_retrained_and_new_data_starts_a_session(tiny_data, tmp_path):
    first = train(_cfg(max_epochs=1), tiny_data, tmp_path)
    again = train(_cfg(max_epochs=1), tiny_data, tmp_path)
    assert again.stopped == "already_complete" and again.session == 1
    grown = tiny_data.subset(tiny_data.image_ids[:20])
    nxt = train(_cfg(max_epochs=1), grown, tmp_path)
    assert nxt.session == 2 and nxt.epochs_run == 1
    assert [h["session"] for h in nxt.history] == [1, 2]
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(state["train"]["train_ids"]) | set(state["train"]["val_ids"]) == set(grown.image_ids)
    assert first.best_val_loss > 0


def test_best_checkpoint_loads_as_model(tiny_data, tmp_path):
    train(_cfg(max_epochs=1), tiny_data, tmp_path)
    model, skeleton, state = load_model(tmp_path / "best.pt")
    assert skeleton.keypoints == tiny_data.skeleton.keypoints
    with torch.inference_mode():
        heat, paf = model(torch.zeros(1, 3, 64, 64))[-1]
    assert heat.shape == (1, tiny_data.skeleton.num_keypoints + 1, 8, 8) and paf.shape == (
        1,
        2 * tiny_data.skeleton.num_limbs,
        8,
        8,
    )
    assert state["train"]["epoch"] == 1


def test_corrupt_checkpoint_is_named(tmp_path):
    p = tmp_path / "last.pt"
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt: not a readable checkpoint"):
        load_checkpoint(p)


def test_split_is_fresh_per_session_and_covers_ids():
    ids = list(range(100))
    tr1, va1 = split_ids(ids, 0.1, seed=1, max_val=500)
    tr2, va2 = split_ids(ids, 0.1, seed=2, max_val=500)
    assert len(va1) == 10 and sorted(tr1 + va1) == ids
    assert va1 != va2


def test_suggest_lr_finds_steepest_descent():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    losses = 1.0 / (1.0 + np.exp(3 * (x + 3)))  # steepest fall at lr = 1e-3, then divergence
    losses[x > -1] += (x[x > -1] + 1) * 5
    steep, _ = suggest_lr(lrs.tolist(), losses.tolist())
    assert steep == pytest.approx(1e-3, rel=0.3)


def test_sigkill_mid_epoch_then_same_command_resumes(tiny_data, tmp_path):
    """A run killed with SIGKILL mid-epoch resumes with the same command and loses no completed epoch."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "activepose.cli", "train", "--data", str(tiny_data.path), "--out", str(run),
        "--input-size", "64", "--epochs", "6", "--workers", "0", "--device", "cpu", "--no-pretrained", "--width", "0.25", "--head-channels", "32",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    hist = run / "history.json"
    try:
        while time.monotonic() < deadline and not (hist.exists() and len(json.loads(hist.read_text())) >= 1):
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = load_checkpoint(run / "last.pt")["train"]["epoch"]
    assert 1 <= done_before < 6
    subprocess.run(
        cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
    )
    history = json.loads(hist.read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]  # none lost, none repeated
    model, _, state = load_model(run / "last.pt")
    assert state["train"]["complete"] and all(torch.isfinite(p).all() for p in model.parameters())


def test_training_reduces_loss_on_a_fixed_batch(tiny_data):
    """The model, targets and loss fit together: a few Adam steps on one batch lower the loss clearly."""
    from activepose.data import PoseDataset
    from activepose.train import pose_loss

    from .conftest import tiny_model

    ds = PoseDataset(tiny_data, input_size=64)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    model = tiny_model(tiny_data.skeleton)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, _ = pose_loss(model(batch["image"]), batch["heatmaps"], batch["pafs"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_short_lspet_training_beats_untrained_model(tmp_path):
    """Five CPU minutes on 400 LSPET images give a model clearly better than its untrained start (slow)."""
    from activepose.checkpoint import load_model
    from activepose.decode import Decoder
    from activepose.evaluate import EvalConfig, evaluate_model

    from .conftest import shared_file

    pool = load_coco(shared_file("lspet", "pool.json"))
    test = load_coco(shared_file("lspet", "test.json"))
    train_set = pool.subset(pool.image_ids[:400])
    test_set = test.subset(test.image_ids[:200])
    cfg = TrainConfig(backbone="mobilenet_v2", head_channels=64, input_size=128, batch_size=8, lr=5e-4,
                      max_epochs=100, max_minutes=5, num_workers=2, device="cpu")  # fmt: skip
    train(TrainConfig(**{**cfg.__dict__, "max_epochs": 0}), train_set, tmp_path / "untrained")
    train(cfg, train_set, tmp_path / "trained")
    ecfg = EvalConfig(input_size=128, ttas=("clean",), device="cpu")
    scores = {}
    for name in ("untrained", "trained"):
        model, sk, _ = load_model(tmp_path / name / "best.pt")
        scores[name] = evaluate_model(model, test_set, Decoder(sk), ecfg)["clean"]
    assert scores["trained"]["count_acc"] > scores["untrained"]["count_acc"] + 0.3
    assert scores["trained"]["PCK"] > scores["untrained"]["PCK"] + 0.1
