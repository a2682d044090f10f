"""Matplotlib figures (headless): learning-rate range test, learning curves."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lr_find(result, path: str | Path) -> Path:
    """Return `path` after drawing the smoothed loss against the learning rate (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.axvline(result.suggested_lr, color="tab:red", ls="--", label=f"suggested {result.suggested_lr:.1e}")
    ax.legend()
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_learning_curve(points: list[dict], path: str | Path, metric: str = "count_acc") -> Path:
    """Return `path` after drawing `metric` against the training-set size, one line per TTA.

    `points`: [{"train_size": n, "label_seconds": s, "metrics": {tta: {metric: value}}}] in training order.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ttas = sorted({t for p in points for t in p["metrics"]}, key=lambda t: (t != "clean", t))
    for tta in ttas:
        xs = [p["train_size"] for p in points if metric in p["metrics"].get(tta, {})]
        ys = [p["metrics"][tta][metric] for p in points if metric in p["metrics"].get(tta, {})]
        ax.plot(xs, ys, marker="o", lw=2.5 if tta == "clean" else 1.0, label=tta)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ttas:
        ax.legend(fontsize=8)
    ax.set_title(f"{metric} vs training-set size")
    fig.tight_layout()
    try:
        return atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)
