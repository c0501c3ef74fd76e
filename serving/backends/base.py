"""The backend interface."""

from __future__ import annotations

import time
from typing import Protocol

import torch
from torch import Tensor


class BackendUnavailable(RuntimeError):
    """The backend's runtime (onnxruntime, TensorRT, CUDA) or its compiled file is not available."""


class Backend(Protocol):
    """x: (B, *shape) float32, t: (B,) float32, y: (B,) int64 -> (B, *shape) float32, on the CPU."""

    name: str
    max_batch: int | None  # largest batch the backend accepts in one call (None: unbounded)
    # Whether forward may run in two threads at once (the engine's express lane); absent means no.
    concurrent_calls: bool

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...


def forward_in_chunks(backend: Backend, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """One backend call, or several in a row when the batch exceeds the backend's `max_batch` (a TensorRT
    profile's maximum); rows are independent, so the result is the same."""
    max_batch = backend.max_batch
    if not max_batch or x.shape[0] <= max_batch:
        return backend(x, t, y)
    outs = [
        backend(x[i : i + max_batch], t[i : i + max_batch], y[i : i + max_batch])
        for i in range(0, x.shape[0], max_batch)
    ]
    return torch.cat(outs)


def timed_forward(backend: Backend, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, float]:
    """`forward_in_chunks` and the seconds it took, timed in the thread it runs on."""
    start = time.perf_counter()
    out = forward_in_chunks(backend, x, t, y)
    return out, time.perf_counter() - start
