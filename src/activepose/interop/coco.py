"""COCO keypoint files into a project: read, checked and handed to the store as one import.

The store (`Project.import_frames`) keeps the state; this module knows the format: the file's JSON, the
project's skeleton, Label Studio's COCO export (refused: it merges all people of an image into one) and
model predictions (annotations with a `score`, refused unless accepted).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..pose.coco import CocoError, parse_coco, read_json, shown
from ..project.schema import StoreError
from ..project.store import ImportResult, Project


def import_coco(
    project: Project,
    path: str | Path,
    source: str | None = None,
    round: int | None = None,
    include_empty: bool = False,
    accept_predictions: bool = False,
    complete_round: bool = False,
) -> ImportResult:
    """Import a COCO keypoint file's labels into `project`; idempotent by the file's content hash and by label content.

    The file must use the project's keypoints. Each file image maps to a project image: by id when
    that id exists and its file name (last path component) matches; else by a unique file name match;
    else by content hash when the image file is readable next to the JSON. Unmatched images are
    errors (nothing imported). Images without annotations are skipped unless `include_empty`, which
    records them as labelled with nobody in them. With `round`, every labelled image must belong to
    that round. `source` defaults to 'file:<file name>'.

    Annotations with a `score` key are model predictions (activepose's own exports and prediction files
    write one per person), not human labels: they are refused unless `accept_predictions`
    (`--accept-predictions`). Labels are stored as `add_labels` does: an image's changed labels replace
    its current ones (kept as history), unchanged ones add nothing, so the same labels exported again and
    re-imported under another file name store nothing (the import is then not recorded either).
    `complete_round` (needs `round`) is `add_labels`'s: the round becomes 'labelled' in the same
    transaction once all its images are labelled or skipped (`ImportResult.round_completed`).
    """
    path = Path(path)
    project.check_not_own_database(path)
    try:
        raw = path.read_bytes()  # hash and parse the same bytes
    except OSError as exc:
        raise StoreError(f"{path}: cannot import: {exc}") from exc
    digest = hashlib.sha1(raw).hexdigest()
    try:
        try:
            parsed = read_json(raw)
        except ValueError as exc:
            raise CocoError(path, [f"not valid JSON: {exc}"]) from None
        info = parsed.get("info") if isinstance(parsed, dict) else None
        if isinstance(info, dict) and str(info.get("contributor", "")).strip().lower() == "label studio":
            raise StoreError(
                f"{path}: cannot import: Label Studio's COCO export, which merges all people of an image into "
                "one; export 'JSON' in Label Studio and import it with --format label-studio"
            )
        data = parse_coco(parsed, path=path, root=path.parent, skeleton=project.skeleton, check_images=False)
    except CocoError as exc:
        raise StoreError(f"{path}: cannot import: {exc}") from exc
    if not accept_predictions:
        scored = [
            f"annotation id {a['id']} (image id {a['image_id']}): score {shown(a['score'])}"
            for a in parsed["annotations"]
            if isinstance(a, dict) and "score" in a
        ]
        if scored:
            raise StoreError(
                f"{path}: {len(scored)} annotation(s) carry a 'score': these are model predictions, not "
                "human labels; nothing imported (pass --accept-predictions to import them as labels)",
                scored,
            )
    source = source or f"file:{path.name}"
    return project.import_frames(path, digest, data, source, round, include_empty, complete_round)
