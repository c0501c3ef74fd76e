"""The new samplers as requests see them: deterministic for a seed, independent of their batch neighbours
when batched step by step as the serving engine batches them, and refusing options they do not take."""

import re

import pytest
import torch

from sampling import samplers
from sampling.request import MIN_NFE, InvalidRequest, Limits, SampleSpec, initial_noise, max_nfe_cap, validate
from tests.sampling.helpers import run_batched
from training.nets import build_net
from training.paths import DDPMObjective, FMObjective

NEW = [
    ("dpm-solver++", DDPMObjective("cosine", "v"), {"spacing": "linspace"}),
    ("unipc", DDPMObjective("linear", "eps"), {"spacing": "trailing"}),
    ("unipc", DDPMObjective("cosine", "x0"), {"spacing": "leading"}),
    ("fm-unipc", FMObjective(), {}),
    ("fm-unipc", FMObjective("vp"), {}),
    ("heun", DDPMObjective("linear", "x0"), {"spacing": "trailing"}),
    ("fm-heun", FMObjective(), {}),
    ("fm-heun", FMObjective("vp"), {}),
    ("fm-dopri5", FMObjective(), {"rtol": 1e-3, "atol": 1e-4, "max_nfe": 200}),
    ("fm-dopri5", FMObjective("vp"), {"rtol": 1e-4, "atol": 1e-4}),
]


def small_net(objective) -> torch.nn.Module:
    """A fixed random MLP: its matmuls see the whole concatenated batch, as the engine's backend call does."""
    torch.manual_seed(0)
    return build_net("mlp", {"hidden": 32, "depth": 2}, (2,), 2, objective.t_scale).eval()


def gen_for(name, objective, seed, n, options):
    noise, g = initial_noise((2,), n, seed)
    return samplers.start(name, objective, noise, 6, g, **options)


@pytest.mark.parametrize("name, objective, options", NEW)
def test_same_seed_same_samples(name, objective, options):
    net = small_net(objective)
    with torch.no_grad():
        a, b, c = run_batched([gen_for(name, objective, s, 32, options) for s in (5, 5, 6)], net)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name, objective, options", NEW)
def test_a_request_alone_equals_the_same_request_amid_20_others(name, objective, options):
    """Step-level batching emulated in tests/sampling/helpers.run_batched (the engine itself is not used here):
    20 other requests (other seeds, sizes and, for fm-dopri5, tolerances, so other NFE) share every net call."""
    net = small_net(objective)
    with torch.no_grad():
        (alone,) = run_batched([gen_for(name, objective, 123, 16, options)], net)
        others = []
        for i in range(20):
            opts = dict(options)
            if name == "fm-dopri5":
                opts["rtol"] = [1e-2, 1e-3, 1e-5][i % 3]
            others.append(gen_for(name, objective, 1000 + i, 1 + i % 7, opts))
        crowd = run_batched([*others[:10], gen_for(name, objective, 123, 16, options), *others[10:]], net)
    assert (crowd[10] - alone).abs().max().item() < 1e-5


def check(name, objective, **fields):
    validate(SampleSpec(name, 10, 4, **fields), objective, 2, Limits())


@pytest.mark.parametrize(
    "name, objective, refused",
    [
        ("dpm-solver++", DDPMObjective(), {"eta": 0.5}),
        ("dpm-solver++", DDPMObjective(), {"rtol": 1e-3}),
        ("heun", DDPMObjective(), {"eta": 0.0}),
        ("heun", DDPMObjective(), {"max_nfe": 50}),
        ("fm-heun", FMObjective(), {"spacing": "trailing"}),
        ("fm-heun", FMObjective(), {"atol": 1e-3}),
        ("fm-dopri5", FMObjective(), {"eta": 0.1}),
        ("fm-dopri5", FMObjective(), {"spacing": "leading"}),
        ("ddim", DDPMObjective(), {"rtol": 1e-3}),
        ("fm-rk4", FMObjective(), {"max_nfe": 100}),
    ],
)
def test_options_a_sampler_does_not_take_are_refused_by_name(name, objective, refused):
    (field,) = refused
    with pytest.raises(InvalidRequest, match=re.escape(f"{field} is not an option of '{name}'")) as e:
        check(name, objective, **refused)
    assert e.value.field == field


def test_options_the_new_samplers_take_are_accepted_and_range_checked():
    check("dpm-solver++", DDPMObjective(), spacing="leading")
    check("heun", DDPMObjective(), spacing="linspace")
    check("fm-dopri5", FMObjective("vp"), rtol=1e-6, atol=1.0, max_nfe=MIN_NFE)
    check("fm-dopri5", FMObjective(), max_nfe=max_nfe_cap(FMObjective(), Limits()))
    for field, bad in [
        ("rtol", 0.0),
        ("rtol", 1e-7),
        ("atol", 2.0),
        ("atol", float("nan")),
        ("max_nfe", MIN_NFE - 1),
        ("max_nfe", max_nfe_cap(FMObjective(), Limits()) + 1),
    ]:
        with pytest.raises(InvalidRequest) as e:
            check("fm-dopri5", FMObjective(), **{field: bad})
        assert e.value.field == field, (field, bad)
    assert max_nfe_cap(FMObjective(), Limits(max_steps=10)) == 61


def test_dpm_solver_pp_takes_at_most_T_minus_1_steps():
    """Its grid holds K + 1 timesteps (the last replaced by the data), so K = 1000 cannot be laid out."""
    validate(SampleSpec("dpm-solver++", 999, 1), DDPMObjective(), 2, Limits())
    with pytest.raises(InvalidRequest, match=r"steps must be in \[1, 999\]"):
        validate(SampleSpec("dpm-solver++", 1000, 1), DDPMObjective(), 2, Limits())
    validate(SampleSpec("heun", 1000, 1), DDPMObjective(), 2, Limits())


def test_samplers_for_lists_the_new_samplers_by_objective():
    assert samplers.samplers_for(DDPMObjective()) == ["ddpm", "ddim", "dpm-solver++", "unipc", "heun"]
    assert samplers.samplers_for(FMObjective("vp")) == ["fm-euler", "fm-heun", "fm-rk4", "fm-unipc", "fm-dopri5"]
