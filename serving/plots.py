"""Pictures of samples: a scatter for 2-D data, an image grid for digits (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def samples_figure(x: np.ndarray, data_kind: str, title: str = "", max_images: int = 64):
    """x: (N, 2) points or (N, 1, H, W) images in data space."""
    if data_kind == "digits" or x.ndim == 4:
        n = min(len(x), max_images)
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                ax.imshow(x[i, 0], cmap="gray_r", vmin=0.0, vmax=1.0)
    else:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_samples_png(x: np.ndarray, data_kind: str, path: Path, title: str = "") -> Path:
    fig = samples_figure(x, data_kind, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def samples_png_bytes(x: np.ndarray, data_kind: str, title: str = "") -> bytes:
    fig = samples_figure(x, data_kind, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
