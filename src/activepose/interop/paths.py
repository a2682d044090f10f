"""Where an exported file finds a project's images: paths relative to the file, or absolute."""

from __future__ import annotations

import os
from pathlib import Path


def image_ref(project, image_id: int, out: Path, paths: str) -> str:
    """Return image `image_id`'s path as an exported file at `out` names it (`paths`: relative or absolute)."""
    fp = project.image_path(image_id).resolve()
    if paths == "absolute":
        return str(fp)
    return Path(os.path.relpath(fp, out.parent.resolve())).as_posix()
