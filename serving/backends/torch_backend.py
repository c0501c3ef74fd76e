"""Eager PyTorch backend (CPU here; CUDA where available)."""

from __future__ import annotations

import torch
from torch import Tensor

from training.checkpoint import Checkpoint


class TorchBackend:
    name = "torch"
    max_batch: int | None = None

    def __init__(
        self, checkpoint: Checkpoint, weights: str = "ema", device: str = "cpu", num_threads: int | None = None
    ) -> None:
        if num_threads is not None:
            # Inside a Ray replica torch would otherwise follow OMP_NUM_THREADS that Ray sets from num_cpus;
            # the serve config sets this explicitly instead.
            torch.set_num_threads(num_threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            from serving.backends.base import BackendUnavailable

            raise BackendUnavailable(f"torch backend: device {device!r} asked for but CUDA is not available")
        self.device = torch.device(device)
        self.net = checkpoint.net(weights).to(self.device)

    @torch.inference_mode()
    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        dev = self.device
        out = self.net(x.to(dev, torch.float32), t.to(dev, torch.float32), y.to(dev, torch.long))
        return out.float().cpu()

    __call__ = forward
