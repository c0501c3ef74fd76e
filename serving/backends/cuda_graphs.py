"""CUDA-graph replay of a net's forward with batch-size buckets (GPU only).

A small net at small batch spends most of its time launching kernels (tens of launches, a few µs of
work each). A CUDA graph records the launches once and replays them with one call. A graph has fixed
shapes, so one is captured per bucket (1, 2, 4, ... 512 rows by default) and a batch of B rows runs in
the smallest bucket >= B: its rows are copied into the bucket's static input, the graph is replayed and
the first B output rows are copied out. Rows beyond B hold whatever the last call left; they cannot
change the first B rows because every op in these nets is row-wise (LayerNorm per token, attention
within one sample), and their outputs are dropped. Batches above the largest bucket run in chunks.

`fn` may be the eager net or `torch.compile(net)`; compiled code is compiled during the warm-up runs
that precede each capture, never during capture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WARMUP_RUNS = 3  # on a side stream before capture: cuBLAS / cuDNN workspaces, autotuning, compilation


def validate_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated positive integers."""
    if not buckets:
        raise ValueError("buckets must name at least one batch size")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"buckets must be positive integers, got {b!r}")
    return tuple(sorted(set(buckets)))


def bucket_for(batch: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= batch (buckets sorted), or None if batch exceeds them all."""
    return next((b for b in buckets if b >= batch), None)


def chunks(batch: int, largest: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most `largest` rows covering `batch` rows."""
    return [(i, min(i + largest, batch)) for i in range(0, batch, largest)]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: Tensor
    t: Tensor
    y: Tensor
    out: Tensor


class GraphedForward:
    """forward(x (B, *shape), t (B,), y (B,)) on `device`, replayed from per-bucket CUDA graphs."""

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor, Tensor], Tensor],
        data_shape: tuple[int, ...],
        device: torch.device,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.fn = fn
        self.data_shape = tuple(data_shape)
        self.device = device
        self.buckets = validate_buckets(buckets)
        self._graphs: dict[int, _Captured] = {}
        for b in self.buckets:  # capture up front: a capture inside a serving tick would stall it
            self._graphs[b] = self._capture(b)

    @torch.inference_mode()
    def _capture(self, batch: int) -> _Captured:
        x = torch.zeros((batch, *self.data_shape), device=self.device)
        t = torch.zeros((batch,), device=self.device)
        y = torch.zeros((batch,), dtype=torch.long, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.fn(x, t, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(x, t, y)
        return _Captured(graph, x, t, y, out)

    @torch.inference_mode()
    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        batch = x.shape[0]
        if batch > self.buckets[-1]:
            parts = [self(x[a:b], t[a:b], y[a:b]) for a, b in chunks(batch, self.buckets[-1])]
            return torch.cat(parts)
        bucket = bucket_for(batch, self.buckets)
        assert bucket is not None  # batch <= largest bucket
        g = self._graphs[bucket]
        g.x[:batch].copy_(x)
        g.t[:batch].copy_(t)
        g.y[:batch].copy_(y)
        g.graph.replay()
        # The static output is overwritten by the next replay: hand back a copy.
        return g.out[:batch].clone()
