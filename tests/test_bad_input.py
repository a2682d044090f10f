"""Issue 8: every user mistake is one clear line and exit code 2, never a traceback, and the store is unchanged.

Each case drives the real CLI (in-process through typer's CliRunner; a subprocess only where the case needs
another process or other privileges) on a copy of one small synthetic project (12 images, 3 labelled, 2 test)
built once per module, with a tiny model trained once where a case needs one. For each refusal the test
asserts the exit code, a distinctive part of the message, that no traceback was printed, and that project.db
holds exactly what it held before (an SQL dump, or the file's bytes when it is not a database). Where the
issue was silent loss rather than a crash, the now-correct behaviour is asserted instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activepose.cli import app
from activepose.project.schema import DB_NAME
from activepose.project.store import Project

from .conftest import synthetic_project_data

SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()
TRAIN_TINY = ["--input-size", "64", "--width", "0.25", "--head-channels", "32", "--epochs", "1", "--workers", "0",
              "--no-pretrained", "--device", "cpu"]  # fmt: skip
# The fixture's model: 16x16 output cells (not 8x8) and a dozen epochs, so that it predicts people.
MODEL_OPTIONS = ["--input-size", "128", "--width", "0.25", "--head-channels", "32", "--epochs", "12", "--lr", "5e-3",
                 "--workers", "0", "--no-pretrained", "--device", "cpu"]  # fmt: skip
ROUND = [4, 5, 6]  # the images of the round a case opens (unlabelled pool images of the synthetic project)


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def flat(text: str) -> str:
    return " ".join(text.split())


def refused(code: int, out: str, *needles: str, exit_code: int = 2) -> str:
    """Assert a clean refusal: the exit code, one 'error:' message holding every needle, no traceback."""
    assert code == exit_code, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert out.count("error:") == 1, out
    message = flat(out[out.index("error:") :])
    for needle in needles:
        assert needle in message, out
    print(f"\n[observed] exit {code}: {message[:300]}")  # shown with -s: the table of the cases
    return message


def dump(folder: Path) -> str:
    """The SQL text of PROJECT/project.db, read from a copy (the project itself is never opened)."""
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal"):
            src = Path(f"{folder / DB_NAME}{suffix}")
            if src.exists():
                shutil.copyfile(src, Path(tmp) / f"{DB_NAME}{suffix}")
        conn = sqlite3.connect(Path(tmp) / DB_NAME)
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()


def copy_project(src: Path, tmp_path: Path, name: str = "proj") -> Path:
    """Copy a project folder to tmp_path/name: the same depth below pytest's base folder as the module's
    projects, so the stored image paths (relative to the project folder) still reach the data."""
    dest = tmp_path / name
    assert len(dest.parents) == len(src.parents)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


def open_round(folder: Path, ids=ROUND) -> int:
    with Project.open(folder) as p:
        return p.open_round("random", {}, [(i, None) for i in ids])


def coco_of(gt: Path, ids, out: Path) -> Path:
    """Write the ground truth's images `ids` with their labels (file names relative to `out`'s folder)."""
    raw = json.loads(gt.read_text())
    raw["images"] = [dict(im, file_name=os.path.relpath(gt.parent / im["file_name"], out.parent))
                     for im in raw["images"] if im["id"] in ids]  # fmt: skip
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in ids]
    out.write_text(json.dumps(raw))
    return out


def people_in(gt: Path, ids) -> int:
    return sum(a["image_id"] in ids for a in json.loads(gt.read_text())["annotations"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_project_data(tmp_path_factory.mktemp("data"), num_images=12, n_initial=3, n_test=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory, data) -> Path:
    """A project without a model: 12 images (1-3 labelled, 11-12 test)."""
    root, gt = data
    folder = tmp_path_factory.mktemp("base") / "proj"
    code, out = cli(
        "init", folder, "--pool", gt, "--labels", root / "initial.json", "--test", root / "test.json"
    )
    assert code == 0, out
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base) -> Path:
    """The same project with one tiny model (its run in checkpoints/run), trained long enough (about 5 s) to
    predict people on the pool: the pre-annotations of case 15 need some."""
    import torch

    folder = copy_project(base, tmp_path_factory.mktemp("trained"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums, so the same model, whatever the machine's core count
    try:
        code, out = cli("train", folder, *MODEL_OPTIONS)
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "recorded model 1" in out, out
    return folder


# --- 1. an annotation whose category_id is not in 'categories' --------------------------------------------------
@pytest.mark.parametrize("command", ["check", "init", "label"])
def test_unknown_category_id(tmp_path, data, base, command):
    root, gt = data
    bad = coco_of(gt, ROUND, tmp_path / "bad_category.json")
    raw = json.loads(bad.read_text())
    raw["annotations"][1]["category_id"] = 7
    ann = raw["annotations"][1]
    bad.write_text(json.dumps(raw))
    needles = ["bad_category.json", f"annotation id {ann['id']} (image id {ann['image_id']})",
               "category_id 7 is not in 'categories' (ids: 1)"]  # fmt: skip
    if command == "check":
        refused(*cli("check", bad), *needles)
    elif command == "init":
        refused(*cli("init", tmp_path / "new", "--pool", gt, "--labels", bad), *needles)
        assert not (tmp_path / "new").exists()
        assert [p.name for p in tmp_path.iterdir()] == ["bad_category.json"]  # no half-made project either
    else:
        proj = copy_project(base, tmp_path)
        open_round(proj)
        before = dump(proj)
        refused(*cli("label", proj, "--oracle", "file", "--labels", bad), *needles)
        assert dump(proj) == before


# --- 2. the same labels imported again under another file name ---------------------------------------------------
def _label_studio_file(proj: Path, gt: Path, image_id: int, out: Path) -> Path:
    """Export the round for Label Studio and annotate one task as an annotator would (the others untouched)."""
    code, text = cli("export", proj, "--round", 1, "--format", "label-studio", "--out", out)
    assert code == 0, text
    tasks = json.loads(out.read_text())
    raw = json.loads(gt.read_text())
    names = raw["categories"][0]["keypoints"]
    image = next(im for im in raw["images"] if im["id"] == image_id)
    for n, task in enumerate(tasks):
        task["id"] = 200 + n
        if task["data"]["activepose_image_id"] != image_id:
            continue
        result = []
        for person, a in enumerate(a for a in raw["annotations"] if a["image_id"] == image_id):
            for j, (x, y, v) in enumerate(np.reshape(a["keypoints"], (-1, 3)).tolist()):
                if v > 0:
                    result.append({"id": f"hand{person}_{j}", "from_name": "kp", "to_name": "image",
                                   "type": "keypointlabels", "origin": "manual", "meta": {"person": person},
                                   "original_width": image["width"], "original_height": image["height"],
                                   "value": {"x": 100 * x / image["width"], "y": 100 * y / image["height"],
                                             "width": 0.75, "keypointlabels": [names[j]]}})  # fmt: skip
        task["annotations"] = [{"id": 1, "was_cancelled": False, "result": result}]
    out.write_text(json.dumps(tasks))
    return out


@pytest.mark.parametrize("fmt", ["coco", "label-studio"])
def test_same_labels_under_another_file_name_add_nothing(tmp_path, data, base, fmt):
    root, gt = data
    proj = copy_project(base, tmp_path)
    open_round(proj)
    first_id = ROUND[0]  # only one of the round's images: the round stays open, so the import really runs
    if fmt == "coco":
        first = coco_of(gt, [first_id], tmp_path / "monday.json")
        second = tmp_path / "tuesday.json"
        shutil.copyfile(first, second)  # the very same file under another name
    else:
        first = _label_studio_file(proj, gt, first_id, tmp_path / "monday.json")
        tasks = json.loads(first.read_text())[::-1]  # a fresh export of the same work: other order and bytes
        for t in tasks:
            t["id"] += 1000
        second = tmp_path / "tuesday.json"
        second.write_text(json.dumps(tasks))
    people = people_in(gt, [first_id])
    assert people > 0
    args = ["--format", fmt]
    code, out = cli("label", proj, "--oracle", "file", "--labels", first, *args)
    assert code == 0, out
    assert f"{people} new" in flat(out)
    before = dump(proj)
    code, out = cli("label", proj, "--oracle", "file", "--labels", second, *args)
    assert code == 0 and "Traceback" not in out, out
    assert "0 new label" in flat(out) and "nothing new added" in out, out
    print(f"\n[observed] exit {code}: {flat(out)[:300]}")
    if fmt == "coco":  # and the same labels in other bytes: an export of the project, say
        raw = json.loads(first.read_text())
        raw["annotations"] = [dict(a, id=a["id"] + 100) for a in reversed(raw["annotations"])]
        third = tmp_path / "wednesday.json"
        third.write_text(json.dumps(raw, indent=2))
        code, out = cli("label", proj, "--oracle", "file", "--labels", third)
        assert code == 0 and "Traceback" not in out, out
        assert "every label of its 1 image(s) is already stored; 0 new labels" in flat(out), out
    assert dump(proj) == before  # not even an import record
    with Project.open(proj, readonly=True) as p:
        assert p.round_summary()[1]["people"] == people
        assert len(p.labels_of(first_id, history=True)) == people  # no second copy, not even as history
        duplicates = p._conn.execute(
            "SELECT image_id, person FROM labels WHERE superseded_at IS NULL GROUP BY image_id, person "
            "HAVING COUNT(*) > 1"
        ).fetchall()
        assert duplicates == []
    code, out = cli("status", proj)
    assert code == 0, out
    row = next(line for line in out.splitlines() if "random" in line)
    cells = [c.strip() for c in row.replace("|", "│").split("│") if c.strip()]
    assert cells[:6] == ["1", "random", "3", "open", "1/3", str(people)], row  # people counted once


# --- 3. select --budget 0 ----------------------------------------------------------------------------------------
def test_select_budget_zero(tmp_path, base):
    proj = copy_project(base, tmp_path)
    before = dump(proj)
    refused(*cli("select", proj, "--budget", 0, "--strategy", "random"), "--budget must be >= 1, got 0")
    assert dump(proj) == before
    assert not list((proj / "exports").iterdir())  # no round, no montages


# --- 4. an EXIF-rotated JPEG -------------------------------------------------------------------------------------
def test_exif_rotated_jpeg_stores_the_upright_size(tmp_path):
    from PIL import Image

    from activepose.fileio import read_image

    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.zeros((60, 40, 3), np.uint8)  # stored 40 wide, 60 high
    pixels[:10] = 255  # a white band on top of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright it is 60 wide, 40 high
    Image.fromarray(pixels).save(folder / "portrait.jpg", exif=exif)
    code, out = cli("init", tmp_path / "proj", "--images", folder, "--skeleton", "lsp14")
    assert code == 0 and "Traceback" not in out, out
    with Project.open(tmp_path / "proj", readonly=True) as p:
        img = p.image(1)
        upright = read_image(p.image_path(1))
    assert (img.width, img.height) == (60, 40)
    assert upright.shape[:2] == (img.height, img.width)


# --- 5. init --pool with a wrong width and a corrupt image -------------------------------------------------------
def test_init_pool_skips_wrong_size_and_corrupt_images(tmp_path, data):
    root, _ = data
    copy = tmp_path / "data"
    shutil.copytree(root / "images", copy / "images")
    raw = json.loads((root / "annotations.json").read_text())
    wrong = next(im for im in raw["images"] if im["id"] == 5)
    wrong["width"] += 7
    corrupt = next(im for im in raw["images"] if im["id"] == 6)
    (copy / corrupt["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder wants")
    (copy / "pool.json").write_text(json.dumps(raw))
    code, out = cli("init", tmp_path / "proj", "--pool", copy / "pool.json")
    assert code == 0 and "Traceback" not in out, out
    text = flat(out)
    assert "10 images" in text and "2 file(s) skipped" in text
    assert "skipped files (2)" in text
    assert f"image id 5: {copy / wrong['file_name']}: pool.json says 71x64 but the image is 64x64" in text
    assert "image id 6:" in text and Path(corrupt["file_name"]).name in text.split("image id 6:")[1]
    print(f"\n[observed] exit {code}: {text[text.index('skipped files') :][:300]}")
    with Project.open(tmp_path / "proj", readonly=True) as p:
        assert p.image_ids() == [i for i in range(1, 13) if i not in (5, 6)]


# --- 6. select while another process holds the project lock ------------------------------------------------------
_HOLDER = """
import sys, time
from activepose.lock import project_lock
with project_lock(sys.argv[1], "holder-for-test"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_select_on_a_busy_project(tmp_path, base):
    proj = copy_project(base, tmp_path)
    before = dump(proj)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(proj)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out = cli("select", proj, "--budget", 2, "--strategy", "random", "--device", "cpu")
        refused(code, out, f"{proj}: busy", "holder-for-test", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait(30)
        holder.stdout.close()
    assert dump(proj) == before
    assert not list((proj / "exports").iterdir())


# --- 7. and 8. an empty or garbage project.db --------------------------------------------------------------------
def test_status_on_an_empty_database_file(tmp_path, base):
    proj = copy_project(base, tmp_path)
    db = proj / DB_NAME
    db.write_bytes(b"")
    refused(*cli("status", proj), str(db), "not an activepose project (empty database)")
    assert db.read_bytes() == b""
    assert sorted(p.name for p in proj.iterdir()) == [
        "caches",
        "checkpoints",
        "exports",
        DB_NAME,
    ]  # no -wal/-shm


@pytest.mark.parametrize("command", ["status", "select", "train"])
def test_garbage_database_file(tmp_path, base, command):
    proj = copy_project(base, tmp_path)
    db = proj / DB_NAME
    garbage = np.random.default_rng(8).bytes(db.stat().st_size)
    db.write_bytes(garbage)
    args = {"status": [], "select": ["--budget", 2, "--strategy", "random"], "train": TRAIN_TINY}[command]
    refused(*cli(command, proj, *args), str(db), "not a SQLite database / corrupt", "not changed")
    assert db.read_bytes() == garbage
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    assert not (proj / "checkpoints" / "run").exists()


# --- 9. a read-only project folder -------------------------------------------------------------------------------
_AS_USER = """
import json, sys
from typer.testing import CliRunner
from activepose.cli import app
runner = CliRunner()
probe = sys.argv[1] + "/probe"
try:
    open(probe, "w").close()
    print(json.dumps("WRITABLE"))  # permissions do not apply to this process: nothing to check
    sys.exit(0)
except OSError:
    pass
out = []
for args in json.loads(sys.argv[2]):
    result = runner.invoke(app, args)
    out.append([result.exit_code, result.output])
print(json.dumps(out))
"""


def test_read_only_project_folder(tmp_path, data, base):
    root, gt = data
    proj = copy_project(base, tmp_path)
    open_round(proj)
    before, files = dump(proj), sorted(str(p.relative_to(proj)) for p in proj.rglob("*"))
    labels = coco_of(gt, ROUND, tmp_path / "round1.json")
    commands = [["status", str(proj)],
                ["label", str(proj), "--oracle", "file", "--labels", str(labels)],
                ["select", str(proj), "--budget", "2", "--strategy", "random"],
                ["train", str(proj), *TRAIN_TINY]]  # fmt: skip
    cmd = [sys.executable, "-c", _AS_USER, str(proj), json.dumps(commands)]
    if os.geteuid() == 0:  # root ignores permissions unless it gives up the capability to
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    modes = {p: p.stat().st_mode for p in [proj, *proj.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    if results == "WRITABLE":
        pytest.skip("this process can write to a read-only folder")
    (code, out), *writers = results
    assert code == 0 and "Traceback" not in out, out
    assert "3 labelled" in flat(out) and "round" in out
    print(f"\n[observed] status exit {code}: {flat(out)[-200:]}")
    for code, out in writers:
        refused(code, out, f"{proj / DB_NAME}: read-only (folder or file not writable)")
    assert dump(proj) == before
    assert sorted(str(p.relative_to(proj)) for p in proj.rglob("*")) == files  # no -wal, -shm, .lock, run


# --- 10. a full disk ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """An empty 8 MiB tmpfs mounted at tmp_path/proj (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "proj"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` until a write fails (ENOSPC), then free `leave` bytes of it again."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]  # the last pages, in smaller writes
    finally:
        os.close(fd)
    assert shutil.disk_usage(folder).free == 0
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size // 4096 * 4096 - leave))
    return filler


@pytest.mark.parametrize("command", ["label", "train"])
def test_full_disk(tmp_path, data, base, small_disk, command):
    root, gt = data
    proj = copy_project(base, tmp_path)  # into the tmpfs mounted at tmp_path/proj
    assert proj == small_disk
    open_round(proj)
    labels = coco_of(gt, ROUND, tmp_path / "round1.json")
    before = dump(proj)
    # Room for SQLite's 32 KiB shared-memory index, the lock and one more page: not for the labels (the
    # write-ahead log's header and first frame fill that page) nor for a checkpoint.
    _fill(proj, leave=40 * 1024)
    if command == "label":
        code, out = cli("label", proj, "--oracle", "file", "--labels", labels)
        refused(code, out, f"{proj / DB_NAME}: disk full", "nothing written")
    else:
        code, out = cli("train", proj, *TRAIN_TINY)
        refused(code, out, str(proj / "checkpoints" / "run"), ".pt: No space left on device")
        assert not [p.name for p in (proj / "checkpoints" / "run").iterdir() if p.suffix == ".tmp"]
    assert dump(proj) == before


# --- 11. bad option values, refused before any work starts ------------------------------------------------------
def _train_with(option: str, value) -> list:
    """`train PROJECT` with the tiny options, one of them replaced by (or extended with) `option value`."""
    args = list(TRAIN_TINY)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return ["train", *args]


@pytest.mark.parametrize(
    "args, needle",
    [
        pytest.param(["select", "--budget", 2, "--th-hm", 2], "--th-hm must be in (0, 1], got 2", id="select-th-hm"),
        pytest.param(["select", "--budget", 2, "--ann", "foo"], "--ann 'foo' is not a known ANN backend",
                     id="select-ann"),
        pytest.param(["select", "--budget", 2, "--extractor", "foo"], "--extractor 'foo' is not a known feature",
                     id="select-extractor"),
        pytest.param(_train_with("--backbone", "foo"), "--backbone 'foo' is not a known backbone",
                     id="train-backbone"),
        pytest.param(_train_with("--batch-size", 0), "--batch-size must be >= 1, got 0", id="train-batch-size"),
        pytest.param(_train_with("--lr", -1), "--lr must be > 0, got -1", id="train-lr"),
        pytest.param(_train_with("--device", "cuda"), "--device cuda: no CUDA GPU", id="train-device-cuda"),
        pytest.param(["evaluate", "--tta", "foo", "--device", "cpu"], "unknown TTA 'foo'", id="evaluate-tta"),
    ],
)  # fmt: skip
def test_bad_option_values_are_refused_before_any_work(tmp_path, base, args, needle):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    proj = copy_project(base, tmp_path)
    before, files = dump(proj), sorted(p.name for p in proj.rglob("*"))
    command, *rest = args
    refused(*cli(command, proj, *rest), needle)
    assert dump(proj) == before  # no round opened, no model recorded
    assert sorted(p.name for p in proj.rglob("*")) == files  # no run folder, montages, caches or lock file


# --- 12. export --out an existing folder ------------------------------------------------------------------------
def test_export_to_an_existing_folder(tmp_path, base):
    proj = copy_project(base, tmp_path)
    open_round(proj)
    before = dump(proj)
    folder = tmp_path / "exports_here"
    folder.mkdir()
    refused(*cli("export", proj, "--round", 1, "--out", folder), f"--out {folder}: is a folder",
            str(folder / "round1.json"))  # fmt: skip
    assert dump(proj) == before and not list(folder.iterdir())


# --- 13. another architecture for a project that already has a model ---------------------------------------------
@pytest.mark.parametrize(
    "option, value, needle",
    [
        pytest.param("--head-channels", 16, "trained with --head-channels 32; --head-channels 16 asks for another",
                     id="head-channels"),
        pytest.param("--backbone", "mobilenet_v2", "trained with --backbone vgg_tiny; --backbone mobilenet_v2 asks "
                     "for another", id="backbone"),
    ],
)  # fmt: skip
def test_train_refuses_another_architecture(tmp_path, trained, option, value, needle):
    proj = copy_project(trained, tmp_path)
    run = proj / "checkpoints" / "run"
    before, weights = dump(proj), {p.name: p.read_bytes() for p in run.iterdir()}
    # only the architecture option and machine settings: the rest (width 0.25 included) is the run's own
    refused(*cli("train", proj, option, value, "--workers", 0, "--device", "cpu"), str(run), needle,
            "cannot change within a run")  # fmt: skip
    assert dump(proj) == before
    assert {p.name: p.read_bytes() for p in run.iterdir()} == weights


def test_train_without_architecture_options_continues_the_run(tmp_path, trained):
    from activepose.pose.train import run_config

    proj = copy_project(trained, tmp_path)
    code, out = cli("train", proj)  # no options at all: the run's own settings, nothing new to do
    assert code == 0 and "Traceback" not in out, out
    assert "already complete" in out and "model 1 was already recorded" in out
    code, out = cli("train", proj, "--new-session", "--epochs", 1, "--workers", 0, "--device", "cpu")  # go on
    assert code == 0 and "Traceback" not in out, out
    assert "session 2" in out and "recorded model 2" in out, out
    cfg = run_config(proj / "checkpoints" / "run")
    assert (cfg.backbone, cfg.width, cfg.head_channels, cfg.input_size, cfg.lr, cfg.pretrained) == (
        "vgg_tiny",
        0.25,
        32,
        128,
        5e-3,
        False,
    )
    assert cfg.max_epochs == 1  # the option given


# --- 14. predict on a COCO file of another skeleton -------------------------------------------------------------
def test_predict_on_a_file_of_another_skeleton(tmp_path, trained):
    code, out = cli(
        "synth", "--out", tmp_path / "c17", "--skeleton", "coco17", "--num-images", 2, "--size", 64
    )
    assert code == 0, out
    c17 = tmp_path / "c17" / "annotations.json"
    model = trained / "checkpoints" / "model_1.pt"
    code, out = cli(
        "predict", "--model", model, "--images", c17, "--out", tmp_path / "pred.json", "--device", "cpu"
    )
    from activepose.pose.skeleton import get_skeleton

    theirs, ours = (list(get_skeleton(name).keypoints) for name in ("coco17", "lsp14"))
    refused(code, out, str(c17), f"keypoints {theirs} (coco17) differ from the model's {ours} (lsp14)")
    assert not (tmp_path / "pred.json").exists()


# --- 15. importing the untouched pre-annotated export -----------------------------------------------------------
def test_untouched_predictions_need_accept_predictions(tmp_path, trained):
    proj = copy_project(trained, tmp_path)
    pool = list(range(4, 11))  # every unlabelled image: the more images, the more predicted people
    open_round(proj, pool)
    export = tmp_path / "round1.json"
    code, out = cli("export", proj, "--round", 1, "--out", export, "--device", "cpu")
    assert code == 0 and "pre-annotating with the project's newest model 1" in out, out
    annotations = json.loads(export.read_text())["annotations"]
    assert annotations and all("score" in a for a in annotations), "the tiny model predicted nobody"
    for a in annotations:  # COCO visibility flags (not the peak scores), one per predicted keypoint
        flags = a["keypoints"][2::3]
        assert set(flags) <= {0, 1, 2} and sum(v > 0 for v in flags) == a["num_keypoints"], a
    before = dump(proj)
    refused(*cli("label", proj, "--oracle", "file", "--labels", export), str(export),
            "carry a 'score': these are model predictions", "--accept-predictions")  # fmt: skip
    assert dump(proj) == before
    code, out = cli("label", proj, "--oracle", "file", "--labels", export, "--accept-predictions")
    assert code == 0 and "Traceback" not in out, out
    with Project.open(proj, readonly=True) as p:
        assert sum(len(p.labels_of(i)) for i in pool) == len(annotations)
        labelled = {a["image_id"] for a in annotations}
        assert all(p.image(i).state == "labelled" for i in labelled)
