"""Crash injection for durability tests: kill the process at a named point, as a power cut or `kill -9` would.

Set ``ACTIVEPOSE_KILL_AT=NAME[:N]`` (several separated by commas) and the process sends itself ``SIGKILL`` the
N-th time (default: the first) it passes ``point(NAME)``. Nothing is flushed or cleaned up: this is the same
death as an external ``kill -9``, only at a reproducible place. Points:

- ``select``: each progress update while a round is being chosen (scoring, features, diversity);
- ``label``: inside the label-writing transaction, after the first image's rows are inserted;
- ``train``: after each training batch;
- ``record``: after a trained model's weights are copied, before the model is recorded;
- ``evaluate``: after a model is evaluated, before its metrics are stored and its round closed.

Unset (the normal case) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "ACTIVEPOSE_KILL_AT"
POINTS = ("select", "label", "train", "record", "evaluate")


def _parse(spec: str) -> dict[str, int]:
    targets: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}={spec!r}: unknown point {name!r}; use one of {', '.join(POINTS)}")
        try:
            targets[name] = int(n) if n else 1
        except ValueError:
            raise ValueError(f"{ENV}={spec!r}: {n!r} is not a count") from None
    return targets


_TARGETS = _parse(os.environ.get(ENV, ""))
_SEEN: dict[str, int] = {}


def point(name: str) -> None:
    """Die by SIGKILL here when ``ACTIVEPOSE_KILL_AT`` names this point and this is its N-th pass."""
    if name not in _TARGETS:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _TARGETS[name]:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows has no SIGKILL
