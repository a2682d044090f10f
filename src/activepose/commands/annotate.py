"""`activepose annotate`: the labelling page for a project's open round (FastAPI + uvicorn on loopback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import options as o
from .app import RichReporter, command, console, next_step

Host = Annotated[
    str, typer.Option(help="Address to listen on (loopback by default; others need --token).", metavar="HOST")
]
Port = Annotated[int, typer.Option(help="Port to listen on.", metavar="PORT")]
Token = Annotated[
    str | None,
    typer.Option(
        help="Every request must carry this token (the printed link sets it as a cookie).", metavar="TOKEN"
    ),
]
AnnotateModel = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", metavar="FILE",
        help="Checkpoint whose predictions pre-annotate the images (default: the project's newest model).",
    ),
]  # fmt: skip


@command()
def annotate(
    project: o.ProjectArg,
    round_id: Annotated[
        int | None, typer.Option("--round", "-r", help="Round to serve (default: the open one).", metavar="N")
    ] = None,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    token: Token = None,
    model: AnnotateModel = None,
    predictions: Annotated[
        bool, typer.Option("--predictions/--no-predictions", help="Pre-annotate with a model's predictions.")
    ] = True,
    lease_minutes: Annotated[
        float, typer.Option(help="An opened image is reserved for its annotator this long.", metavar="MIN")
    ] = 10.0,
    device: o.Device = "auto",
) -> None:
    """Label a round in the browser: pre-annotated people to correct, several annotators, one save per image.

    Serves until Ctrl-C. When every image is labelled or skipped the round is 'labelled' and the page says so;
    then train (`activepose train`) or let `activepose run --oracle web` go on.
    """
    from ..web.server import serve
    from ..workflow.annotation import AnnotateOptions

    opts = AnnotateOptions(round_id=round_id, model=model, predictions=predictions, device=device,
                           lease_seconds=60.0 * lease_minutes)  # fmt: skip

    def ready(url: str) -> None:
        console.print(f"[bold green]labelling page:[/] {url}   (Ctrl-C stops the server)", soft_wrap=True)

    with RichReporter() as rep:
        desk = serve(project, opts, host=host, port=port, token=token, reporter=rep, on_ready=ready)
    if desk.is_complete():
        next_step(f"activepose train {project}")
    else:
        progress = desk.progress()
        next_step(
            f"{progress['todo']} image(s) of round {desk.round_id} still to label: activepose annotate {project}"
        )
