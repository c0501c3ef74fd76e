import math

import pytest
import torch

from training.paths import DDPMObjective, DDPMSchedule, FMObjective, objective_from_dict
from training.paths import conversions as cv


def test_linear_alpha_bar_at_T_matches_the_seed_figure():
    ab = DDPMSchedule.create("linear").alpha_bar
    assert ab.shape == (1000,)
    assert 3e-5 < ab[-1].item() < 5e-5  # "linear's alpha_bar_T collapses to about 4e-5"
    assert ab[0].item() == pytest.approx(1 - 1e-4)
    assert torch.all(ab[1:] < ab[:-1])


def test_cosine_alpha_bar_matches_its_formula():
    sched = DDPMSchedule.create("cosine")
    s, T = 0.008, 1000

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 1, 10, 250, 500, 900, 998):
        # alpha_bar at index t is the marginal after t + 1 betas: f(t + 1) / f(0) (unclipped region)
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max().item() <= 0.999


def test_alpha_bar_at_minus_one_is_clean_data():
    sched = DDPMSchedule.create("linear")
    got = sched.alpha_bar_at(torch.tensor([-1, 0, 999]))
    assert got[0].item() == 1.0
    assert got[2].item() == pytest.approx(sched.alpha_bar[-1].item())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_conversions_round_trip(schedule):
    g = torch.Generator().manual_seed(0)
    sched = DDPMSchedule.create(schedule)
    t = torch.randint(0, 1000, (64,), generator=g)
    ab = sched.alpha_bar_at(t)[:, None]
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g, dtype=torch.float64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = cv.target_from(x0, eps, ab, "v")
    assert torch.allclose(cv.eps_to_x0(x_t, eps, ab), x0, atol=1e-8 / ab.sqrt().min().item())
    assert torch.allclose(cv.x0_to_eps(x_t, x0, ab), eps, atol=1e-6)
    assert torch.allclose(cv.v_to_x0(x_t, v, ab), x0, atol=1e-9)
    assert torch.allclose(cv.v_to_eps(x_t, v, ab), eps, atol=1e-9)
    assert torch.allclose(cv.eps_to_v(x_t, eps, ab), v, atol=1e-6)
    assert torch.allclose(cv.x0_to_v(x_t, x0, ab), v, atol=1e-6)
    for target, pred in (("eps", eps), ("x0", x0), ("v", v)):
        e, x = cv.to_eps_x0(x_t, pred, ab, target)
        assert torch.allclose(e, eps, atol=1e-6)
        assert torch.allclose(x, x0, atol=1e-6)


def test_v_is_the_salimans_ho_definition():
    ab = torch.tensor(0.36)
    x0, eps = torch.tensor(2.0), torch.tensor(-1.0)
    assert cv.target_from(x0, eps, ab, "v").item() == pytest.approx(0.6 * -1.0 - 0.8 * 2.0)


def test_objectives_round_trip_and_refuse_unknowns():
    for obj in (DDPMObjective("cosine", "v"), DDPMObjective("linear", "x0"), FMObjective()):
        assert objective_from_dict(obj.to_dict()) == obj
    with pytest.raises(ValueError, match="schedule"):
        DDPMObjective("sigmoid", "eps")
    with pytest.raises(ValueError, match="target"):
        DDPMObjective("linear", "score")
    with pytest.raises(ValueError, match="bogus"):
        objective_from_dict({"kind": "fm", "bogus": 1})
    with pytest.raises(ValueError, match="kind"):
        objective_from_dict({"kind": "edm"})


def test_fm_loss_is_zero_for_the_exact_conditional_target():
    """With x1 a single point, the conditional velocity x1 - x0 is exactly recoverable from (x_t, t)."""
    x1 = torch.full((256, 2), 0.7)

    def exact(x_t, t, y):
        tb = t[:, None]
        return (x1 - x_t) / (1 - tb)  # x0 = (x_t - t x1) / (1 - t); v = x1 - x0

    loss = FMObjective().loss(exact, x1, torch.zeros(256, dtype=torch.long), torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
def test_ddpm_loss_targets_are_consistent(target):
    """A predictor that knows the data point exactly has zero loss for every target."""
    x1 = torch.full((128, 2), -0.3)
    sched = DDPMSchedule.create("linear")
    obj = DDPMObjective("linear", target)

    def exact(x_t, t, y):
        ab = sched.alpha_bar_at(t.long())[:, None].float()
        return cv.target_from(x1, cv.x0_to_eps(x_t, x1, ab), ab, target)

    loss = obj.loss(exact, x1, torch.zeros(128, dtype=torch.long), torch.Generator().manual_seed(0))
    assert loss.item() < 1e-4
