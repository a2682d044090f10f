"""Pool scoring on Ray (`--engine ray`): a local Ray started on 127.0.0.1, the same caches and selection as the
local engine, and a worker killed mid-scoring either retried or a clear error with nothing half-written cached.

Needs the `ray` extra (`make venv` installs it); skips without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.config import UncertaintyConfig
from activepose.errors import EnvironmentProblem
from activepose.pose.cache import VectorCache, hash_files
from activepose.pose.coco import load_coco
from activepose.project.store import Project
from activepose.sampling.engine import RayEngine, create_engine
from activepose.sampling.uncertainty import masked_peak_confidences, scan_pool

from .conftest import synthetic_project_data

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'activepose[ray]')")

TINY = ["--input-size", "64", "--width", "0.25", "--head-channels", "32", "--workers", "0", "--no-pretrained",
        "--device", "cpu"]  # fmt: skip


def _run(*args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project of 24 synthetic images, 3 labelled, one tiny trained model."""
    root, gt = synthetic_project_data(tmp_path_factory.mktemp("data"), num_images=24, n_initial=3, n_test=2)
    proj = root / "proj"
    assert _run("init", proj, "--pool", gt, "--labels", root / "initial.json")[0] == 0
    code, out = _run("train", proj, "--epochs", 1, *TINY)
    assert code == 0, out
    return root, gt, proj


def _cache_rows(folder: Path) -> dict[str, np.ndarray]:
    """{cache key/hash: vector} of every VectorCache under `folder`."""
    import sqlite3

    out = {}
    for index in folder.rglob("index.sqlite"):
        with sqlite3.connect(index) as db:
            key, dim = (dict(db.execute("SELECT name, value FROM meta"))[k] for k in ("key", "dim"))
            hashes = [h for (h,) in db.execute("SELECT hash FROM rows ORDER BY row")]
        dtype = np.float16 if (index.parent / "vectors.f16").exists() else np.float32
        with VectorCache(folder / index.parent.relative_to(folder).parent, key, int(dim), dtype) as vc:
            found, vecs = vc.lookup(hashes)
        assert found.all()
        out.update({f"{index.parent.name}/{h}": v for h, v in zip(hashes, vecs, strict=True)})
    return out


def test_select_with_engine_ray_scores_exactly_as_the_local_engine(trained, tmp_path):
    root, _, proj = trained
    local, remote = tmp_path / "local", tmp_path / "remote"
    shutil.copytree(proj, local)
    shutil.copytree(proj, remote)
    for p in (local, remote):  # the pool's images, referenced relative to the project
        (p.parent / "images").exists() or (p.parent / "images").symlink_to(root / "images")
    was_running = ray.is_initialized()
    code, out_local = _run("select", local, "--budget", 4, "--strategy", "hybrid", "--device", "cpu",
                           "--out", tmp_path / "local.json")  # fmt: skip
    assert code == 0, out_local
    code, out_remote = _run("select", remote, "--budget", 4, "--strategy", "hybrid", "--device", "cpu",
                            "--engine", "ray", "--out", tmp_path / "remote.json")  # fmt: skip
    assert code == 0, out_remote
    assert ray.is_initialized() == was_running  # a local Ray it started is shut down
    import json

    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "remote"))
    assert a["ids"] == b["ids"] and a["scores"] == b["scores"]
    rows_a, rows_b = _cache_rows(local / "caches"), _cache_rows(remote / "caches")
    assert rows_a.keys() == rows_b.keys() and len(rows_a) >= 2 * 19  # peaks and embeddings of the pool
    for k in rows_a:
        assert np.array_equal(rows_a[k], rows_b[k]), k
    assert a["stats"]["uncertain"] == b["stats"]["uncertain"]


def test_engine_options_are_checked():
    assert create_engine("local").remote is False and create_engine("ray", "auto").address == "auto"
    with pytest.raises(Exception, match="unknown --engine 'spark'"):
        create_engine("spark")
    code, out = _run("select", "--pool", "x.json", "--budget", 1, "--ray-address", "auto")
    assert code == 2 and "--ray-address is for --engine ray" in " ".join(out.split())


def _peaks(net, x, valid):
    return masked_peak_confidences(net(x)[-1][0].float(), valid, 0.5)


class _Dying:
    """A `stat` that SIGKILLs its worker process: once (the first call anywhere), or on every call."""

    def __init__(self, marker: Path, always: bool) -> None:
        self.marker, self.always = str(marker), always

    def __call__(self, net, x, valid):
        if self.always or not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return _peaks(net, x, valid)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the tests below (an engine does not start or stop a Ray it finds running)."""
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, configure_logging=False)  # fmt: skip
    yield
    ray.shutdown()


@pytest.mark.parametrize("always", [False, True], ids=["killed-once-retried", "killed-always-fails"])
def test_a_worker_killed_mid_scoring_is_retried_or_fails_clearly_and_caches_nothing_half_done(
    trained, tmp_path, always, local_ray
):
    from ray import cloudpickle

    from activepose.pose.checkpoint import load_model

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    _, gt, proj = trained
    with Project.open(proj) as p:
        model = load_model(p.checkpoint_path(p.latest_model())).net.eval()
    coco = load_coco(gt)
    ids = coco.image_ids
    cfg = UncertaintyConfig(input_size=64, batch_size=4)
    k = coco.skeleton.num_keypoints
    want, _ = scan_pool(model, coco, ids, cfg, _peaks, k, lambda key: "peaks", num_workers=0)
    cache = tmp_path / "cache"
    stat = _Dying(tmp_path / "killed", always)
    engine = RayEngine(retries=1)  # one restart: enough to show the retry, and a quick failure
    if always:
        with pytest.raises(EnvironmentProblem, match="--engine ray: scoring failed"):
            scan_pool(model, coco, ids, cfg, stat, k, lambda key: "peaks", cache=cache, engine=engine)
    else:
        got, _ = scan_pool(model, coco, ids, cfg, stat, k, lambda key: "peaks", cache=cache, engine=engine)
        assert np.array_equal(got, want)  # the killed batch was retried by a restarted worker
    engine.close()
    assert (tmp_path / "killed").read_text() == "killed"  # a worker did die
    with VectorCache(cache, "peaks", k) as vc:
        found, vecs = vc.lookup(hash_files([coco.image_path(i) for i in ids]))
    # every row after the retry; nothing after a failure (no batch came back whole)
    assert found.all() if not always else not found.any()
    assert np.array_equal(vecs[found], want[found])  # whatever was cached is whole and right
    assert ray.is_initialized() and not engine.started  # it used the running Ray and left it running


def test_a_worker_error_names_the_file(tmp_path, local_ray):
    from activepose.sampling.features import create_extractor, extract_features

    good = write_png(tmp_path / "good.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(EnvironmentProblem, match="broken.png"):
        extract_features(create_extractor("mobilenet_v2"), [good, bad], batch_size=1, engine=RayEngine())


def write_png(path: Path) -> Path:
    import cv2

    cv2.imwrite(str(path), np.full((40, 30, 3), 120, np.uint8))
    return path
