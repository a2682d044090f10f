"""The one rule that finds the project image a labelled file means, for every importer (COCO, Label Studio).

In order: the image id the file gives, when the project's image of that id has the same file name (ids are
stable, names guard against a file for another pool); else the one project image with that file name (tried
for each of the names the format allows, e.g. Label Studio's upload name without its hash prefix); else, when
the importer can hash the file's bytes, the one project image with that content. A frame of footage whose file
gives its video and frame index (COCO `images[].video` / `.frame`) and whose name is not unique (frame files of
different videos share names like `0000120.jpg`) matches the one project image of that video and frame before
the content is tried. Anything else is no match, with why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Match:
    """The matched project image id (None: no match); `ambiguous`: how many project images share the name."""

    image_id: int | None
    name: str = ""
    ambiguous: int = 0


class ImageMatcher:
    """Matches files to a project's images by the rule above; built once per import from (id, path) rows."""

    def __init__(self, rows: Iterable[tuple]):
        """`rows`: (id, path[, video, frame]) of the project's images."""
        self.name_of: dict[int, str] = {}
        self.by_name: dict[str, list[int]] = {}
        self.by_frame: dict[tuple[str, int], list[int]] = {}
        for image_id, path, *footage in rows:
            name = Path(path).name
            self.name_of[int(image_id)] = name
            self.by_name.setdefault(name, []).append(int(image_id))
            if len(footage) == 2 and footage[0] is not None and footage[1] is not None:
                self.by_frame.setdefault((str(footage[0]), int(footage[1])), []).append(int(image_id))

    def match(
        self,
        image_id: int | None,
        names: Sequence[str],
        by_content: Callable[[], list[int]] | None = None,
        footage: tuple[str | None, int | None] | None = None,
    ) -> Match:
        """Return the project image for a file that gives `image_id` (or None), `names` (its file name first)
        and, for a frame of footage, `footage` = (video, frame index)."""
        if image_id is not None and self.name_of.get(image_id) == names[0]:
            return Match(image_id, names[0])
        ambiguous = None
        for name in names:
            hits = self.by_name.get(name, [])
            if len(hits) == 1:
                return Match(hits[0], name)
            if len(hits) > 1:
                ambiguous = name
                break
        if footage is not None and footage[0] is not None and footage[1] is not None:
            hits = self.by_frame.get((str(footage[0]), int(footage[1])), [])
            if len(hits) == 1:
                return Match(hits[0], ambiguous or names[0])
        if by_content is not None and len(hits := by_content()) == 1:
            return Match(hits[0], ambiguous or names[0])
        if ambiguous is not None:
            return Match(None, ambiguous, len(self.by_name[ambiguous]))
        return Match(None, names[0])
