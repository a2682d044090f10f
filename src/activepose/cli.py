"""Entry point of the `activepose` command (`python -m activepose.cli` works too); commands live in `commands/`."""

from __future__ import annotations

from .commands import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
