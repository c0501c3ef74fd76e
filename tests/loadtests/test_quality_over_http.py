"""The scores `loadtests --quality` gives each data kind, on real data (no server: the sweep over HTTP is in
test_cli.py): shapes images of the kinds asked for score like data (the latent models' decoded images are
scored the same way), the wrong kinds do not, and a kind without a metric or without labels is refused."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.client import LoadTestError
from loadtests.quality_over_http import data_kind, primary_metric, score
from training.shapes import CLASSES, shapes_of


def test_shapes_score_by_the_shapes_classifier(small_shapes_classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "training.shapes.shapes_classifier", lambda seed=0: small_shapes_classifier
    )  # (the metric's: 35 s)
    labels = np.repeat(np.arange(len(CLASSES)), 20)
    images = shapes_of(labels, seed=123)
    right = score("shapes", images, labels)
    # Images all of kind 0, asked for every kind: the wrong kinds, and a distribution unlike the data's.
    wrong = score("shapes", shapes_of(np.zeros_like(labels), seed=123), labels)
    assert right["accuracy"] > wrong["accuracy"] + 0.15 and wrong["frechet"] > 2 * right["frechet"], (right, wrong)
    assert data_kind({"data_kind": "shapes"}) == "shapes" and primary_metric("shapes") == "frechet"


def test_a_kind_without_labels_or_metric_is_refused() -> None:
    with pytest.raises(LoadTestError, match="shapes quality needs class-conditional samples"):
        score("shapes", np.zeros((4, 3, 32, 32), np.float32), None)
    with pytest.raises(LoadTestError, match="no quality metric for data kind 'image'"):
        data_kind({"data_kind": "image"})
