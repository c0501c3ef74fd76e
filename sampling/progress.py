"""A sampler's progress as it runs: a generator wrapper that reports each net evaluation, and the data
estimate x0_hat(x, t, prediction) for a preview of where the sample is heading.

The wrapper forwards every `Evaluation` and prediction unchanged, so whoever drives the sampler (the engine,
or `driver.run_sampler`) sees no difference; after each prediction it calls `report(Progress)`. Every
`preview_every` steps (on a step's first evaluation, whose x is the step's starting point) the report
carries the data estimate in the net's normalized space:

    DDPM: x0_hat from the net's eps / v / x0 prediction at alpha_bar_t (`training.paths.to_eps_x0`);
    FM:   x1_hat = (sigma v - sigma' x_t) / (sigma alpha' - sigma' alpha), x_t + (1 - t) v on the linear path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sampling.samplers import SAMPLERS, SamplerGen
from training.paths import DDPMObjective, Objective, to_eps_x0, velocity_to_data


@dataclass(frozen=True)
class Progress:
    """After `evaluation` net evaluations (1-based) of a request: the sampler is in step `step` of `steps`;
    preview: the data estimate (B, *shape) in the net's normalized space, or None between previews."""

    evaluation: int
    step: int
    steps: int
    preview: Tensor | None = None


def data_estimate(objective: Objective, x: Tensor, t: Tensor, prediction: Tensor) -> Tensor:
    """The net's estimate of the clean data from its prediction at (x (B, *shape), t (B,)) in net time."""
    if isinstance(objective, DDPMObjective):
        ab = objective.schedule.alpha_bar_at(t.round().long()).to(x.dtype)
        return to_eps_x0(x, prediction, ab.reshape(-1, *([1] * (x.dim() - 1))), objective.target)[1]
    return velocity_to_data(objective.path, x, t, prediction)


def with_progress(
    gen: SamplerGen,
    objective: Objective,
    sampler: str,
    steps: int,
    report: Callable[[Progress], None],
    preview_every: int | None = None,
) -> SamplerGen:
    """`gen` (sampler `sampler`, K = `steps`) unchanged, calling `report` after each prediction it receives.

    The step of an evaluation is counted from the sampler's evaluations per step (fm-rk4: 4; heun: 2, the last
    step 1); for the adaptive fm-dopri5 it counts attempted Dormand-Prince steps, capped at K."""
    per_step = SAMPLERS[sampler].evals_per_step
    evaluation = 0
    try:
        ev = next(gen)
        while True:
            prediction = yield ev
            evaluation += 1
            first_of_step = (evaluation - 1) % per_step == 0
            step = min(steps, (evaluation - 1) // per_step + 1)
            preview = None
            if preview_every and first_of_step and step % preview_every == 0:
                with torch.no_grad():
                    preview = data_estimate(objective, ev.x, ev.t, prediction)
            report(Progress(evaluation, step, steps, preview))
            ev = gen.send(prediction)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()
