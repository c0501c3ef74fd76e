"""PNG rendering (sampling/render.py): RGB images keep their colours; one-channel images are grey."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.image import imread

from sampling.render import grid_png


def _pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")[..., :3]


def test_a_grid_of_rgb_images_shows_their_colours() -> None:
    images = np.zeros((4, 3, 8, 8), dtype=np.float32)
    images[:, 0] = 1.0  # all red
    px = _pixels(grid_png(images))
    red = (px[..., 0] > 0.9) & (px[..., 1] < 0.1) & (px[..., 2] < 0.1)
    assert red.mean() > 0.5  # the cells fill most of the figure


def test_a_grid_of_one_channel_images_is_grey() -> None:
    images = np.full((4, 1, 8, 8), 0.5, dtype=np.float32)
    px = _pixels(grid_png(images))
    grey = (np.abs(px[..., 0] - px[..., 1]) < 0.02) & (np.abs(px[..., 1] - px[..., 2]) < 0.02)
    assert grey.all() and (np.abs(px[..., 0] - 0.5) < 0.05).mean() > 0.5
