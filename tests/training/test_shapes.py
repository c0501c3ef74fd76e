"""The shapes image set (training/shapes.py): deterministic from a seed, image by image; balanced; in [0, 1];
each kind's geometry as defined; and a classifier trained on fresh draws tells the kinds apart on others."""

from __future__ import annotations

import numpy as np
import pytest

from training.shapes import CLASSES, SIZE, ShapesClassifier, _mask, shapes_raw


def test_a_draw_is_deterministic_and_a_prefix_of_a_larger_one() -> None:
    x, y = shapes_raw(12, seed=3)
    x2, y2 = shapes_raw(12, seed=3)
    big_x, big_y = shapes_raw(25, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.array_equal(big_x[:12], x) and np.array_equal(big_y[:12], y)
    other, _ = shapes_raw(12, seed=4)
    assert not np.allclose(other, x)


def test_images_are_rgb_in_the_unit_range_and_every_block_holds_each_kind_once() -> None:
    x, y = shapes_raw(50, seed=0)
    assert x.shape == (50, 3, SIZE, SIZE) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    for block in y.reshape(-1, len(CLASSES)):
        assert sorted(block) == list(range(len(CLASSES)))
    assert shapes_raw(0, seed=0)[0].shape == (0, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="n must be >= 0"):
        shapes_raw(-1, seed=0)


def test_each_kind_covers_its_closed_form_area() -> None:
    """Inside-ness on a fine grid against each kind's area for circumradius r = 1: circle pi, ring
    pi (1 - 0.55^2), square (1.5)^2, equilateral triangle with inradius 1/2: 3 sqrt(3) / 4, plus of arm
    half-width 0.3: 2 (2 x 0.6) - 0.6^2."""
    g = np.linspace(-1.2, 1.2, 1201)
    u, v = np.meshgrid(g, g)
    cell = (g[1] - g[0]) ** 2
    areas = [np.pi, np.pi * (1 - 0.55**2), 1.5**2, 3 * np.sqrt(3) / 4, 2 * 2 * 0.6 - 0.6**2]
    for kind, area in enumerate(areas):
        assert _mask(kind, u, v, 1.0).sum() * cell == pytest.approx(area, rel=0.01), CLASSES[kind]
    with pytest.raises(ValueError, match="shape kind"):
        _mask(len(CLASSES), u, v, 1.0)


def test_a_small_classifier_tells_the_kinds_apart(small_shapes_classifier) -> None:
    clf = small_shapes_classifier  # n 3 000, 4 epochs: about 10 s here; the default (10 000, 8) reaches ~0.91
    assert clf.test_accuracy > 0.4  # chance: 0.2
    x, y = shapes_raw(40, seed=99)
    assert clf.features(x).shape == (40, 64)
    assert clf.accuracy(x, y) == pytest.approx(float(np.mean(clf.predict(x) == y)))
    with pytest.raises(ValueError, match="shapes images"):
        clf.features(np.zeros((2, 1, 8, 8)))


def test_the_classifier_trains_under_inference_mode_as_a_quality_profile_calls_it() -> None:
    import torch

    with torch.inference_mode():
        clf = ShapesClassifier(n=256, epochs=1, seed=3)
    assert 0.0 <= clf.test_accuracy <= 1.0 and any(p.requires_grad for p in clf.net.parameters())
