"""Quality against K over HTTP: fetch samples for each sampler and K, score them with training.metrics.

moons models: sliced-Wasserstein ratio to fresh data (1.0 = as close as another data draw).
digits and shapes models (shapes: latent models, decoded by the server): class-conditional samples (labels
cycled over the classes) scored by that data's held-out classifier (training.metrics / training.shapes):
accuracy of the requested label and Frechet distance in its feature space.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtests.client import LoadTestError
from stepserve_client import Client, StepserveError, sample_body
from training import metrics

CLASS_KINDS = ("digits", "shapes")  # scored per requested class by a classifier of that data


def max_samples_per_request(info: dict[str, Any], default: int = 256) -> int:
    """The model's `limits.max_num_samples` from GET /v1/models/{id}."""
    value = (info.get("limits") or {}).get("max_num_samples")
    return value if isinstance(value, int) and value > 0 else default


def fetch_samples(
    url: str,
    model: str,
    sampler: str,
    steps: int,
    n: int,
    per_request: int,
    guidance: float | None = None,
    class_labels: list[int] | None = None,
    seed: int = 0,
    timeout: float = 300.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """n samples (n, *shape) in data space and their requested labels (n,) or None, fetched in chunks of
    at most per_request; class-conditional chunks ask for one label each, cycling over class_labels."""
    out, labels = [], []
    with Client(url, timeout=timeout) as client:  # a 503 is retried: only the samples matter here
        i = 0
        while sum(len(x) for x in out) < n:
            size = min(per_request, n - sum(len(x) for x in out))
            label = class_labels[i % len(class_labels)] if class_labels else None
            # chunks must not repeat each other's noise: each its own seed
            body = sample_body(model, sampler, steps, size, guidance, label, seed=seed + 7919 * i)
            try:
                out.append(client.submit(body).samples)
            except StepserveError as e:
                raise LoadTestError(f"quality samples for {sampler} K={steps}: {e}") from None
            if label is not None:
                labels.append(np.full(len(out[-1]), label, dtype=np.int64))
            i += 1
    return np.concatenate(out), (np.concatenate(labels) if labels else None)


def score(kind: str, samples: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Quality of samples of a `kind` ("moons" / "digits" / "shapes") model; see the module docstring."""
    if kind == "moons":
        return {"sw_ratio": metrics.sw_ratio(samples, n=len(samples))}
    if kind in CLASS_KINDS:
        if labels is None:
            raise LoadTestError(f"{kind} quality needs class-conditional samples (the model reports no classes)")
        if kind == "shapes":
            from training.shapes import shapes_quality  # its classifier trains on first use (a few seconds)

            return shapes_quality(samples, labels)
        return metrics.digits_quality(samples, labels)
    raise LoadTestError(f"no quality metric for data kind {kind!r}")


def data_kind(info: dict[str, Any]) -> str:
    """'moons', 'digits' or 'shapes': the `data_kind` of GET /v1/models/{id}."""
    kind = info.get("data_kind")
    if kind in ("moons", *CLASS_KINDS):
        return kind
    raise LoadTestError(f"no quality metric for data kind {kind!r} (GET /v1/models/{{id}} data_kind)")


def primary_metric(kind: str) -> str:
    return "sw_ratio" if kind == "moons" else "frechet"


def quality_sweep(
    url: str,
    model: str,
    info: dict[str, Any],
    samplers: list[str],
    steps: list[int],
    cells: list[dict[str, Any]],
    n: int,
    guidances: list[float | None],
    classes: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per guidance w, sampler and K: quality metrics plus that (sampler, K) cell's p50 / p95
    latency and NFE at the sweep's lowest load (cells were measured at the sweep's own guidance)."""
    kind = data_kind(info)
    per_request = max_samples_per_request(info)
    lowest = min(c["load"] for c in cells) if cells else None
    rows = []
    for w in guidances:
        # Digits and shapes are scored per requested class, and guidance needs a class: then chunks carry one
        # label each, cycling over the classes, sized so that every class gets the same number of samples.
        labels = list(range(classes)) if classes and (kind in CLASS_KINDS or w is not None) else None
        size = max(1, min(per_request, n // len(labels))) if labels else per_request
        for sampler in samplers:
            for k in steps:
                x, y = fetch_samples(url, model, sampler, k, n, size, w, labels, seed)
                row: dict[str, Any] = {"sampler": sampler, "steps": k, "kind": kind, "n": len(x), "guidance": w}
                row.update(score(kind, x, y))
                cell = next((c for c in cells if (c["sampler"], c["steps"], c["load"]) == (sampler, k, lowest)), None)
                row["latency_p50_s"] = cell["latency_s"]["p50"] if cell else None
                row["latency_p95_s"] = cell["latency_s"]["p95"] if cell else None
                row["nfe"] = cell["nfe"] if cell else None
                rows.append(row)
    return rows
