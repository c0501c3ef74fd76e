"""bench.latent_vs_pixel on a tiny autoencoder and DiT: both models trained to the budget in pieces, scored on
the way, their sampling timed side by side, and the JSON and plot written (figures: docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.latent_vs_pixel import first_reaching, measure, pixel_config
from tests.conftest import tiny_latent_config
from training.config import config_from_dict


def test_both_models_train_to_the_budget_and_are_scored_and_timed(
    tiny_vae: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_shapes_classifier
) -> None:
    monkeypatch.setenv("STEPSERVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("training.shapes.shapes_classifier", lambda seed=0: small_shapes_classifier)
    latent = config_from_dict({**tiny_latent_config(tiny_vae), "train": {"steps": 2, "batch_size": 4}})
    pixel = pixel_config(latent)
    assert pixel.data.autoencoder is None and pixel.net["patch"] == 4 and pixel.name == "tiny-pixel-fm"
    r = measure(budget_s=0.5, evals=2, per_class=2, out=tmp_path / "out", sample_n=4, rounds=1, latent=latent)
    assert set(r["runs"]) == {"latent", "pixel"}
    for name, res in r["runs"].items():
        steps = [p["steps"] for p in res["points"]]
        assert len(steps) == 2 and steps[0] < steps[1], (name, steps)  # resumed: more steps at the second stop
        assert all(p["train_s"] > 0 and 0 <= p["accuracy"] <= 1 and p["frechet"] >= 0 for p in res["points"])
        assert res["points"][-1]["train_s"] >= 0.5 * 0.5  # most of the budget was spent training
        assert r["sampling"][name]["s_per_image"] > 0
    assert r["sampling_ratio_pixel_over_latent"] == pytest.approx(
        r["sampling"]["pixel"]["s_per_image"] / r["sampling"]["latent"]["s_per_image"]
    )
    assert json.loads((tmp_path / "out" / "latent_vs_pixel.json").read_text())["budget_s"] == 0.5
    assert (tmp_path / "out" / "latent_vs_pixel.png").stat().st_size > 0


def test_first_reaching_needs_both_scores() -> None:
    points = [
        {"train_s": 1.0, "accuracy": 0.9, "frechet": 9.0},
        {"train_s": 2.0, "accuracy": 0.5, "frechet": 1.0},
        {"train_s": 3.0, "accuracy": 0.8, "frechet": 2.0},
    ]
    assert first_reaching(points, 0.8, 2.0) == 3.0
    assert first_reaching(points, 0.95, 2.0) is None
