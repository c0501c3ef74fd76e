"""The flow-matching paths against closed forms; the VP path against the DDPM marginals it is built from."""

import pytest
import torch

from training.paths import DDPMSchedule, FMObjective, objective_from_dict, path_coefficients
from training.paths.fm_paths import VP_BETA_MAX, VP_BETA_MIN, VP_T_END

T64 = torch.float64


def vp_vs_ddpm_gap(num_timesteps: int) -> float:
    """Largest gap between DDPM's marginal q(x_i | x_0) = N(sqrt(ab_i) x_0, (1 - ab_i) I) for betas
    beta_i = beta(i / (T - 1)) / T (T = 1000: exactly Ho et al.'s 1e-4 .. 0.02) and the vp path's
    N(alpha_t x_1, sigma_t^2 I) at t = 1 - (i + 1) / T, over mean coefficient and standard deviation."""
    betas = torch.linspace(VP_BETA_MIN, VP_BETA_MAX, num_timesteps, dtype=T64) / num_timesteps
    ab = DDPMSchedule("vp-check", betas).alpha_bar
    t = 1 - torch.arange(1, num_timesteps + 1, dtype=T64) / num_timesteps
    c = path_coefficients("vp", t)
    return max((c.alpha - ab.sqrt()).abs().max().item(), (c.sigma - (1 - ab).sqrt()).abs().max().item())


def test_vp_path_is_the_continuous_limit_of_the_ddpm_linear_schedule():
    assert torch.allclose(
        torch.linspace(VP_BETA_MIN, VP_BETA_MAX, 1000, dtype=T64) / 1000,
        DDPMSchedule.create("linear").betas,
        atol=1e-15,
    )
    gaps = [vp_vs_ddpm_gap(n) for n in (1000, 10_000)]
    assert gaps[0] < 5e-3, gaps  # T = 1000: the project's DDPM models
    assert gaps[1] < gaps[0] / 8, gaps  # first order in 1 / T: the discrete chain converges to the path


@pytest.mark.parametrize("path", ["linear", "vp"])
def test_path_coefficients_are_consistent(path):
    t = torch.linspace(0.0, 0.99, 200, dtype=T64)
    c = path_coefficients(path, t)
    if path == "vp":  # variance preserving: alpha^2 + sigma^2 = 1
        assert torch.allclose(c.alpha**2 + c.sigma**2, torch.ones_like(t), atol=1e-12)
    h = 1e-6
    plus, minus = path_coefficients(path, t + h), path_coefficients(path, t - h)
    assert torch.allclose(c.d_alpha, (plus.alpha - minus.alpha) / (2 * h), rtol=1e-6, atol=1e-7)
    assert torch.allclose(c.d_sigma, (plus.sigma - minus.sigma) / (2 * h), rtol=1e-6, atol=1e-7)
    end = path_coefficients(path, torch.tensor([0.0, 1.0], dtype=T64))
    assert end.alpha[1] == 1 and end.sigma[1] == 0  # data at t = 1
    assert end.sigma[0] > 0.9999 and end.alpha[0] < 0.007  # (almost) pure noise at t = 0


def test_vp_stops_where_ddpm_starts():
    """t_end = 1 - 1/T: sigma there is DDPM's sqrt(beta_0) = 0.01 up to the continuum limit (the path integrates
    beta over [0, 1/T], where it grows from 0.1 to 0.12: sigma = sqrt(1.1e-4) = 0.0105)."""
    c = path_coefficients("vp", torch.tensor(VP_T_END, dtype=T64))
    assert c.sigma.item() == pytest.approx(0.01, rel=0.06)
    assert FMObjective("vp").t_end == VP_T_END and FMObjective().t_end == 1.0


@pytest.mark.parametrize("path", ["linear", "vp"])
def test_fm_loss_is_zero_for_the_exact_conditional_target(path):
    """With x1 a single point, x0 = (x_t - alpha x1) / sigma and the target alpha' x1 + sigma' x0 are exact."""
    x1 = torch.full((256, 2), 0.7)

    def exact(x_t, t, y):
        c = path_coefficients(path, t)
        x0 = (x_t - c.alpha[:, None] * x1) / c.sigma[:, None]
        return c.d_alpha[:, None] * x1 + c.d_sigma[:, None] * x0

    loss = FMObjective(path).loss(exact, x1, torch.zeros(256, dtype=torch.long), torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


def test_vp_objective_round_trips_and_unknown_paths_are_refused():
    assert objective_from_dict({"kind": "fm", "path": "vp"}) == FMObjective("vp")
    assert FMObjective("vp").to_dict() == {"kind": "fm", "path": "vp"}
    assert objective_from_dict({"kind": "fm"}) == FMObjective()
    with pytest.raises(ValueError, match="path"):
        objective_from_dict({"kind": "fm", "path": "ve"})
