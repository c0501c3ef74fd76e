"""The sampler protocol: every sampler is a generator.

A sampler yields the evaluation it needs, `Evaluation(x, t)`, receives the net's prediction for it
(same shape as x) through `send`, and finally returns the samples (as StopIteration.value). Whoever
drives it decides how the net runs: alone (`driver.run_sampler`) or batched with many other requests
(the serving engine). Guidance is not a sampler's business: the driver turns a guided request's
prediction into `uncond + w * (cond - uncond)` before sending it.

All samplers share one signature:
    sampler(objective, noise, steps, generator, **options) -> Generator[Evaluation, Tensor, Tensor]
with noise (B, *shape) the starting point (standard normal), and generator the request's own
torch.Generator for any fresh noise (so samples never depend on batch neighbours).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Evaluation:
    """One net evaluation a sampler asks for: x (B, *shape) float32, t (B,) float32 in net time."""

    x: Tensor
    t: Tensor


SamplerGen = Generator[Evaluation, Tensor, Tensor]
SamplerFn = Callable[..., SamplerGen]
# The net as samplers' drivers call it: x (B, *shape), t (B,), y (B,) long -> prediction (B, *shape).
Forward = Callable[[Tensor, Tensor, Tensor], Tensor]


def full_t(value: float, batch: int) -> Tensor:
    return torch.full((batch,), float(value), dtype=torch.float32)
