"""The oracle for `activepose run --oracle web`: the labelling page, served for each round until it is complete."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AnnotateOptions
from ..errors import StateError
from ..workflow.reporting import SILENT, Reporter
from .server import serve


@dataclass
class WebLabeller:
    """Serve the labelling page for each round the loop opens; return when people have labelled it."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allow_hosts: tuple[str, ...] = ()
    model: Path | None = None
    device: str = "auto"
    reporter: Reporter = SILENT
    on_ready: Any = None  # called with the page's URL once it is served

    def label(self, project, round_id: int) -> tuple[int, str]:
        before = project.round_summary().get(round_id, {}).get("people", 0)
        opts = AnnotateOptions(round_id=round_id, model=self.model, device=self.device)
        serve(project.folder, opts, host=self.host, port=self.port, token=self.token, allow_hosts=self.allow_hosts,
              until_complete=True, reporter=self.reporter, on_ready=self.on_ready)  # fmt: skip
        info = project.round(round_id)
        if info.state == "open":
            raise StateError(
                f"{project.folder}: the labelling page stopped before round {round_id} was complete"
            )
        people = project.round_summary().get(round_id, {}).get("people", 0)
        return int(people - before), f"people labelled round {round_id} on the labelling page"
