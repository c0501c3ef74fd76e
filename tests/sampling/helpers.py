"""Drive sampler generators against closed-form nets, alone or batched together as the engine batches them."""

from __future__ import annotations

import torch
from torch import Tensor

from sampling import samplers
from sampling.driver import run_sampler
from sampling.request import initial_noise
from sampling.samplers import Evaluation, Forward, SamplerGen
from training.paths import Objective


def run(name: str, objective: Objective, net: Forward, steps: int, n: int = 256, seed: int = 0, **options):
    """(noise (n, 2), samples (n, 2)) of sampler `name` driven alone."""
    noise, gen = initial_noise((2,), n, seed)
    it = samplers.start(name, objective, noise, steps, gen, **options)
    return noise, run_sampler(it, net, torch.zeros(n, dtype=torch.long))


def evaluations(gen: SamplerGen, net: Forward) -> tuple[list[Evaluation], Tensor]:
    """Drive `gen` alone; (every evaluation it asked for, its samples)."""
    evs = []
    try:
        ev = next(gen)
        while True:
            evs.append(ev)
            ev = gen.send(net(ev.x, ev.t, torch.zeros(len(ev.x), dtype=torch.long)))
    except StopIteration as stop:
        return evs, stop.value


def run_batched(gens: list[SamplerGen], net: Forward) -> list[Tensor]:
    """Step-level batching as the serving engine does it: each tick, the pending evaluation of every unfinished
    generator goes into ONE net call on the concatenated rows; outputs are split back. Generators finish at
    different ticks (different NFE) and leave at once. Returns each generator's samples."""
    pending = {i: next(g) for i, g in enumerate(gens)}
    out: dict[int, Tensor] = {}
    while pending:
        order = list(pending)
        x = torch.cat([pending[i].x for i in order])
        t = torch.cat([pending[i].t for i in order])
        preds = net(x, t, torch.zeros(len(x), dtype=torch.long)).split([len(pending[i].x) for i in order])
        for i, pred in zip(order, preds, strict=True):
            try:
                pending[i] = gens[i].send(pred)
            except StopIteration as stop:
                out[i] = stop.value
                del pending[i]
    return [out[i] for i in range(len(gens))]
