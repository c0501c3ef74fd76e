"""The routing simulation's mechanics (bench.routing_sim): a lone request takes its time alone, work the
replicas cannot take is refused by the engine's own admission, and both routers see the same arrivals."""

from __future__ import annotations

import pytest

from bench.routing_sim import offered_rate, simulate, workload
from serving.policy.admission import alone_s
from serving.policy.limits import EngineLimits
from serving.policy.state import RequestState
from serving.policy.tick_model import TickModel

MODEL = TickModel([(1, 0.0005), (4096, 0.0205)], inline_s=0.0)  # 0.5 ms + about 5 us a row
LIMITS = EngineLimits.from_options(max_rows_per_tick=4096, max_in_flight=64, max_queue=192, max_wait_s=5.0)


@pytest.mark.parametrize("router", ["queue", "work"])
def test_a_lone_request_takes_its_time_alone(router: str) -> None:
    rows, k = 16, 20
    out = simulate(router, 2, [(0.0, rows, k, None)], MODEL, LIMITS, seed=0)
    assert out["requests"] == 1 and out["refused_share"] == 0.0
    assert out["short_p50_ms"] == pytest.approx(1e3 * alone_s(RequestState(rows, k), MODEL, LIMITS), rel=1e-9)


def test_a_request_behind_a_long_one_goes_to_the_idle_replica_with_the_work_router() -> None:
    # a huge request first, then a short one: the work router knows where the huge one went (sent since the
    # snapshot) and sends the short one to the other replica, so it takes its time alone
    arrivals = [(0.0, 4096, 100, None), (0.001, 1, 5, None)]
    alone = alone_s(RequestState(1, 5), MODEL, LIMITS)
    out = simulate("work", 2, arrivals, MODEL, LIMITS, seed=0)
    assert out["short_p50_ms"] == pytest.approx(1e3 * alone, rel=1e-9)


def test_overload_is_refused_and_attainment_counts_deadlines() -> None:
    rate = offered_rate(3.0, 2, MODEL, LIMITS)  # three times what two replicas do in full ticks
    arrivals = workload(int(rate * 3), rate, MODEL, LIMITS, seed=1)
    assert any(a[3] is not None for a in arrivals)
    for router in ("queue", "work"):
        out = simulate(router, 2, arrivals, MODEL, LIMITS, seed=1)
        assert out["requests"] == len(arrivals)
        assert out["refused_share"] > 0.1  # what a 5 s wait bound cannot queue in 3 s
        assert 0.0 <= out["attainment"] <= 1.0
