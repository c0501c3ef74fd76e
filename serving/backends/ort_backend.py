"""onnxruntime backend: runs the ONNX file that `python -m export --format onnx` recorded in the manifest.

Serving never imports `export`; it finds the file through the manifest (role "onnx", matching `weights`)
and `Checkpoint.file` re-verifies its sha256, so a tampered or stale file is refused at load.

Execution providers come from what is installed, best first: TensorRT, then CUDA (both only with the
`onnxruntime-gpu` wheel), then CPU. The CPU session is tuned for a small net called many times a second:
all graph optimizations (constant folding, LayerNorm / Gelu / MatMul+Add fusions), a fixed intra-op
thread count, and one inter-op thread because the graph is a single chain with nothing to overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from serving.backends.base import BackendUnavailable
from training.checkpoint import Checkpoint

try:
    import onnxruntime as ort
except ImportError as e:  # the registry turns a missing module into BackendUnavailable
    raise ModuleNotFoundError(f"onnxruntime is not installed ({e}); `pip install onnxruntime`") from e

from sampling.ort_session import session_options  # noqa: E402  (needs onnxruntime)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The providers to use, best first; `requested` (if given) must all be installed."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime: execution provider(s) {missing} not available here; installed: "
                f"{list(available)} (CUDA / TensorRT providers come with the onnxruntime-gpu wheel, "
                "see the `gpu` extra)"
            )
        return list(requested)
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    if not chosen:
        raise BackendUnavailable(f"onnxruntime: none of {list(PROVIDER_PREFERENCE)} is available ({available})")
    return chosen


def find_onnx_file(ckpt: Checkpoint, weights: str) -> str:
    """Name of the manifest's ONNX file exported from `weights`; a clear error if there is none."""
    names = [n for n in ckpt.files_with_role("onnx") if ckpt.manifest["files"][n].get("weights") == weights]
    if not names:
        raise BackendUnavailable(
            f"model {ckpt.name!r} has no ONNX export of its {weights} weights; run "
            f"`python -m export --checkpoint {ckpt.path} --format onnx --weights {weights}` first"
        )
    return sorted(names)[0]


class OrtBackend:
    """forward(x (B, *shape) f32, t (B,) f32, y (B,) i64) -> (B, *shape) f32 on the CPU, any B >= 1."""

    name = "onnxruntime"
    max_batch: int | None = None

    def __init__(
        self,
        checkpoint: Checkpoint,
        weights: str = "ema",
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimization_level: str = "all",
        trt_cache_dir: str | None = None,
    ) -> None:
        so = session_options(num_threads, optimization_level)  # refuses bad values before any file is read
        self.file_name = find_onnx_file(checkpoint, weights)
        path: Path = checkpoint.file(self.file_name)  # re-verifies the sha256 (CheckpointError if tampered)
        self.info: dict[str, Any] = checkpoint.manifest["files"][self.file_name]

        self.providers = choose_providers(providers, ort.get_available_providers())
        provider_options = [self._provider_options(p, trt_cache_dir) for p in self.providers]
        self.session = ort.InferenceSession(str(path), so, providers=self.providers, provider_options=provider_options)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["x", "t", "y"]:
            raise BackendUnavailable(f"{path}: graph inputs are {names}, expected ['x', 't', 'y']")
        self.output_name = self.session.get_outputs()[0].name
        self.num_threads = so.intra_op_num_threads
        # InferenceSession.run may be called from several threads; claimed for the CPU provider alone, the one
        # run here (GPU providers share a device stream: untested).
        self.concurrent_calls = self.providers == ["CPUExecutionProvider"]

    @staticmethod
    def _provider_options(provider: str, trt_cache_dir: str | None) -> dict[str, str]:
        if provider == "TensorrtExecutionProvider" and trt_cache_dir:
            # Without a cache the TensorRT EP rebuilds its engines on every process start (minutes).
            return {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": trt_cache_dir,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": trt_cache_dir,
            }
        return {}

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        feeds = {
            "x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
            "t": np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32),
            "y": np.ascontiguousarray(y.detach().cpu().numpy(), dtype=np.int64),
        }
        (out,) = self.session.run([self.output_name], feeds)
        return torch.from_numpy(out)

    __call__ = forward
