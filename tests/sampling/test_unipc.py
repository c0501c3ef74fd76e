"""UniPC (unipc for DDPM nets, fm-unipc for flow-matching nets) against independent references: diffusers'
UniPCMultistepScheduler on the same net and timesteps, and the exact probability-flow / flow maps of
Gaussian data (tests/oracles.py)."""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from sampling.samplers.spacing import solver_timesteps
from tests.oracles import GaussianDDPM, GaussianFM, gaussian_pf_map
from tests.sampling.helpers import run
from tests.sampling.test_low_k_samplers import COV, DIFFUSERS_TARGET, MEAN, fitted_order
from training.paths import DDPMObjective, DDPMSchedule, FMObjective


def diffusers_unipc(**config) -> UniPCMultistepScheduler:
    """UniPC-bh2 of order 2 with data prediction and its defaults for the last step."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        **config,
    )


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("target", ["eps", "v", "x0"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_unipc_equals_diffusers(schedule_name, target, spacing):
    sched = DDPMSchedule.create(schedule_name)
    oracle = GaussianDDPM(MEAN, COV, sched, target)
    # As for dpm-solver++: cosine's alpha at t = 999 is 1.5e-3, and an eps net's x0 = (x - sigma eps) / alpha
    # magnifies float32 round-off, which differs between the two implementations (1e-2 at K = 1, 8e-4 at K = 5,
    # measured); the other pairs agree to 3e-6.
    hard = (schedule_name, target) == ("cosine", "eps")
    tol = 3e-3 if hard else 1e-4
    for k in (2, 3, 5, 10, 20, 50) if hard else (1, 2, 3, 5, 10, 20, 50):
        noise, ours = run("unipc", DDPMObjective(schedule_name, target), oracle, k, spacing=spacing)
        sch = diffusers_unipc(
            trained_betas=sched.betas.numpy(), prediction_type=DIFFUSERS_TARGET[target], timestep_spacing=spacing
        )
        sch.set_timesteps(k)
        assert solver_timesteps(spacing, k).tolist() == sch.timesteps.tolist()
        x = noise.clone()
        for t in sch.timesteps:
            x = sch.step(oracle(x, t.float().expand(len(x)), None), t, x).prev_sample
        assert (ours - x).abs().max().item() < tol, (k, (ours - x).abs().max().item())


def test_fm_unipc_equals_diffusers_flow_unipc_on_the_linear_path():
    """diffusers' flow form: s = 1 - t, its model output the flow eps - x1 = -v, our grid as its sigmas."""
    oracle = GaussianFM(MEAN, COV, "linear")
    for k in (1, 2, 3, 5, 10, 20):
        noise, ours = run("fm-unipc", FMObjective("linear"), oracle, k)
        t = np.arange(k) / k
        sch = diffusers_unipc(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0)
        sch.set_timesteps(sigmas=(1.0 - t).astype(np.float64))
        x = noise.clone()
        for i, step_t in enumerate(sch.timesteps):
            x = sch.step(-oracle(x, torch.full((len(x),), float(t[i])), None), step_t, x).prev_sample
        # diffusers keeps its sigmas in float32: 2.6e-5 apart at K = 3, 5e-6 or less otherwise (measured)
        assert (ours - x).abs().max().item() < 1e-4, (k, (ours - x).abs().max().item())


def test_unipc_converges_to_the_probability_flow_map():
    """Measured: errors 0.35, 0.10, 0.017, 0.0015 at K = 10 .. 80 (fitted order 2.6; dpm-solver++: 2.0 and
    0.0062 at K = 80). Beyond K = 80 both level off near 1e-3: the last step returns the data prediction."""
    sched = DDPMSchedule.create("linear")
    oracle = GaussianDDPM(MEAN, COV, sched, "eps")
    ks = (10, 20, 40, 80)
    errs = []
    for k in ks:
        noise, x = run("unipc", DDPMObjective(), oracle, k, spacing="trailing")
        exact = gaussian_pf_map(MEAN, COV, noise, sched.alpha_bar[-1].item())
        errs.append((x - exact).norm(dim=1).max().item())
    assert 2.2 < fitted_order(ks, errs) < 3.2, (errs, fitted_order(ks, errs))
    assert errs[-1] < 3e-3, errs


@pytest.mark.parametrize("path, ks, lo, hi", [("linear", (4, 8, 16, 32), 1.9, 2.6), ("vp", (8, 16, 32, 64), 2.1, 2.9)])
def test_fm_unipc_converges_to_the_flow_map(path, ks, lo, hi):
    """Measured: fitted order 2.2 on the linear path (0.0062 at K = 32), 2.5 on vp (0.0023 at K = 64)."""
    oracle = GaussianFM(MEAN, torch.diag(torch.tensor([0.2, 2.0])), path)
    obj = FMObjective(path)
    errs = []
    for k in ks:
        noise, x = run("fm-unipc", obj, oracle, k)
        errs.append((x - oracle.flow_map(noise, obj.t_end)).norm(dim=1).max().item())
    assert lo < fitted_order(ks, errs) < hi, (errs, fitted_order(ks, errs))
    assert errs[-1] < 1e-2, errs
