"""Choosing K for a deadline (`serving.policy.step_budget.choose`) over the scheduler's predictions, on a fixed latency
model and a fake clock: the idle choice, K lowered by load, refusals for load and for impossibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sampling.request import SampleSpec
from serving.policy.limits import Policy
from serving.policy.state import Load, RequestState
from serving.policy.step_budget import ArrivalRate, Calibration, Candidate, choose
from serving.policy.tick_model import TickModel
from serving.policy.tick_plan import finish_s
from serving.refusals import DeadlineImpossible, DeadlineOverloaded

MODEL = TickModel([(1, 1e-3 + 1e-5), (1000, 1e-3 + 1e-2)])  # 1 ms a tick plus 10 us a row
POLICY = Policy()
STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 400)
CANDIDATES = [Candidate(SampleSpec("fm-euler", k, num_samples=16, seed=1), 1.0 - 0.9 / k) for k in STEPS]


def _alone(spec: SampleSpec) -> float:
    return spec.evaluations * MODEL.tick_s(spec.rows)


def _choose(load: Load, deadline_s: float, now: float = 0.0):
    return choose(
        CANDIDATES,
        deadline_s,
        lambda s: finish_s(RequestState(s.rows, s.evaluations, now + deadline_s), load, now, MODEL, POLICY),
        _alone,
    )


def _ahead(seconds: float, deadline: float) -> list[RequestState]:
    """Three requests with an earlier deadline holding about `seconds` of work at the efficient tick size."""
    per_row_eval = 1.2e-5  # about what a row evaluation costs in efficient ticks under MODEL
    evals = max(1, round(seconds / per_row_eval / (3 * 256)))
    return [RequestState(256, evals, deadline, seq=i) for i in range(3)]


def test_idle_takes_the_best_quality_that_fits() -> None:
    deadline = 1.5 * _alone(CANDIDATES[-1].spec)  # K = 400 alone fits with room
    choice = _choose(Load([]), deadline)
    assert choice.candidate.spec.steps == 400
    assert choice.predicted_s == pytest.approx(_alone(CANDIDATES[-1].spec), rel=0.2)


def test_load_ahead_lowers_k_instead_of_refusing() -> None:
    deadline = 1.5 * _alone(CANDIDATES[-1].spec)
    idle = _choose(Load([]), deadline).candidate.spec.steps
    loaded = _choose(Load(_ahead(0.7 * deadline, deadline=0.1 * deadline)), deadline)
    assert loaded.candidate.spec.steps < idle
    assert loaded.predicted_s <= deadline
    # more load, smaller K: the choice falls with the work ahead
    heavier = _choose(Load(_ahead(0.9 * deadline, deadline=0.1 * deadline)), deadline)
    assert heavier.candidate.spec.steps <= loaded.candidate.spec.steps


def test_no_k_meets_the_deadline_under_this_load() -> None:
    deadline = 1.5 * _alone(CANDIDATES[-1].spec)
    with pytest.raises(DeadlineOverloaded) as refused:
        _choose(Load(_ahead(3.0 * deadline, deadline=0.1 * deadline)), deadline)
    assert refused.value.retry_after >= 1


def test_a_deadline_shorter_than_the_fastest_choice_alone_is_impossible() -> None:
    fastest = _alone(CANDIDATES[0].spec)
    with pytest.raises(DeadlineImpossible) as refused:
        _choose(Load([]), 0.5 * fastest)
    assert refused.value.fastest_s == pytest.approx(fastest)


def test_a_fair_share_holds_the_choice_to_its_time_alone_but_refuses_nothing_more() -> None:
    """Time alone and predicted time by K (linear in K here): no share, the largest K within the deadline; a
    share, the best whose time alone is within it; when none is, the cheapest that meets the deadline."""
    seconds = {k: 0.01 * k for k in STEPS}

    def pick(deadline_s: float, share_s: float) -> int:
        spec = choose(CANDIDATES, deadline_s, lambda s: seconds[s.steps], lambda s: seconds[s.steps], share_s)
        return spec.candidate.spec.steps

    assert pick(1.0, math.inf) == 100
    assert pick(1.0, 0.2) == 20
    assert pick(1.0, 0.005) == 1  # even K = 1 is over the share: the cheapest that meets the deadline
    with pytest.raises(DeadlineOverloaded):
        choose(CANDIDATES, 0.005, lambda s: seconds[s.steps], lambda s: 0.0, 0.5)


def test_the_arrival_rate_gives_the_share_of_time_per_arrival() -> None:
    now = [0.0]
    rate = ArrivalRate(window_s=5.0, clock=lambda: now[0])
    assert rate.share_s(0.8) == math.inf  # nothing heard yet
    for _ in range(50):  # 10 a second for 5 s
        now[0] += 0.1
        rate.arrived()
    assert rate.rate() == pytest.approx(10.0, rel=0.03)
    assert rate.share_s(0.8) == pytest.approx(0.08, rel=0.03)
    assert rate.share_s(0.0) == math.inf  # off
    now[0] += 10.0  # quiet since: the window is empty again
    assert rate.share_s(0.8) == math.inf


def test_requests_without_deadlines_do_not_push_a_deadline_request_back() -> None:
    """Default-class work is ordered after deadline requests: it can stretch a deadline request's ticks by at
    most `stretch` (1.5), so a deadline twice the best choice's time alone still gets it."""
    deadline = 2.0 * _alone(CANDIDATES[-1].spec)
    background = [RequestState(256, 10_000, None, seq=i) for i in range(6)]
    assert _choose(Load(background), deadline).candidate.spec.steps == 400


def test_calibrated_predictions_are_met_by_about_the_quantile_of_requests() -> None:
    """A predictor that runs short by a random factor (lognormal, median 1.3): after a window of requests the
    factor scales fresh predictions so that about 95 % of fresh requests finish within them, where the raw
    predictions are met by under a quarter."""
    rng = np.random.default_rng(0)
    cal = Calibration(window=400, quantile=0.95)
    assert cal.factor() == 1.0  # nothing recorded yet
    for predicted, err in zip(rng.uniform(0.01, 0.5, 400), rng.lognormal(np.log(1.3), 0.3, 400), strict=True):
        cal.record(predicted, predicted * err)
    fresh = rng.lognormal(np.log(1.3), 0.3, 20_000)
    assert np.mean(fresh <= 1.0) < 0.25
    assert np.mean(fresh <= cal.factor()) == pytest.approx(0.95, abs=0.02)


def test_calibration_forgets_old_requests_and_stays_within_bounds() -> None:
    cal = Calibration(window=50, min_count=10, bounds=(0.5, 5.0))
    for _ in range(9):
        cal.record(0.1, 0.3)
    assert cal.factor() == 1.0  # fewer than min_count
    cal.record(0.1, 0.3)
    assert cal.factor() == pytest.approx(3.0)
    for _ in range(50):  # the window now holds only these
        cal.record(0.2, 0.1)
    assert cal.factor() == pytest.approx(0.5)
    for _ in range(50):
        cal.record(0.01, 1.0)  # 100x short: clipped
    assert cal.factor() == 5.0
    cal.record(0.0, 1.0)  # no prediction: ignored
    assert cal.factor() == 5.0
