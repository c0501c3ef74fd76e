"""The Frechet distance between Gaussians fitted to two feature sets (the FID formula), for any features:
FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu_a, cov_a) and N(mu_b, cov_b), (H,), (H, H)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if caught or not np.isfinite(covmean).all():
        # Singular product (e.g. dead ReLU features with zero variance): regularise as the FID reference
        # code does, with a ridge far below the feature scale.
        eps = 1e-6 * max(float(np.mean(np.diag(cov_a))), float(np.mean(np.diag(cov_b))), 1e-12)
        ridge = eps * np.eye(len(cov_a))
        covmean = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    covmean = np.real(covmean)  # sqrtm leaves tiny imaginary parts from round-off
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean), 0.0))


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features feat_a (N, H) and feat_b (M, H)."""
    feat_a = np.asarray(feat_a, dtype=np.float64)
    feat_b = np.asarray(feat_b, dtype=np.float64)
    if feat_a.ndim != 2 or feat_b.ndim != 2 or feat_a.shape[1] != feat_b.shape[1] or min(len(feat_a), len(feat_b)) < 2:
        raise ValueError(f"frechet_distance needs (N>=2, H) and (M>=2, H), got {feat_a.shape} and {feat_b.shape}")
    stats = [(f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))) for f in (feat_a, feat_b)]
    return frechet_from_stats(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
