"""Samples as a PNG (base64): a scatter plot for 2-D points, an image grid for images."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Figure + Agg canvas directly, not pyplot: no global figure state, so requests can render in threads.


def scatter_png(points: np.ndarray) -> bytes:
    """points (N, 2) -> PNG bytes of a square scatter plot."""
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    fig.tight_layout()
    return _to_png(fig)


def grid_png(images: np.ndarray) -> bytes:
    """images (N, C, H, W) in [0, 1] -> PNG bytes of a near-square grid (first channel shown)."""
    n = images.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * 0.8, rows * 0.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, top=1, bottom=0)
    return _to_png(fig)


def _to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def render_base64(samples: np.ndarray) -> str:
    """(N, 2) points or (N, C, H, W) images -> base64-encoded PNG."""
    png = scatter_png(samples) if samples.ndim == 2 else grid_png(samples)
    return base64.b64encode(png).decode("ascii")
