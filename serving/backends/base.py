"""The backend interface."""

from __future__ import annotations

from typing import Protocol

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
