"""Quality metrics against closed forms: 1-D Wasserstein of Gaussians, shifts, Gaussian Frechet distance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from training import metrics
from training.data import digits_raw
from training.frechet import frechet_distance, frechet_from_stats


def gaussian_quantiles(mu: float, sigma: float, n: int) -> np.ndarray:
    """n points at the mid-point quantiles of N(mu, sigma^2), (n, 1): an almost exact empirical Gaussian."""
    return norm.ppf((np.arange(n) + 0.5) / n, loc=mu, scale=sigma)[:, None]


def test_sw_of_1d_gaussians_is_their_w2() -> None:
    a = gaussian_quantiles(0.0, 1.0, 20000)
    b = gaussian_quantiles(3.0, 2.0, 20000)
    # W_2(N(0,1), N(3,4))^2 = 3^2 + (2-1)^2; in 1-D every projection is +-1, so SW_2 = W_2.
    assert metrics.sliced_wasserstein(a, b, num_projections=16) == pytest.approx(np.sqrt(10.0), rel=2e-3)


def test_sw_of_a_shift_is_norm_over_sqrt_dim() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 3))
    delta = np.array([1.0, -2.0, 0.5])
    # E[(theta . delta)^2] = |delta|^2 / D for theta uniform on the sphere.
    expected = np.linalg.norm(delta) / np.sqrt(3)
    assert metrics.sliced_wasserstein(a, a + delta, num_projections=20000) == pytest.approx(expected, rel=0.02)


def test_sw_of_identical_distributions_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2000, 2))
    assert metrics.sliced_wasserstein(a, a) == 0.0
    assert metrics.sliced_wasserstein(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-12)
    assert metrics.sliced_wasserstein(a, rng.standard_normal((2000, 2))) < 0.1
    assert metrics.sliced_wasserstein(a, a + 1.0) > 0.9  # |(1, 1)| / sqrt(2) = 1


def test_sw_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="sliced_wasserstein"):
        metrics.sliced_wasserstein(np.zeros((4, 2)), np.zeros((4, 3)))


def test_sw_ratio_is_one_for_data_and_large_for_bad_samples() -> None:
    data = metrics.moons_draw(2000, seed=12345)
    assert 0.6 < metrics.sw_ratio(data) < 1.5
    assert metrics.sw_ratio(data + np.array([0.3, 0.0])) > 3.0
    assert metrics.sw_ratio(np.random.default_rng(0).standard_normal((2000, 2))) > 5.0


def test_moons_draw_is_not_the_make_moons_grid() -> None:
    # Two same-size make_moons draws share their arc grid; our draws must be i.i.d. so that two of them
    # sit as far apart as two samples of a continuous distribution do (SW ~ n^-1/2, not the noise alone).
    from training.data import reference_samples

    grid = metrics.sliced_wasserstein(reference_samples("moons", 2000, 0)[0], reference_samples("moons", 2000, 1)[0])
    iid = metrics.sliced_wasserstein(metrics.moons_draw(2000, 0), metrics.moons_draw(2000, 1))
    assert iid > 2 * grid


def test_frechet_of_gaussian_samples_matches_the_formula() -> None:
    rng = np.random.default_rng(2)
    mu_a, sd_a = np.array([0.0, 1.0, -1.0]), np.array([1.0, 0.5, 2.0])
    mu_b, sd_b = np.array([0.5, 1.0, 0.0]), np.array([2.0, 0.5, 1.0])
    a = mu_a + sd_a * rng.standard_normal((200_000, 3))
    b = mu_b + sd_b * rng.standard_normal((200_000, 3))
    # Diagonal covariances commute: FD = |dmu|^2 + sum (sd_a - sd_b)^2.
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_from_stats_with_non_commuting_covariances() -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_normal((4, 4))
    n = rng.standard_normal((4, 4))
    cov_a, cov_b = m @ m.T + np.eye(4), n @ n.T + np.eye(4)
    mu_a, mu_b = rng.standard_normal(4), rng.standard_normal(4)
    # Independent route: Tr((S_a^1/2 S_b S_a^1/2)^1/2) through symmetric eigendecompositions.
    w, v = np.linalg.eigh(cov_a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sum(np.sqrt(inner))
    assert frechet_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_digits_classifier_is_accurate_and_deterministic() -> None:
    clf = metrics.DigitsClassifier()
    assert clf.test_accuracy > 0.9
    x, y = digits_raw()
    assert clf.accuracy(x, y) > 0.95
    assert clf.accuracy(x, np.roll(y, 1)) < 0.3
    feats = clf.features(x[:10])
    assert feats.shape == (10, 64) and (feats >= 0).all()
    metrics._fit_digits_mlp.cache_clear()
    again = metrics.DigitsClassifier()
    assert again.clf is not clf.clf
    np.testing.assert_array_equal(again.predict(x), clf.predict(x))


def test_digits_quality_separates_real_digits_from_noise() -> None:
    x, y = digits_raw()
    idx = np.random.default_rng(4).choice(len(x), 500, replace=False)
    real = metrics.digits_quality(x[idx], y[idx])
    noise = metrics.digits_quality(np.random.default_rng(5).random((500, 1, 8, 8)), y[idx])
    assert real["accuracy"] > 0.95 and noise["accuracy"] < 0.3
    assert real["frechet"] < 2 * real["frechet_data"]
    assert noise["frechet"] > 10 * real["frechet"]
