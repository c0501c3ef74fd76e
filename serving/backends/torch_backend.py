"""Eager PyTorch backend (CPU here; CUDA where available, optionally compiled and CUDA-graphed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from serving.backends.base import BackendUnavailable
from training.checkpoint import Checkpoint


class TorchBackend:
    """forward(x (B, *shape), t (B,), y (B,)) -> (B, *shape) float32 on the CPU.

    GPU options (the CPU default is plain eager): `compile` wraps the net in torch.compile;
    `cuda_graphs` replays per-bucket CUDA graphs (serving.backends.cuda_graphs), `buckets` their batch sizes.
    """

    name = "torch"
    max_batch: int | None = None

    def __init__(
        self,
        checkpoint: Checkpoint,
        weights: str = "ema",
        device: str = "cpu",
        num_threads: int | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        buckets: Sequence[int] | None = None,
    ) -> None:
        if num_threads is not None:
            # Inside a Ray replica torch would otherwise follow OMP_NUM_THREADS that Ray sets from num_cpus;
            # the serve config sets this explicitly instead.
            torch.set_num_threads(num_threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch backend: device {device!r} asked for but CUDA is not available")
        if (cuda_graphs or buckets) and not device.startswith("cuda"):
            raise ValueError("torch backend: cuda_graphs and buckets need device='cuda'")
        self.device = torch.device(device)
        self.net = checkpoint.net(weights).to(self.device)
        # Eager inference on the CPU only reads the weights, so two threads may call it at once. Not claimed for
        # CUDA (one stream: calls queue behind each other; graphs replay shared buffers) or compiled code.
        self.concurrent_calls = self.device.type == "cpu" and not compile
        self._fn = torch.compile(self.net) if compile else self.net
        if cuda_graphs:
            from serving.backends.cuda_graphs import DEFAULT_BUCKETS, GraphedForward

            self._fn = GraphedForward(self._fn, checkpoint.data_shape, self.device, buckets or DEFAULT_BUCKETS)

    @torch.inference_mode()
    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        dev = self.device
        out = self._fn(x.to(dev, torch.float32), t.to(dev, torch.float32), y.to(dev, torch.long))
        return out.float().cpu()

    __call__ = forward
