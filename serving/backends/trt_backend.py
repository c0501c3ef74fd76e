"""TensorRT backend: runs the engine (.plan) that `python -m export --format tensorrt` recorded.

Written against TensorRT's documented 10.x / 11.x Python runtime API (`Runtime.deserialize_cuda_engine`,
`create_execution_context`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`), with torch CUDA
tensors as the device buffers, so no pycuda is needed. It needs an NVIDIA GPU and the `tensorrt` wheel;
where either is missing, construction raises BackendUnavailable saying which. The GPU path has not been
run in this repository's CI (docs/export.md says what has).

An engine accepts batches within its optimization profile only (recorded in the manifest); `max_batch`
tells the serving engine to split larger ticks.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor

from serving.backends.base import BackendUnavailable
from training.checkpoint import Checkpoint


def find_plan_file(ckpt: Checkpoint, weights: str, fp16: bool | None) -> str:
    """The manifest's engine for `weights` (and precision, if given); a clear error if there is none."""
    files = ckpt.manifest["files"]
    names = [
        n
        for n in ckpt.files_with_role("tensorrt")
        if files[n].get("weights") == weights and (fp16 is None or bool(files[n].get("fp16")) == fp16)
    ]
    if not names:
        flag = " --fp16" if fp16 else ""
        raise BackendUnavailable(
            f"model {ckpt.name!r} has no TensorRT engine of its {weights} weights; on the GPU node run "
            f"`python -m export --checkpoint {ckpt.path} --format tensorrt --weights {weights}{flag}`"
        )
    return sorted(names)[0]


def check_batch(profile: dict[str, int], batch: int) -> None:
    """Refuse a batch outside the engine's optimization profile [min, max]."""
    if not profile["min"] <= batch <= profile["max"]:
        raise ValueError(
            f"batch {batch} is outside the TensorRT engine's profile [{profile['min']}, {profile['max']}]; "
            "rebuild with a wider --min-batch / --max-batch or lower the serving engine's rows per tick"
        )


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(
            f"tensorrt backend: TensorRT is not installed ({e}); GPU nodes install the `gpu` extra"
        ) from e
    return trt


class TensorRTBackend:
    """forward(x (B, *shape) f32, t (B,) f32, y (B,) i64) -> (B, *shape) f32 on the CPU, min <= B <= max."""

    name = "tensorrt"
    concurrent_calls = False  # one execution context and stream: calls must not overlap (no express lane)

    def __init__(
        self, checkpoint: Checkpoint, weights: str = "ema", fp16: bool | None = None, device: str = "cuda"
    ) -> None:
        self.file_name = find_plan_file(checkpoint, weights, fp16)
        self.info: dict[str, Any] = checkpoint.manifest["files"][self.file_name]
        self.profile: dict[str, int] = self.info["profile"]
        self.max_batch: int | None = int(self.profile["max"])
        self.min_batch = int(self.profile["min"])
        trt = _import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt backend: no CUDA GPU is visible")
        if self.info.get("tensorrt") != trt.__version__:
            # Plans are tied to the TensorRT version (and GPU) that built them.
            raise BackendUnavailable(
                f"{self.file_name} was built by TensorRT {self.info.get('tensorrt')}, this is "
                f"{trt.__version__}; rebuild it with `python -m export --format tensorrt`"
            )
        path = checkpoint.file(self.file_name)  # re-verifies the sha256
        self.device = torch.device(device)
        self.data_shape = checkpoint.data_shape
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"TensorRT could not deserialize {path} (another GPU model?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if sorted(self.inputs) != ["t", "x", "y"] or len(self.outputs) != 1:
            raise BackendUnavailable(f"{path}: engine I/O is {names}, expected inputs x, t, y and one output")
        # One execution context holds the shapes and addresses of one call at a time.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        batch = x.shape[0]
        check_batch(self.profile, batch)
        dev = self.device
        feeds = {
            "x": x.to(dev, torch.float32).contiguous(),
            "t": t.to(dev, torch.float32).contiguous(),
            "y": y.to(dev, torch.int64).contiguous(),
        }
        out = torch.empty((batch, *self.data_shape), dtype=torch.float32, device=dev)
        stream = torch.cuda.current_stream(dev)
        with self._lock:
            for name, tensor in feeds.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            self.context.set_tensor_address(self.outputs[0], out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            stream.synchronize()
        return out.cpu()

    __call__ = forward
