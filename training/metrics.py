"""Sample-quality metrics: sliced Wasserstein for 2-D data, classifier scores for digits.

moons:  sw_ratio = SW(samples, data) / SW(data, data'), each side averaged over `repeats` independent
        2000-point data draws, so 1.0 means "as close to the data as another draw of the data is".
digits: a small MLP trained on scikit-learn's digits scores class-conditional samples (accuracy of the
        requested label) and gives a feature space (its hidden layer) for the Frechet distance
        FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
shapes: the same scores with training/shapes.py's held-out CNN (`training.shapes.shapes_quality`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from training.data import digits_raw, reference_samples
from training.frechet import frechet_distance

# make_moons places points on a fixed grid along each arc and adds noise, so two of its draws of the same
# size share the grid and sit far closer than two i.i.d. draws would (about 5x in SW at n = 2000). A data
# draw here is therefore n points picked at random from a pool this many times larger: i.i.d. in effect.
_MOONS_POOL_FACTOR = 40


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of a (N, D) and b (M, D).

    SW_2(a, b) = sqrt( mean_theta W_2^2(theta . a, theta . b) ) over `num_projections` directions theta
    drawn uniformly on the unit sphere S^(D-1) (seeded). Each 1-D W_2 compares quantile functions: sorted
    projections when N = M, otherwise both quantile functions read at max(N, M) mid-point levels.
    Closed forms: for D = 1, SW_2 = W_2 (two Gaussians: sqrt(dmu^2 + dsigma^2)); for b = a + delta,
    SW_2 = |delta| / sqrt(D) as num_projections grows.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein needs (N, D) and (M, D) arrays, got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("sliced_wasserstein needs at least one point on each side")
    theta = np.random.default_rng(seed).standard_normal((a.shape[1], num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    pa = np.sort(a @ theta, axis=0)  # (N, P)
    pb = np.sort(b @ theta, axis=0)  # (M, P)
    if len(pa) != len(pb):
        levels = (np.arange(max(len(pa), len(pb))) + 0.5) / max(len(pa), len(pb))
        pa = np.quantile(pa, levels, axis=0, method="inverted_cdf")
        pb = np.quantile(pb, levels, axis=0, method="inverted_cdf")
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


@lru_cache(maxsize=32)
def moons_draw(n: int, seed: int) -> np.ndarray:
    """n effectively i.i.d. two-moons points in data space, (n, 2) (see _MOONS_POOL_FACTOR), read-only.

    Cached: scoring many sample sets against the same seed (a quality profile) reuses its data draws, whose
    40x pools dominate the cost of sw_ratio."""
    pool, _ = reference_samples("moons", _MOONS_POOL_FACTOR * n, seed)
    draw = pool[np.random.default_rng(seed).integers(0, len(pool), n)]
    draw.flags.writeable = False
    return draw


def sw_ratio(samples: np.ndarray, seed: int = 0, n: int = 2000, repeats: int = 4) -> float:
    """SW(samples, data) / SW(data, data') for moons samples (N, 2) in data space; 1.0 = indistinguishable.

    Uses the first n samples (all of them when fewer). Numerator and denominator are each averaged over
    `repeats` independent data draws of n points to steady the ratio (single draws wobble by ~30 %).
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)[:n]
    if samples.shape[1] != 2:
        raise ValueError(f"sw_ratio expects 2-D moons samples, got shape {samples.shape}")
    base = 1_000_003 * (seed + 1)  # keeps the data draws apart from any seed a caller used for sampling
    num = [sliced_wasserstein(samples, moons_draw(n, base + 3 * r), seed=seed) for r in range(repeats)]
    den = [
        sliced_wasserstein(moons_draw(n, base + 3 * r + 1), moons_draw(n, base + 3 * r + 2), seed=seed)
        for r in range(repeats)
    ]
    return float(np.mean(num) / np.mean(den))


@lru_cache(maxsize=4)
def _fit_digits_mlp(hidden: int, seed: int) -> tuple[MLPClassifier, float]:
    """(classifier, held-out accuracy): fit on 80 % of load_digits, scored on the other 20 %."""
    x, y = digits_raw()
    x_tr, x_te, y_tr, y_te = train_test_split(x.reshape(len(x), -1), y, test_size=0.2, random_state=seed, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=500, random_state=seed, alpha=1e-3)
    clf.fit(x_tr, y_tr)
    return clf, float(clf.score(x_te, y_te))


class DigitsClassifier:
    """A one-hidden-layer ReLU MLP on 8x8 digits in [0, 1]; fitted once per process (cached by arguments)."""

    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        self.clf, self.test_accuracy = _fit_digits_mlp(hidden, seed)

    @staticmethod
    def _flat(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float64)
        if images.ndim < 2 or int(np.prod(images.shape[1:])) != 64:
            raise ValueError(f"digits images must be (N, 1, 8, 8) or (N, 64), got {images.shape}")
        return images.reshape(len(images), 64)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted labels (N,) for images (N, 1, 8, 8)."""
        return self.clf.predict(self._flat(images))

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images (N, 1, 8, 8) classified as their labels (N,)."""
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def features(self, images: np.ndarray) -> np.ndarray:
        """Hidden-layer activations relu(x W1 + b1), (N, hidden)."""
        return np.maximum(self._flat(images) @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)


def class_matched_reference(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each label, a real digit of that class drawn with replacement: (N, 1, 8, 8) in [0, 1]."""
    x, y = digits_raw()
    rng = np.random.default_rng(seed)
    out = np.empty((len(labels), *x.shape[1:]), dtype=x.dtype)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        pool = np.flatnonzero(y == c)
        if len(pool) == 0:
            raise ValueError(f"no digits of class {c}")
        out[where] = x[rng.choice(pool, size=len(where))]
    return out


def digits_quality(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Scores of class-conditional samples: images (N, 1, 8, 8) in [0, 1] asked for labels (N,).

    accuracy: classifier agreement with the requested labels. frechet: FD in the classifier's feature
    space to a class-matched draw of real digits; frechet_data: the same FD between two such real draws,
    the floor that N samples can reach (FD of finite samples is biased upwards).
    """
    labels = np.asarray(labels).astype(np.int64)
    clf = DigitsClassifier()
    feats = clf.features(images)
    ref_a = clf.features(class_matched_reference(labels, seed=1_000_003 * (seed + 1)))
    ref_b = clf.features(class_matched_reference(labels, seed=1_000_003 * (seed + 1) + 1))
    return {
        "accuracy": clf.accuracy(images, labels),
        "frechet": frechet_distance(feats, ref_a),
        "frechet_data": frechet_distance(ref_b, ref_a),
        "classifier_test_accuracy": clf.test_accuracy,
    }
