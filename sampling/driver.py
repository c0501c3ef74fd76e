"""Run one sampler alone against a net: the three-line driver of the generator protocol."""

from __future__ import annotations

import torch
from torch import Tensor

from sampling.guidance import guided_forward
from sampling.request import SampleSpec, prepare
from sampling.samplers import Forward, SamplerGen
from training.checkpoint import Checkpoint


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


def sample(ckpt: Checkpoint, forward: Forward, spec: SampleSpec) -> Tensor:
    """Samples (N, *shape) in the net's normalized space for a validated `spec`, in this process."""
    p = prepare(ckpt, spec)
    return run_sampler(p.sampler, forward, p.labels, spec.guidance, ckpt.null_label)
