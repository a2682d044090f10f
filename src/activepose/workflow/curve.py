"""The project's learning curve: each evaluated model's metrics against labelled images and label cost."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write_json
from .plots import plot_learning_curve


def is_evaluated(metrics: dict) -> bool:
    """True when a model's stored metrics hold an evaluation report ({tta: {metric: value}})."""
    return any(isinstance(v, dict) for v in metrics.values())


def learning_curve(project) -> list[dict]:
    """Return [{model, round, train_size, label_seconds, metrics: {tta: {...}}}] of evaluated models, oldest first.

    `label_seconds` is the label cost so far: initial labels plus every round up to the model's own.
    """
    summary = project.round_summary()
    points = []
    for m in project.models():
        if not is_evaluated(m.metrics):
            continue
        cost = sum(
            s["seconds"] for r, s in summary.items() if r is None or (m.round is not None and r <= m.round)
        )
        metrics = {k: v for k, v in m.metrics.items() if isinstance(v, dict)}
        points.append({"model": m.id, "round": m.round, "train_size": m.train_size, "label_seconds": cost,
                       "metrics": metrics})  # fmt: skip
    return points


def write_learning_curve(project) -> Path | None:
    """Write exports/learning_curve.{json,png}; return the PNG's path (None before any evaluation)."""

    points = learning_curve(project)
    if not points:
        return None
    out = project.folder / "exports" / "learning_curve.png"
    atomic_write_json(out.with_suffix(".json"), points, indent=1)
    return plot_learning_curve(points, out)
