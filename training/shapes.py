"""Shapes: a class-labelled 32x32 RGB image set the project draws itself, deterministically from a seed (nothing
is downloaded). Each image is one shape of a kind (the class) in a random colour, size, position and rotation
on a textured background: a gradient between two random colours, a sinusoidal grating of random frequency,
angle and phase, and pixel noise. Colours are drawn apart from the background's, so the shape shows; the kind
is all the class says, so a model must learn geometry, not colour.

Kinds (CLASSES): circle, ring, square, triangle, plus. Shapes are rendered at SUPERSAMPLE x the resolution and
averaged down (anti-aliased edges). Image i of `shapes_raw(n, seed)` depends only on (seed, i): a prefix of a
larger draw is the smaller draw.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CLASSES = ("circle", "ring", "square", "triangle", "plus")
SIZE = 32
SUPERSAMPLE = 2


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, mid-to-bright RGB colour in [0, 1]."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0  # HSV -> RGB
    return val - val * sat * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-ness of kind `kind` at shape coordinates (u, v) (rotated, centred), circumradius r."""
    if kind == 0:  # circle
        return u * u + v * v <= r * r
    if kind == 1:  # ring
        d = u * u + v * v
        return (d <= r * r) & (d >= (0.55 * r) ** 2)
    if kind == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75 * r
    if kind == 3:  # equilateral triangle: three half-planes at the inradius r / 2
        inside = np.ones_like(u, dtype=bool)
        for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            inside &= np.cos(angle) * u + np.sin(angle) * v <= 0.5 * r
        return inside
    if kind == 4:  # plus
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    raise ValueError(f"shape kind must be in 0..{len(CLASSES) - 1}, got {kind}")


def render(kind: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One image (3, size, size) float32 in [0, 1] of shape `kind`, its look drawn from `rng`."""
    hi = size * SUPERSAMPLE
    coords = (np.arange(hi) + 0.5) / SUPERSAMPLE  # pixel centres, in output-pixel units
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    # background: gradient between two colours, a grating, noise (at output resolution, below)
    c0, c1 = _colour(rng) * rng.uniform(0.3, 0.8), _colour(rng) * rng.uniform(0.3, 0.8)
    g = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(g) * xx + np.sin(g) * yy) / size)[None]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-9)
    image = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp
    freq, angle, phase = rng.uniform(0.15, 0.6), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    image = image + rng.uniform(0.03, 0.1) * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)[None]
    # the shape: a colour far enough from the background's mean that it shows
    background = image.mean(axis=(1, 2))
    colour = _colour(rng)
    for _ in range(8):
        if np.abs(colour - background).sum() > 0.6:
            break
        colour = _colour(rng)
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    u, v = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
    inside = _mask(kind, u, v, r)
    image = np.where(inside[None], colour[:, None, None], image)
    image = image.reshape(3, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    image = image + rng.normal(0.0, 0.02, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def shapes_raw(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 3, size, size) float32 in [0, 1] and their kinds (n,) int64: every block of len(CLASSES)
    images holds each kind once, in a seeded order; image i depends only on (seed, i)."""
    if n < 0:
        raise ValueError(f"shapes: n must be >= 0, got {n}")
    labels = np.array([_label(seed, i) for i in range(n)], dtype=np.int64)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        images[i] = render(int(labels[i]), np.random.default_rng([seed, i, 1]), size)
    return images, labels


def shapes_of(labels: np.ndarray, seed: int, size: int = SIZE) -> np.ndarray:
    """Fresh images (N, 3, size, size) in [0, 1] of the given kinds (N,): image i depends on (seed, i, labels[i])."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"shapes: kinds must be in [0, {len(CLASSES)}), got {sorted(set(labels.tolist()))}")
    images = np.empty((len(labels), 3, size, size), dtype=np.float32)
    for i, kind in enumerate(labels):
        images[i] = render(int(kind), np.random.default_rng([seed, i, 3]), size)
    return images


def _label(seed: int, i: int) -> int:
    """Image i's kind: each block of len(CLASSES) images holds every kind once, in a seeded order."""
    block, at = divmod(i, len(CLASSES))
    return int(np.random.default_rng([seed, block, 2]).permutation(len(CLASSES))[at])


def _classifier_net(num_classes: int = len(CLASSES)):
    from torch import nn

    def block(i: int, o: int) -> list:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes),
    )  # fmt: skip


def augment(x, gen):
    """A batch with half its images blurred (a 3x3 Gaussian of random width) and every image given fresh pixel
    noise of random strength: what a decoder does to the background's texture must not change the verdict."""
    import torch

    n = len(x)
    sigma = 0.4 + 0.8 * torch.rand(n, generator=gen)
    k = torch.exp(-(torch.arange(-1.0, 2.0) ** 2)[None, :] / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, 3): separable Gaussian weights per image
    kernel = (k[:, :, None] * k[:, None, :]).repeat_interleave(3, 0)[:, None]  # (3n, 1, 3, 3)
    padded = torch.nn.functional.pad(x.reshape(1, 3 * n, SIZE, SIZE), (1, 1, 1, 1), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, kernel, groups=3 * n).reshape_as(x)
    pick = (torch.rand(n, generator=gen) < 0.5)[:, None, None, None]
    noise = torch.randn(x.shape, generator=gen) * (0.04 * torch.rand(n, 1, 1, 1, generator=gen))
    return (torch.where(pick, blurred, x) + noise).clamp(0.0, 1.0)


class ShapesClassifier:
    """A small CNN trained on `n` fresh shapes (seed 10_000 + seed, never a training set's seed) for `epochs`
    with a cosine learning rate, on `augment`ed batches; `test_accuracy` on 2 000 more held out. Its 64
    penultimate activations are the features of a Frechet distance."""

    def __init__(self, n: int = 10_000, epochs: int = 8, seed: int = 0) -> None:
        import torch

        # (trained with gradients even when called under no_grad / inference_mode, as a quality profile does)
        with torch.inference_mode(False), torch.enable_grad():
            self._train(n, epochs, seed)
        xt, yt = shapes_raw(2000, 20_000 + seed)
        self.test_accuracy = self.accuracy(xt, yt)

    def _train(self, n: int, epochs: int, seed: int) -> None:
        import torch

        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = _classifier_net()
        x, y = (torch.from_numpy(a) for a in shapes_raw(n, 10_000 + seed))
        steps = epochs * -(-n // 128)
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        self.net.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, 128):
                b = perm[i : i + 128]
                loss = torch.nn.functional.cross_entropy(self.net(augment(x[b], gen)), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.net.eval()

    def _run(self, images: np.ndarray, upto: int | None = None) -> np.ndarray:
        import torch

        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(f"shapes images must be (N, 3, {SIZE}, {SIZE}) in [0, 1], got {images.shape}")
        layers = self.net if upto is None else self.net[:upto]
        with torch.inference_mode():
            return np.concatenate(
                [layers(torch.from_numpy(images[i : i + 512])).numpy() for i in range(0, len(images), 512)]
            )

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(images).argmax(1)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def features(self, images: np.ndarray) -> np.ndarray:
        """The 64 activations before the last layer, (N, 64)."""
        return self._run(images, upto=-1)


@lru_cache(maxsize=2)
def shapes_classifier(seed: int = 0) -> ShapesClassifier:
    """ShapesClassifier, trained once per process (about 35 s here)."""
    return ShapesClassifier(seed=seed)


def shapes_quality(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """training.metrics.digits_quality's scores for shapes: images (N, 3, 32, 32) in [0, 1] asked for kinds (N,):
    accuracy of the held-out classifier, the Frechet distance in its features to fresh images of the same kinds
    (`shapes_of`, never a training set's seeds) and the same distance between two such draws (frechet_data)."""
    from training.frechet import frechet_distance

    labels = np.asarray(labels).astype(np.int64)
    clf = shapes_classifier()
    base = 1_000_003 * (seed + 1)
    ref_a = clf.features(shapes_of(labels, seed=base))
    ref_b = clf.features(shapes_of(labels, seed=base + 1))
    return {
        "accuracy": clf.accuracy(images, labels),
        "frechet": frechet_distance(clf.features(images), ref_a),
        "frechet_data": frechet_distance(ref_b, ref_a),
        "classifier_test_accuracy": clf.test_accuracy,
    }


def grid(images: np.ndarray, labels: np.ndarray, path: str, per_class: int = 10) -> None:
    """A PNG of `per_class` images of each kind, one row per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(per_class, len(CLASSES) * 1.08))
    for c, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.axis("off")
            where = np.flatnonzero(labels == c)
            if j < len(where):
                ax.imshow(images[where[j]].transpose(1, 2, 0))
        row[0].set_title(CLASSES[c], fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from training.frechet import frechet_distance

    p = argparse.ArgumentParser(
        prog="python -m training.shapes",
        description="Draw the shapes image set: a grid of examples, and its data-against-data figures "
        "(the held-out classifier's accuracy, and the Frechet distance in its features between two fresh draws).",
    )
    p.add_argument("--grid", default="shapes.png", help="where to write the example grid (default shapes.png)")
    p.add_argument("--n", type=int, default=2000, help="images per draw for the figures (default 2000)")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error(f"--n must be >= 2, got {args.n}")
    x, y = shapes_raw(50, seed=0)
    grid(x, y, args.grid)
    clf = ShapesClassifier()
    a, ya = shapes_raw(args.n, seed=30_000)
    b, _ = shapes_raw(args.n, seed=30_001)
    figures = {
        "classifier_test_accuracy": clf.test_accuracy,
        "accuracy_on_a_fresh_draw": clf.accuracy(a, ya),
        "frechet_data_vs_data": frechet_distance(clf.features(a), clf.features(b)),
        "n": args.n,
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
