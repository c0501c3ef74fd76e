"""dpm-solver++, heun and fm-heun against independent references: diffusers' DPMSolverMultistepScheduler,
and the exact probability-flow / flow maps of Gaussian data (tests/oracles.py)."""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from sampling import samplers
from sampling.request import initial_noise
from sampling.samplers.spacing import solver_timesteps
from tests.oracles import GaussianDDPM, GaussianFM, gaussian_pf_map
from tests.sampling.helpers import evaluations, run
from training.paths import DDPMObjective, DDPMSchedule, FMObjective

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.6, 0.25], [0.25, 0.3]])
DIFFUSERS_TARGET = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def diffusers_dpm(schedule: DDPMSchedule, target: str, spacing: str, steps: int, noise, oracle):
    """diffusers' DPM-Solver++(2M) with its defaults for the final step (lower_order_final, final sigma 0)."""
    sch = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.numpy(),
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        prediction_type=DIFFUSERS_TARGET[target],
        timestep_spacing=spacing,
        lower_order_final=True,
        euler_at_final=False,
        final_sigmas_type="zero",
    )
    sch.set_timesteps(steps)
    x = noise.clone()
    for t in sch.timesteps:
        x = sch.step(oracle(x, t.float().expand(len(x)), None), t, x).prev_sample
    return sch.timesteps.numpy(), x


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("target", ["eps", "v", "x0"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_dpm_solver_pp_equals_diffusers(schedule_name, target, spacing):
    sched = DDPMSchedule.create(schedule_name)
    oracle = GaussianDDPM(MEAN, COV, sched, target)
    # cosine's alpha_bar at t = 999 is 2.4e-6, so x0 = (x - sigma eps) / alpha with alpha = 1.5e-3 cancels ~3
    # of float32's 7 digits: each implementation's round-off there differs by ~1e-3 for an eps net. The v and
    # x0 conversions (x0 = alpha x - sigma v) do not divide by alpha and meet 1e-4 on cosine too.
    tol = 2e-3 if (schedule_name, target) == ("cosine", "eps") else 1e-4
    for k in (5, 10, 20, 50):
        noise, ours = run("dpm-solver++", DDPMObjective(schedule_name, target), oracle, k, spacing=spacing)
        ts, theirs = diffusers_dpm(sched, target, spacing, k, noise, oracle)
        assert solver_timesteps(spacing, k).tolist() == ts.tolist()
        assert (ours - theirs).abs().max().item() < tol, (k, (ours - theirs).abs().max().item())


def fitted_order(ks, errs) -> float:
    """Least-squares slope of -log(error) against log(K): the measured order of convergence."""
    return float(-np.polyfit(np.log(ks), np.log(errs), 1)[0])


@pytest.mark.parametrize(
    "name, spacing, lo, hi, final",
    [
        ("dpm-solver++", "trailing", 1.7, 2.5, 0.01),
        ("dpm-solver++", "linspace", 1.7, 2.5, 0.01),
        # With trailing spacing heun's last (Euler) step starts at sigma(1000/K - 1), and on the linear schedule
        # sigma^2 grows like t near the data, so that step's O(sigma^2) error decays like 1/K: linspace ends at
        # t = 0 (sigma = 0.01) and shows the method's own order.
        ("heun", "linspace", 1.8, 2.4, 0.01),
        ("ddim", "linspace", 0.85, 1.15, 0.1),  # the first-order reference, measured the same way
    ],
)
def test_ddpm_solvers_converge_to_the_probability_flow_map_at_their_order(name, spacing, lo, hi, final):
    sched = DDPMSchedule.create("linear")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    ks = (10, 20, 40, 80)
    errs = []
    for k in ks:
        noise, x = run(name, DDPMObjective(), oracle, k, spacing=spacing)
        exact = gaussian_pf_map(MEAN, COV, noise, sched.alpha_bar[-1].item())
        errs.append((x - exact).norm(dim=1).max().item())
    assert lo < fitted_order(ks, errs) < hi, (errs, fitted_order(ks, errs))
    assert errs[-1] < final, errs


@pytest.mark.parametrize("path, ks", [("linear", (4, 8, 16, 32)), ("vp", (16, 32, 64))])
def test_fm_heun_converges_to_the_flow_map_at_order_2(path, ks):
    """On the vp path the field is stiff near the data end (sigma ~ sqrt(1 - t)): order 2 sets in later."""
    oracle = GaussianFM(MEAN, torch.diag(torch.tensor([0.2, 2.0])), path)
    obj = FMObjective(path)
    errs = []
    for k in ks:
        noise, x = run("fm-heun", obj, oracle, k)
        errs.append((x - oracle.flow_map(noise, obj.t_end)).norm(dim=1).max().item())
    assert 1.8 < fitted_order(ks, errs) < 2.4, (errs, fitted_order(ks, errs))


@pytest.mark.parametrize(
    "name, objective",
    [("dpm-solver++", DDPMObjective()), ("heun", DDPMObjective()), ("fm-heun", FMObjective())],
)
def test_evaluation_counts_and_times(name, objective):
    """heun: 2 evaluations a step except the last (2K - 1); dpm-solver++: one a step. The times asked are the
    sampler's grid: DDPM integer timesteps descending, FM times ascending in [0, 1)."""
    oracle = (
        GaussianFM(MEAN, COV)
        if objective.kind == "fm"
        else GaussianDDPM(MEAN, COV, DDPMSchedule.create("linear"), "eps")
    )
    for k in (1, 2, 7):
        noise, gen = initial_noise((2,), 4, 0)
        evs, x = evaluations(samplers.start(name, objective, noise, k, gen), oracle)
        assert len(evs) == samplers.SAMPLERS[name].nfe(k) == (k if name == "dpm-solver++" else 2 * k - 1)
        assert torch.isfinite(x).all()
        firsts = [ev.t[0].item() for ev in evs]
        if objective.kind == "ddpm":
            assert all(t == round(t) and 0 <= t <= 999 for t in firsts) and firsts[0] == 999
        else:
            assert firsts[0] == 0.0 and all(0 <= t < 1 for t in firsts)


def test_dpm_solver_timesteps_at_the_extremes():
    """K + 1 grid points must be distinct timesteps: K = 999 is the most linspace and leading allow."""
    for spacing in ("trailing", "linspace", "leading"):
        for k in (1, 2, 3, 998, 999):
            ts = solver_timesteps(spacing, k)
            assert len(ts) == k and np.all(np.diff(ts) < 0) and ts[-1] >= 0, (spacing, k)
    assert solver_timesteps("linspace", 1).tolist() == [999]
    with pytest.raises(ValueError, match="steps"):
        solver_timesteps("linspace", 1000)


def test_heun_one_step_is_euler_to_the_data():
    """K = 1: a single Euler step of the PF-ODE from sigma(999) to 0 lands on x0_hat = (x - s eps) / a."""
    sched = DDPMSchedule.create("linear")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    noise, x = run("heun", DDPMObjective(), oracle, 1, n=16)
    ab = sched.alpha_bar[-1]
    eps = oracle(noise, torch.full((16,), 999.0), None).double()
    expected = (noise.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
    assert torch.allclose(x.double(), expected, atol=1e-4 * math.sqrt(1 / ab.item()))
