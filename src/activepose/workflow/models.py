"""Models in the application layer: load one, predict over image files, record a trained one in a project."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from .. import faults
from ..config import DecoderConfig
from ..fileio import ImageReadError, atomic_write, file_sha1, read_image
from .reporting import SILENT, Reporter


def decoder_for(skeleton, min_parts: int | None = None, min_score: float | None = None):
    """Return the default Decoder for `skeleton`, with the minimum parts / person score changed if given."""
    from ..pose.decode import Decoder

    changes = {"min_parts": min_parts, "min_person_score": min_score}
    return Decoder(
        skeleton, dataclasses.replace(DecoderConfig(), **{k: v for k, v in changes.items() if v is not None})
    )


def load(path: str | Path, device: str = "auto"):
    """Return the `LoadedModel` (net, skeleton, input size, ...) of a checkpoint on `device`."""
    from ..device import resolve_device
    from ..pose.checkpoint import load_model

    return load_model(path, resolve_device(device))


def predict_files(
    loaded, files: Sequence[tuple[int, Path]], *, input_size: int | None = None, batch_size: int = 8,
    decoder=None, reporter: Reporter = SILENT, on_image=None, scale=None,
) -> tuple[dict[int, tuple], list[str]]:  # fmt: skip
    """Return ({id: (people (N, K, 3), scores (N,))}, [unreadable file: why]) for (id, image file) pairs.

    `scale`: a `predict.InputScale`, or a `--scale` value ("auto", "fixed", a factor; None: auto when the
    model records its training scale, fixed when only `input_size` is given; see `input_scale`).
    Images are batched by network input side. `on_image(id, path, image, prediction)` is called for each
    image (e.g. to draw an overlay), in the order batches complete; the result is in `files`' order.
    """
    from ..pose.predict import InputScale, model_device, predict_stream

    decoder = decoder or decoder_for(loaded.skeleton)
    if not isinstance(scale, InputScale):
        scale, note = input_scale(loaded, input_size, scale)
        if note:
            reporter.note(note)
    device = model_device(loaded.net)
    paths = dict(files)
    out: dict[int, tuple] = {}
    unreadable: list[str] = []

    def readable():
        for image_id, path in files:
            try:
                yield image_id, read_image(path)
            except ImageReadError as exc:
                unreadable.append(str(exc))

    done = 0
    for batch in predict_stream(loaded.net, readable(), decoder, scale, batch_size, device):
        for image_id, image, pred in batch:
            out[image_id] = pred
            if on_image is not None:
                on_image(image_id, paths[image_id], image, pred)
        done += len(batch)
        reporter.progress("predicting", done + len(unreadable), len(files))
    return {i: out[i] for i, _ in files if i in out}, unreadable


def record_model(project, best: Path, train_size: int, reporter: Reporter = SILENT) -> tuple[int, bool]:
    """Copy a session's best weights to checkpoints/model_<n>.pt and record them once; return (id, new).

    The weights' sha1 identifies a model: the same weights again (a re-run) record nothing. Recording the
    model moves a 'labelled' round to 'trained' in the same transaction.
    """

    digest = file_sha1(best)
    known = project.model_by_sha1(digest)
    if known is not None:
        return known.id, False
    current = project.current_round()
    target = project.folder / "checkpoints" / f"model_{len(project.models()) + 1}.pt"

    def copy(fh) -> None:
        with best.open("rb") as src:
            shutil.copyfileobj(src, fh)

    atomic_write(target, copy)
    faults.point("record")
    # A 'labelled' round is trained by this model (one transaction); one still open is not: it has no labels yet.
    trains_round = current is not None and current.state == "labelled"
    model_id = project.add_model(
        target, train_size, round=current.id if trains_round else None, sha1=digest, mark_trained=trains_round
    )
    reporter.note(f"recorded model {model_id}: {target} (trained on {train_size} images)")
    return model_id, True


def input_scale(loaded, input_size: int | None, scale: str | float | None):
    """Return (`predict.InputScale`, note or None) for a loaded model and the --input-size / --scale given.

    --scale not given: auto when the model records its training scale, unless --input-size is given (an
    explicit size means every image at that size: fixed). With auto or a factor, --input-size only moves
    the cap (4x it).
    """
    from ..pose.predict import InputScale

    if scale is None and input_size is not None:
        scale = "fixed"
    return InputScale.resolve(scale, input_size or loaded.input_size, getattr(loaded, "train_scale", None))
