"""Backends run a model's net: forward(x, t, y) -> prediction, batch dimension dynamic.

`load_backend(kind, checkpoint, **options)` picks one by name. Implementations import their heavy
dependencies lazily so that a node without onnxruntime or TensorRT can still serve with torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from serving.backends.base import Backend, BackendUnavailable

# name -> "module:factory"; each factory is called as factory(checkpoint, **options).
_REGISTRY = {
    "torch": "serving.backends.torch_backend:TorchBackend",
    "onnxruntime": "serving.backends.ort_backend:OrtBackend",
    "tensorrt": "serving.backends.trt_backend:TensorRTBackend",
}
BACKENDS = tuple(_REGISTRY)


def load_backend(kind: str, checkpoint: Any, **options: Any) -> Backend:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backend {kind!r}; expected one of {list(BACKENDS)}")
    module, _, attr = _REGISTRY[kind].partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        raise BackendUnavailable(f"backend {kind!r} is not available here: {e}") from e
    return factory(checkpoint, **options)


__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "load_backend"]
