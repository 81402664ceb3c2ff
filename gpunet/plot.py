"""Learning-curve plots with matplotlib (the ``plot`` extra)."""
from __future__ import annotations

__all__ = ["plot_history"]


def plot_history(history, path, title=None):
    """Write a PNG with loss (left) and the metric (right) per epoch, train and validation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'gpunet[plot]'") from None
    metric = "accuracy" if "accuracy" in history else "r2"
    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_metric, metric, metric.replace("r2", "R^2"))):
        ax.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
