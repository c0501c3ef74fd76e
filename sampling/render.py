"""Samples as a PNG: a scatter plot for 2-D points, an image grid for images (at most 64 shown).

Used by the HTTP API (`format: "png"`, base64) and by `python -m serving sample --plot` (a file)."""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Figure + Agg canvas directly, not pyplot: no global figure state, so requests can render in threads.
# matplotlib is imported on the first render, not with this module: a replica that never renders a PNG starts
# without it.


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


MAX_IMAGES = 64  # a grid of more is unreadable and costs seconds of the ingress's CPU per request


def scatter_png(points: np.ndarray, title: str = "") -> bytes:
    """points (N, 2) -> PNG bytes of a square scatter plot."""
    fig = _figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _to_png(fig)


def grid_png(images: np.ndarray, title: str = "") -> bytes:
    """images (N, C, H, W) in [0, 1] -> PNG bytes of a near-square grid of the first 64: RGB when C = 3, else
    the first channel in grey."""
    n = min(images.shape[0], MAX_IMAGES)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(cols * 0.8, rows * 0.8), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            if images.shape[1] == 3:
                ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0.0, 1.0), interpolation="nearest")
            else:
                ax.imshow(images[i, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=8)
        top = 1 - 0.3 / (rows * 0.8)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, top=top, bottom=0)
    return _to_png(fig)


def _to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def render_png(samples: np.ndarray, title: str = "") -> bytes:
    """(N, 2) points or (N, C, H, W) images -> PNG bytes."""
    return scatter_png(samples, title) if samples.ndim == 2 else grid_png(samples, title)


def render_base64(samples: np.ndarray) -> str:
    """(N, 2) points or (N, C, H, W) images -> base64-encoded PNG."""
    return base64.b64encode(render_png(samples)).decode("ascii")
