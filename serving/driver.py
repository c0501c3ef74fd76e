"""Run one sampler alone against a net: the three-line driver of the generator protocol."""

from __future__ import annotations

import torch
from torch import Tensor

from serving.guidance import Forward, guided_forward
from serving.samplers import SamplerGen


@torch.no_grad()
def run_sampler(
    gen: SamplerGen, forward: Forward, y: Tensor, guidance: float | None = None, null_label: int = 0
) -> Tensor:
    """Drive `gen` to completion, answering each Evaluation with forward (guided if `guidance`)."""
    try:
        ev = next(gen)
        while True:
            ev = gen.send(guided_forward(forward, ev.x, ev.t, y, guidance, null_label))
    except StopIteration as stop:
        return stop.value
