"""The progress wrapper: it changes nothing a sampler does, reports every evaluation with its step, and its data
estimate equals the closed-form posterior mean E[data | x_t] when the net is exact."""

from __future__ import annotations

import pytest
import torch

from sampling import samplers
from sampling.driver import run_sampler
from sampling.progress import Progress, data_estimate, with_progress
from sampling.request import initial_noise
from tests.oracles import GaussianDDPM, GaussianFM
from training.paths import DDPMObjective, DDPMSchedule, FMObjective, path_coefficients

MEAN = torch.tensor([1.5, -0.5])
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]])


def posterior_mean(x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E[data | x] for data ~ N(MEAN, COV) and x = a data + s z (a, s (B,)):
    MEAN + a COV (a^2 COV + s^2 I)^-1 (x - a MEAN), with the explicit 2 x 2 inverse (not the oracles' solve)."""
    m, c = MEAN.double(), COV.double()
    out = []
    for xi, ai, si in zip(x.double(), a.double(), s.double(), strict=True):
        S = ai**2 * c + si**2 * torch.eye(2, dtype=torch.float64)
        det = S[0, 0] * S[1, 1] - S[0, 1] * S[1, 0]
        inv = torch.stack([torch.stack([S[1, 1], -S[0, 1]]), torch.stack([-S[1, 0], S[0, 0]])]) / det
        out.append(m + ai * c @ inv @ (xi - ai * m))
    return torch.stack(out)


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
def test_ddpm_data_estimate_is_the_posterior_mean(target: str) -> None:
    objective = DDPMObjective("linear", target)
    sched = DDPMSchedule.create("linear")
    t = torch.tensor([0.0, 10.0, 250.0, 600.0, 999.0])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)) * 1.3
    pred = GaussianDDPM(MEAN, COV, sched, target)(x, t, torch.zeros(5, dtype=torch.long))
    ab = sched.alpha_bar_at(t.long())
    expected = posterior_mean(x, ab.sqrt(), (1 - ab).sqrt())
    # The exact denoiser's x0 comes back through eps or v up to float32 round-off, amplified by 1 / sqrt(ab).
    tol = 2e-2 if target == "eps" else 1e-4
    torch.testing.assert_close(data_estimate(objective, x, t, pred).double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("path", ["linear", "vp"])
def test_fm_data_estimate_is_the_posterior_mean(path: str) -> None:
    objective = FMObjective(path)
    t = torch.tensor([0.0, 0.2, 0.5, 0.8, 0.99])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    v = GaussianFM(MEAN, COV, path)(x, t, torch.zeros(5, dtype=torch.long))
    c = path_coefficients(path, t.double())
    expected = posterior_mean(x, c.alpha, c.sigma)
    torch.testing.assert_close(data_estimate(objective, x, t, v).double(), expected, atol=1e-4, rtol=1e-4)
    if path == "linear":  # the rectified-flow form x1 = x + (1 - t) v
        torch.testing.assert_close(data_estimate(objective, x, t, v), x + (1 - t)[:, None] * v)


@pytest.mark.parametrize(
    ("name", "objective", "steps", "evaluations"),
    [
        ("fm-euler", FMObjective(), 7, 7),
        ("fm-rk4", FMObjective(), 3, 12),
        ("fm-heun", FMObjective(), 4, 7),
        ("ddim", DDPMObjective(), 6, 6),
    ],
)
def test_progress_reports_every_evaluation_and_changes_nothing(name, objective, steps, evaluations) -> None:
    oracle = GaussianFM(MEAN, COV) if objective.kind == "fm" else GaussianDDPM(MEAN, COV, objective.schedule)
    y = torch.zeros(16, dtype=torch.long)

    def start():
        noise, gen = initial_noise((2,), 16, 3)
        return samplers.start(name, objective, noise, steps, gen)

    events: list[Progress] = []
    plain = run_sampler(start(), oracle, y)
    tracked = run_sampler(with_progress(start(), objective, name, steps, events.append, preview_every=2), oracle, y)
    assert torch.equal(plain, tracked)
    assert [e.evaluation for e in events] == list(range(1, evaluations + 1))
    assert events[-1].step == steps and [e.step for e in events] == sorted(e.step for e in events)
    previewed = [e.step for e in events if e.preview is not None]
    assert previewed == list(range(2, steps + 1, 2))  # once a step, on its first evaluation
    assert all(e.preview.shape == plain.shape for e in events if e.preview is not None)
