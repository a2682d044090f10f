"""Training: checkpoints, resume after interruption (in-process and after SIGKILL), sessions."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from activepose.config import SyntheticConfig, TrainConfig
from activepose.device import resolve_device
from activepose.errors import ConfigError, EnvironmentProblem
from activepose.fileio import file_sha1
from activepose.pose.checkpoint import CheckpointError, load_checkpoint, load_model
from activepose.pose.coco import load_coco
from activepose.pose.synthetic import make_synthetic_coco
from activepose.pose.train import split_ids, suggest_lr, train


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
    loaded = load_model(tmp_path / "best.pt")
    assert loaded.skeleton.keypoints == tiny_data.skeleton.keypoints
    assert loaded.input_size == 64 and loaded.train_config == _cfg(max_epochs=1)
    assert loaded.path == tmp_path / "best.pt" and loaded.sha1 == file_sha1(tmp_path / "best.pt")
    assert not loaded.net.training and loaded.device.type == "cpu"
    with torch.inference_mode():
        heat, paf = loaded.net(torch.zeros(1, 3, 64, 64))[-1]
    assert heat.shape == (1, tiny_data.skeleton.num_keypoints + 1, 8, 8) and paf.shape == (
        1,
        2 * tiny_data.skeleton.num_limbs,
        8,
        8,
    )
    assert loaded.epoch == 1 and loaded.session == 1 and loaded.complete
    assert loaded.train_scale == 1.0  # 64-px images at input 64


def test_training_records_its_pixel_scale_and_auto_scale_uses_it(tiny_data, tmp_path):
    from activepose.config import EvalOptions
    from activepose.pose.evaluate import SCALE_KEY
    from activepose.workflow.models import input_scale
    from activepose.workflow.rounds import evaluate_model_on

    train(_cfg(max_epochs=1, input_size=32), tiny_data, tmp_path)
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["train_scale"] == load_checkpoint(tmp_path / "last.pt")["train_scale"] == 0.5  # 32 / 64
    loaded = load_model(tmp_path / "best.pt")
    assert loaded.train_scale == 0.5 and loaded.input_size == 32
    plan, note = input_scale(loaded, None, None)  # default: auto, as the model records its scale
    assert (plan.policy, plan.factor, note) == ("auto", 0.5, None)
    assert input_scale(loaded, 48, None)[0].factor is None  # an explicit --input-size alone: fixed
    opts = EvalOptions(ttas=("clean",), max_images=3, device="cpu", scale="auto")
    report = evaluate_model_on(loaded, tiny_data.path, opts)
    assert list(report) == ["clean", SCALE_KEY]
    assert report[SCALE_KEY] == {"policy": "auto", "factor": 0.5, "capped": 0,
                                 "input_sizes": {"min": 32, "median": 32.0, "max": 32}}  # fmt: skip


def test_corrupt_checkpoint_is_named(tmp_path):
    p = tmp_path / "last.pt"
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pt: not a readable checkpoint"):
        load_checkpoint(p)


def test_validation_split_is_stable_as_labels_grow_and_holds_out_whole_videos():
    ids = list(range(1, 1001))
    train1, val1 = split_ids(ids, 0.1, seed=1, max_val=500)
    assert sorted(train1 + val1) == ids and 60 <= len(val1) <= 140  # ~10 % of the images, by hash
    assert split_ids(ids, 0.1, seed=1, max_val=500) == (train1, val1)  # deterministic
    assert split_ids(ids, 0.1, seed=2, max_val=500)[1] != val1  # the seed decides
    # the set grows: every image held out before is held out again (none moves from validation to training)
    train2, val2 = split_ids(ids + list(range(1001, 1301)), 0.1, seed=1, max_val=500)
    assert set(val1) <= set(val2) and not set(val2) & set(train1)
    # at most max_val images, the lowest hashes kept: a smaller cap gives a subset
    assert set(split_ids(ids, 0.1, seed=1, max_val=50)[1]) <= set(val1)
    assert len(split_ids(ids, 0.1, seed=1, max_val=50)[1]) == 50
    # footage: a video is held out whole, never split between training and validation
    videos = {i: f"v{i % 40}" for i in ids}
    train, val = split_ids(ids, 0.1, seed=3, max_val=500, groups=videos)
    held = {videos[i] for i in val}
    assert held and not held & {videos[i] for i in train} and len(val) == 25 * len(held)
    # one video only: held out by image; fewer than 5 images: no validation
    train, val = split_ids(ids[:50], 0.1, seed=3, max_val=500, groups={i: "v" for i in ids})
    assert 1 <= len(val) <= 10 and sorted(train + val) == ids[:50]
    assert split_ids(ids[:4], 0.1, seed=3, max_val=500) == (ids[:4], [])


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
    loaded = load_model(run / "last.pt")
    assert loaded.complete and all(torch.isfinite(p).all() for p in loaded.net.parameters())


def test_training_reduces_loss_on_a_fixed_batch(tiny_data):
    """The model, targets and loss fit together: a few Adam steps on one batch lower the loss clearly."""
    from activepose.pose.data import PoseDataset
    from activepose.pose.train import pose_loss

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
    from activepose.config import EvalConfig
    from activepose.pose.checkpoint import load_model
    from activepose.pose.decode import Decoder
    from activepose.pose.evaluate import evaluate_model

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
        loaded = load_model(tmp_path / name / "best.pt")
        scores[name] = evaluate_model(loaded.net, test_set, Decoder(loaded.skeleton), ecfg)["clean"]
    assert scores["trained"]["count_acc"] > scores["untrained"]["count_acc"] + 0.3
    assert scores["trained"]["PCK"] > scores["untrained"]["PCK"] + 0.1


# --- validation before any work ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(batch_size=0), r"--batch-size must be >= 1, got 0"),
        (dict(lr=0.0), r"--lr must be > 0, got 0.0"),
        (dict(lr=float("nan")), r"--lr must be > 0, got nan"),
        (dict(input_size=100), r"--input-size must be a positive multiple of 8, got 100"),
        (dict(input_size=0), r"--input-size must be a positive multiple of 8, got 0"),
        (dict(max_epochs=-1), r"--epochs must be >= 0, got -1"),
        (dict(patience=-1), r"--patience must be >= 0, got -1"),
        (dict(lr_step_epochs=0), r"--lr-step must be >= 1, got 0"),
        (dict(lr_gamma=0.0), r"--lr-gamma must be in \(0, 1\], got 0.0"),
        (dict(lr_gamma=1.5), r"--lr-gamma must be in \(0, 1\], got 1.5"),
        (dict(val_fraction=1.0), r"--val-fraction must be in \[0, 1\), got 1.0"),
        (dict(width=0.0), r"--width must be in \(0, 16\], got 0.0"),
        (dict(width=math.inf), r"--width must be in \(0, 16\], got inf"),  # issue 17: an OverflowError before
        (dict(width=math.nan), r"--width must be in \(0, 16\], got nan"),
        (dict(weight_decay=math.inf), r"--weight-decay must be a finite number >= 0, got inf"),
        (dict(head_channels=0), r"--head-channels must be >= 1, got 0"),
        (dict(max_minutes=-1.0), r"--max-minutes must be >= 0, got -1.0"),
        (dict(num_workers=-1), r"--workers must be >= 0, got -1"),
        (dict(stages=0), r"--stages must be >= 1, got 0"),
        (dict(steps_per_epoch=0), r"--steps-per-epoch must be >= 1, got 0"),
        (dict(device="gpu"), r"--device 'gpu' is not a device: use one of auto, cpu, cuda, cuda:N"),
        (
            dict(backbone="nope"),
            r"--backbone 'nope' is not a known backbone; choose from .*mobilenet_v2.*vgg_tiny",
        ),
        (dict(backbone="mobilenet_v2", width=0.5), r"--width applies only to vgg_tiny, not to mobilenet_v2"),
    ],
)
def test_train_config_errors_name_the_option(kw, message):
    with pytest.raises(ConfigError, match="^" + message + "$"):
        _cfg(**kw)


def test_train_config_lists_every_problem_on_one_line():
    with pytest.raises(ConfigError) as info:
        _cfg(batch_size=0, lr=-1.0, device="foo")
    text = str(info.value)
    assert "\n" not in text and text.count("; ") == 2
    assert text.startswith("--batch-size must be >= 1, got 0; --lr must be > 0, got -1.0; --device 'foo'")


def test_train_config_boundaries_are_valid_and_round_trip():
    cfg = _cfg(lr_gamma=1.0, val_fraction=0.0, max_minutes=0.0, max_epochs=0, patience=0, augment=None,
               device="CUDA:1")  # fmt: skip
    back = TrainConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.augment is None  # --no-augment survives the checkpoint


def test_device_without_a_gpu_is_an_environment_problem_before_any_work(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = "--device cuda: no CUDA GPU is available on this machine (torch reports none); use --device cpu or auto"
    with pytest.raises(EnvironmentProblem) as info:
        resolve_device("cuda")
    assert str(info.value) == expected
    with pytest.raises(EnvironmentProblem, match=r"^--device cuda:1: no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(EnvironmentProblem, match=r"^--device cuda: no CUDA GPU"):
        train(_cfg(device="cuda"), tiny_data, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(" CPU ")


def test_device_index_beyond_the_gpus_and_unknown_strings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        EnvironmentProblem, match=r"^--device cuda:3: this machine has 1 CUDA GPU\(s\), cuda:0 to cuda:0$"
    ):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    for bad in ("gpu", "foo", "cuda:x", "cuda0"):
        with pytest.raises(
            ConfigError, match=rf"^--device '{bad}' is not a device: use one of auto, cpu, cuda, cuda:N"
        ):
            resolve_device(bad)


def test_changed_architecture_on_an_existing_run_is_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(_cfg(max_epochs=1), tiny_data, run)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        train(_cfg(max_epochs=2, head_channels=16, input_size=128), tiny_data, run)
    assert str(info.value) == (
        f"{run}: this run was trained with --head-channels 32, --input-size 64; --head-channels 16, "
        "--input-size 128 asks for another architecture, which cannot change within a run: drop the option to "
        "continue the run as it was set up, or start a new run (another --out, or a new project)"
    )
    with pytest.raises(ConfigError, match=r"was trained with --backbone vgg_tiny, --width 0.25; --backbone mobilenet_v2, "
                       r"--width None asks for another architecture"):  # fmt: skip
        train(_cfg(backbone="mobilenet_v2", width=None), tiny_data, run)
    assert (run / "last.pt").read_bytes() == before  # nothing was trained or written
    again = train(_cfg(max_epochs=1, lr=5e-4, patience=3), tiny_data, run, new_session=True)
    assert again.session == 2  # other options may change


def test_architecture_defaults_compare_by_their_effective_value():
    from activepose.pose.train import architecture_changes

    stored = _cfg(width=None, stages=None).to_dict()
    assert architecture_changes(stored, _cfg(width=1.0, stages=3).to_dict()) == []  # vgg_tiny's defaults
    assert architecture_changes(stored, _cfg(width=0.5, stages=2).to_dict()) == [
        ("width", 1.0, 0.5),
        ("stages", 3, 2),
    ]


def test_run_config_reads_the_runs_own_options(tiny_data, tmp_path):
    from activepose.pose.train import run_config

    assert run_config(tmp_path / "empty") is None
    cfg = _cfg(max_epochs=1, head_channels=16)
    train(cfg, tiny_data, tmp_path / "run")
    assert run_config(tmp_path / "run") == cfg
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="last.pt: not a readable checkpoint"):
        run_config(tmp_path / "bad")


def test_loaded_model_without_a_training_config_uses_the_default_input_size(tmp_path):
    from activepose.pose.checkpoint import DEFAULT_INPUT_SIZE, save_checkpoint
    from activepose.pose.skeleton import PRESETS

    from .conftest import tiny_model

    net = tiny_model(PRESETS["lsp14"])
    save_checkpoint(tmp_path / "m.pt", {"model_config": net.config, "model_state": net.state_dict(),
                                        "skeleton": PRESETS["lsp14"].to_dict()})  # fmt: skip
    loaded = load_model(tmp_path / "m.pt", "cpu")
    assert loaded.input_size == DEFAULT_INPUT_SIZE == 256 and loaded.train_config is None
    assert loaded.session == 0 and not loaded.complete
    # No recorded training scale (an older checkpoint): the default and auto fall back to fixed, and say so.
    from activepose.workflow.models import input_scale

    assert loaded.train_scale is None
    assert input_scale(loaded, None, None) == (input_scale(loaded, None, "fixed")[0], None)
    plan, note = input_scale(loaded, None, "auto")
    assert plan.policy == "fixed" and plan.input_size == 256 and "falls back to fixed" in note
    save_checkpoint(tmp_path / "empty.pt", {"skeleton": PRESETS["lsp14"].to_dict()})
    with pytest.raises(CheckpointError, match=r"empty.pt: checkpoint does not hold a usable pose model"):
        load_model(tmp_path / "empty.pt")
