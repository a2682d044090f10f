"""The `activepose` command line: thin typer commands over the application layer (`activepose.workflow`).

One module per group of commands; each registers itself on `app` when imported.
"""

from . import project, annotate, loop, simulate, model, data  # noqa: F401, I001  (registers the commands, in this order in --help)
from .app import app

__all__ = ["app"]
