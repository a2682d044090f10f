"""`activepose annotate`: the labelling page for a project's open round (FastAPI + uvicorn on loopback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..config import AnnotateOptions
from ..errors import ConfigError
from . import options as o
from .app import RichReporter, command, console, next_step, remember_secret

Host = Annotated[
    str, typer.Option(help="Address to listen on (loopback by default; others need --token).", metavar="HOST")
]
Port = Annotated[int, typer.Option(help="Port to listen on (1-65535).", metavar="PORT")]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="ACTIVEPOSE_TOKEN", show_envvar=True, metavar="TOKEN",
        help="Every request must carry this token (the printed link sets it as a cookie); at least 16 "
        "characters off loopback. On the command line other users see it in `ps`: prefer the environment "
        "variable or --token-file.",
    ),
]  # fmt: skip
TokenFile = Annotated[
    Path | None,
    typer.Option(help="Read the token from this file's first line (kept out of `ps`).", metavar="FILE"),
]
AllowHost = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-host", metavar="NAME",
        help="Another name the page may be opened under (a proxy's, the machine's DNS name); repeatable. "
        "Requests naming any other host are refused.",
    ),
]  # fmt: skip


def server_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from --token (or ACTIVEPOSE_TOKEN) or --token-file (its first line); ConfigError for both."""
    if token_file is None:
        if token is not None and any(a == "--token" or a.startswith("--token=") for a in sys.argv):
            console.print("[yellow]note:[/] a token on the command line is visible to other users in `ps`; "
                          "pass it as ACTIVEPOSE_TOKEN or with --token-file", soft_wrap=True)  # fmt: skip
        return token
    if token is not None:
        raise ConfigError("give the token once: --token (or ACTIVEPOSE_TOKEN) or --token-file, not both")
    try:
        lines = token_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {token_file}: cannot read it ({exc})") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"--token-file {token_file}: the file is empty")
    remember_secret(lines[0].strip())
    return lines[0].strip()


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
    token_file: TokenFile = None,
    allow_host: AllowHost = None,
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

    token = server_token(token, token_file)
    opts = AnnotateOptions(round_id=round_id, model=model, predictions=predictions, device=device,
                           lease_seconds=60.0 * lease_minutes)  # fmt: skip

    def ready(url: str) -> None:
        console.print(f"[bold green]labelling page:[/] {url}   (Ctrl-C stops the server)", soft_wrap=True)

    with RichReporter() as rep:
        desk = serve(project, opts, host=host, port=port, token=token, allow_hosts=allow_host or (),
                     reporter=rep, on_ready=ready)  # fmt: skip
    if desk.is_complete():
        next_step(f"activepose train {project}")
    else:
        progress = desk.progress()
        next_step(
            f"{progress['todo']} image(s) of round {desk.round_id} still to label: activepose annotate {project}"
        )
