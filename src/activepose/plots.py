"""Matplotlib figures (headless): learning-rate range test, learning curves."""

from __future__ import annotations

from pathlib import Path


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
