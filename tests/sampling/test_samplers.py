"""Samplers against closed forms: no training involved (oracles in tests/oracles.py)."""

import math

import numpy as np
import pytest
import torch

from sampling import samplers
from sampling.driver import run_sampler
from sampling.guidance import labels
from sampling.request import InvalidRequest, Limits, SampleSpec, initial_noise, validate
from sampling.samplers.spacing import timesteps
from tests.oracles import (
    ClassGaussiansFM,
    FinitePointsDDPM,
    FinitePointsFM,
    GaussianDDPM,
    GaussianFM,
    gaussian_pf_map,
)
from training.paths import DDPMObjective, DDPMSchedule, FMObjective

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[0.6, 0.25], [0.25, 0.3]])
POINTS = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2], [0.6, 1.4]])


def _run(name, objective, oracle, steps, n=512, seed=0, **options):
    noise, gen = initial_noise((2,), n, seed)
    gen_ = samplers.start(name, objective, noise, steps, gen, **options)
    return noise, run_sampler(gen_, oracle, torch.zeros(n, dtype=torch.long))


# Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Table 2, T = 1000, K = 10;
# the spacings diffusers implements in DDIMScheduler.set_timesteps.
@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_timestep_spacings_match_diffusers(spacing, expected):
    assert timesteps(spacing, 10).tolist() == expected


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_every_step_count_gives_k_distinct_descending_timesteps(spacing):
    for k in range(1, 1001):
        ts = timesteps(spacing, k)
        assert len(ts) == k and ts[0] <= 999 and ts[-1] >= 0, (k, ts[:3], ts[-3:])
        assert np.all(np.diff(ts) < 0), k


def test_spacings_at_other_step_counts():
    assert timesteps("trailing", 1).tolist() == [999]
    assert timesteps("leading", 3).tolist() == [666, 333, 0]
    assert timesteps("trailing", 3).tolist() == [999, 666, 332]
    assert len(set(timesteps("trailing", 1000).tolist())) == 1000
    with pytest.raises(ValueError, match="steps"):
        timesteps("trailing", 0)
    with pytest.raises(ValueError, match="spacing"):
        timesteps("uniform", 10)


def test_fm_euler_converges_at_order_1_and_rk4_at_order_4():
    """Gaussian data: the velocity is affine in x and the exact flow map is x1 = m + C^(1/2) z."""
    cov = torch.diag(torch.tensor([0.2, 2.0]))  # anisotropic: the field changes along the path
    oracle = GaussianFM(MEAN, cov)
    noise, _ = initial_noise((2,), 256, 0)
    exact = oracle.flow_map(noise)

    def err(name, k):
        _, x = _run(name, FMObjective(), oracle, k, n=256)
        return (x - exact).norm(dim=1).max().item()

    e_euler = [err("fm-euler", k) for k in (8, 16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(e_euler, e_euler[1:], strict=False)]
    assert all(0.85 < p < 1.15 for p in orders), (e_euler, orders)
    e_rk4 = [err("fm-rk4", k) for k in (4, 8, 16)]  # past K = 16 float32 round-off dominates
    orders = [math.log2(a / b) for a, b in zip(e_rk4, e_rk4[1:], strict=False)]
    assert all(3.6 < p < 4.8 for p in orders), (e_rk4, orders)


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
def test_ddim_eta0_converges_to_the_probability_flow_map(target):
    """DDIM at eta = 0 discretises the probability-flow ODE, whose exact map for Gaussian data is linear."""
    obj = DDPMObjective("linear", target)
    sched = DDPMSchedule.create("linear")
    oracle = GaussianDDPM(MEAN, COV, sched, target)
    errs = []
    for k in (5, 20, 100):
        noise, x = _run("ddim", obj, oracle, k, n=256)
        exact = gaussian_pf_map(MEAN, COV, noise, sched.alpha_bar[-1].item())
        errs.append((x - exact).norm(dim=1).mean().item())
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.02, errs


@pytest.mark.parametrize(
    "name, objective, oracle",
    [
        ("ddim", DDPMObjective("cosine", "eps"), FinitePointsDDPM(POINTS, DDPMSchedule.create("cosine"))),
        ("fm-rk4", FMObjective(), FinitePointsFM(POINTS)),
    ],
)
def test_finite_set_samplers_land_on_the_points_evenly(name, objective, oracle):
    """The exact denoiser of a finite set: as K grows samples collapse onto the points, each point
    chosen with probability 1/4."""
    dists = []
    for k in (3, 50):
        _, x = _run(name, objective, oracle, k, n=2000)
        d = torch.cdist(x.double(), POINTS.double())
        dists.append(d.min(dim=1).values.median().item())
    assert dists[1] < 0.02 and dists[0] > 3 * dists[1], dists
    counts = np.bincount(d.argmin(dim=1).numpy(), minlength=4)
    chi2 = (((counts - 500) ** 2) / 500).sum()
    assert chi2 < 16.3, counts  # chi-square, 3 dof, p = 0.001


def test_ddpm_with_many_steps_matches_mean_and_covariance():
    sched = DDPMSchedule.create("linear")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    _, x = _run("ddpm", DDPMObjective("linear", "eps"), oracle, 1000, n=8000)
    x = x.double()
    assert torch.allclose(x.mean(0), MEAN.double(), atol=0.04), x.mean(0)
    assert torch.allclose(torch.cov(x.T), COV.double(), atol=0.05), torch.cov(x.T)


def test_ddpm_step_is_ho_et_al_algorithm_2():
    """With K = T, one step is x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z."""
    sched = DDPMSchedule.create("linear")
    obj = DDPMObjective("linear", "eps")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    noise, gen = initial_noise((2,), 64, 7)
    ref_gen = torch.Generator().set_state(gen.get_state())
    it = samplers.start("ddpm", obj, noise, 1000, gen)
    ev = next(it)
    x = noise.double()
    for t in (999, 998, 997):
        assert ev.t[0].item() == t
        eps = oracle(ev.x, ev.t, None)
        beta, ab = sched.betas[t].item(), sched.alpha_bar[t].item()
        x = (x - beta / math.sqrt(1 - ab) * eps.double()) / math.sqrt(1 - beta)
        x = x + math.sqrt(beta) * torch.randn(x.shape, generator=ref_gen).double()
        ev = it.send(eps)
        assert torch.allclose(ev.x.double(), x, atol=1e-5)


def test_cfg_at_w1_is_conditional_and_at_w0_unconditional():
    means = torch.tensor([[2.0, 0.0], [-2.0, 1.0]])
    oracle = ClassGaussiansFM(means, null_mean=torch.tensor([0.0, 0.5]))
    null = oracle.null_label

    def run(class_label, guidance):
        noise, gen = initial_noise((2,), 300, 3)
        it = samplers.start("fm-rk4", FMObjective(), noise, 8, gen)
        return run_sampler(it, oracle, labels(300, class_label, null), guidance, null)

    cond, uncond = run(1, None), run(None, None)
    assert torch.allclose(run(1, 1.0), cond, atol=1e-6)
    assert torch.allclose(run(1, 0.0), uncond, atol=1e-6)
    assert (cond - uncond).abs().max() > 1.0  # the two really differ
    # w = 3 pushes beyond the class: its sample mean lies past the conditional mean, away from the null one
    strong = run(1, 3.0).mean(0)
    assert (strong - cond.mean(0)) @ (cond.mean(0) - uncond.mean(0)) > 0


def test_same_seed_same_samples_and_ddim_eta0_is_deterministic():
    sched = DDPMSchedule.create("linear")
    obj = DDPMObjective("linear", "eps")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    _, a = _run("ddpm", obj, oracle, 20, seed=11)
    _, b = _run("ddpm", obj, oracle, 20, seed=11)
    _, c = _run("ddpm", obj, oracle, 20, seed=12)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    noise, _ = initial_noise((2,), 64, 5)
    outs = []
    for gen_seed in (1, 2):  # eta = 0 never draws from the generator: only the starting noise matters
        it = samplers.start("ddim", obj, noise, 10, torch.Generator().manual_seed(gen_seed), eta=0.0)
        outs.append(run_sampler(it, oracle, torch.zeros(64, dtype=torch.long)))
    assert torch.equal(outs[0], outs[1])
    its = [samplers.start("ddim", obj, noise, 10, torch.Generator().manual_seed(s), eta=1.0) for s in (1, 2)]
    stoch = [run_sampler(it, oracle, torch.zeros(64, dtype=torch.long)) for it in its]
    assert not torch.allclose(stoch[0], stoch[1])


@pytest.mark.parametrize(
    "name, objective, per_step",
    [
        ("ddpm", DDPMObjective(), 1),
        ("ddim", DDPMObjective(), 1),
        ("fm-euler", FMObjective(), 1),
        ("fm-rk4", FMObjective(), 4),
    ],
)
def test_evaluations_per_step(name, objective, per_step):
    noise, gen = initial_noise((2,), 4, 0)
    it = samplers.start(name, objective, noise, 7, gen)
    calls = 0
    try:
        ev = next(it)
        while True:
            calls += 1
            ev = it.send(torch.zeros_like(ev.x))
    except StopIteration:
        pass
    assert calls == 7 * per_step == 7 * samplers.SAMPLERS[name].evals_per_step


def test_sampler_objective_mismatch_and_bad_options_are_refused():
    def check(name, objective, **options):
        validate(SampleSpec(name, 5, 4, **options), objective, 2, Limits())

    with pytest.raises(InvalidRequest, match="does not fit a ddpm model") as e:
        check("fm-euler", DDPMObjective())
    assert e.value.field == "sampler"
    with pytest.raises(InvalidRequest, match="unknown sampler"):
        check("lms", FMObjective())
    with pytest.raises(InvalidRequest, match="does not fit a fm model"):
        check("heun", FMObjective())
    with pytest.raises(InvalidRequest, match="eta is not an option of 'fm-rk4'") as e:
        check("fm-rk4", FMObjective(), eta=0.5)
    assert e.value.field == "eta"


def test_steps_beyond_the_ddpm_training_timesteps_are_refused():
    with pytest.raises(InvalidRequest, match=r"steps must be in \[1, 1000\], got 1001"):
        validate(SampleSpec("ddim", 1001, 4), DDPMObjective(), 2, Limits(max_steps=5000))
    validate(SampleSpec("fm-euler", 1001, 4), FMObjective(), 2, Limits(max_steps=5000))
