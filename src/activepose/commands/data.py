"""Commands on COCO keypoint files: check, subset, synth."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from ..config import SyntheticConfig
from ..errors import ConfigError
from ..pose.coco import save_coco
from ..pose.synthetic import make_synthetic_coco
from ..workflow import common
from . import options as o
from .app import command, console, next_step


@command()
def check(
    data: Annotated[Path, typer.Argument(help="COCO keypoint JSON to validate.", metavar="FILE")],
    images: Annotated[
        bool,
        typer.Option(
            metavar="", help="Also open every image header (size with EXIF orientation, readability)."
        ),
    ] = True,
    skeleton: Annotated[
        str | None,
        typer.Option(help="Expected skeleton: coco17, coco18, lsp14 or a COCO JSON.", metavar="NAME"),
    ] = None,
) -> None:
    """Validate a COCO keypoint file: ids, categories, keypoint counts, coordinates, image files."""
    coco = common.load_data(data, skeleton, read_headers=images)
    console.print(
        f"[green]ok[/] {data}: {len(coco)} images, {coco.num_people} people, skeleton {coco.skeleton.name} "
        f"({coco.skeleton.num_keypoints} keypoints, {coco.skeleton.num_limbs} limbs)"
    )
    next_step(f"activepose init PROJECT --pool {data}   (or: activepose train --data {data} --out RUN)")


@command()
def subset(
    data: Annotated[Path, typer.Argument(help="COCO keypoint JSON to draw from.", metavar="FILE")],
    size: Annotated[int, typer.Option("--size", "-n", help="How many images to keep.", metavar="N")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Write the subset here.", metavar="FILE")],
    rest: Annotated[
        Path | None,
        typer.Option(help="Also write the images not drawn (a disjoint split) here.", metavar="FILE"),
    ] = None,
    skew: Annotated[
        float | None,
        typer.Option(
            help="Footage: draw per video, the k-th video (seeded order) giving a share ~ k^-X of the frames "
            "(0: equal; 1: Zipf, a few videos give most frames). Needs each image's COCO video.",
            metavar="X",
        ),
    ] = None,
    seed: o.Seed = 0,
) -> None:
    """Write a seeded random subset of a COCO file (ids and labels kept), e.g. a pool sample or an initial set.

    Image file names are rewritten relative to the output file's folder, so the subset works from anywhere.
    With --skew, an imbalanced pool of footage: a few videos give most frames, the rest a handful.
    """

    coco = common.load_data(data, check_images=False)
    if not 0 < size <= len(coco):
        raise ConfigError(f"{data}: --size must be between 1 and its {len(coco)} images, got {size}")
    if skew is not None:
        chosen = common.skewed_video_subset(coco, size, skew, seed)
    else:
        chosen = common.seeded_subset(coco, size, seed)
    drawn = set(chosen.image_ids)
    others = coco.subset([i for i in coco.image_ids if i not in drawn])
    written = []
    for part, path in ((chosen, out), (others, rest)):
        if path is None:
            continue
        folder = path.resolve().parent
        frames = [dataclasses.replace(f, file_name=Path(os.path.relpath(coco.image_path(f).resolve(), folder)).as_posix())
                  for f in part]  # fmt: skip
        written.append(f"{len(frames)} images ({sum(f.num_people for f in frames)} people) -> {path}")
        save_coco(dataclasses.replace(part, frames=frames, root=folder, path=path), path)
    console.print("wrote " + "; ".join(written))
    if skew is not None:
        per = sorted((sum(1 for f in chosen if f.video == v) for v in {f.video for f in coco}), reverse=True)
        console.print(f"frames per video (most first): {', '.join(map(str, per))}")
    next_step(f"activepose init PROJECT --pool {out}   (or: activepose check {out})")


@command()
def synth(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for images/ and annotations.json.", metavar="DIR")
    ],
    num_images: Annotated[
        int, typer.Option("--num-images", "-n", help="How many scenes.", metavar="N")
    ] = 200,
    skeleton: Annotated[str, typer.Option(help="coco17, coco18 or lsp14.", metavar="NAME")] = "lsp14",
    size: Annotated[int, typer.Option(help="Image side in pixels.", metavar="PX")] = 256,
    max_people: Annotated[int, typer.Option(help="Most people per scene.", metavar="N")] = 4,
    frames_per_video: Annotated[
        int,
        typer.Option(
            help="Footage: videos of N frames of one scene, people moving a little (1: stills).", metavar="N"
        ),
    ] = 1,
    seed: o.Seed = 0,
) -> None:
    """Generate a synthetic multi-person COCO keypoint data set (deterministic per seed)."""

    cfg = SyntheticConfig(num_images=num_images, image_size=(size, size), max_people=max_people,
                          frames_per_video=frames_per_video)  # fmt: skip
    path = make_synthetic_coco(out, skeleton, cfg, seed=seed)
    console.print(f"wrote {num_images} images -> {path}")
    next_step(f"activepose check {path}")
