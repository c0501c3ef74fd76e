"""The replica's latency model: a least-squares line through (rows, tick seconds) with forgetting."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from serving.policy.tick_model import DECAY, TickModel, profile_tick_times, tick_profile_sizes


def test_profile_alone_gives_the_line_through_it() -> None:
    m = TickModel([(1, 0.0021), (64, 0.0084), (1024, 0.1044)])  # exactly 0.002 + 1e-4 rows
    assert m.fixed_s == pytest.approx(0.002, rel=1e-6) and m.per_row_s == pytest.approx(1e-4, rel=1e-6)
    assert m.tick_s(4096) == pytest.approx(0.002 + 0.4096, rel=1e-6)


def test_observed_ticks_take_over_from_the_profile() -> None:
    m = TickModel([(1, 0.001), (1024, 0.011)])
    for _ in range(300):  # the machine got 3x slower per row, with a larger fixed cost
        for rows in (8, 256, 1024):
            m.observe(rows, 0.005 + 3e-5 * rows)
    assert m.fixed_s == pytest.approx(0.005, rel=0.05) and m.per_row_s == pytest.approx(3e-5, rel=0.05)


def test_ticks_of_one_size_keep_the_fit_defined() -> None:
    """A run of ticks of one size alone cannot separate the two terms; with the profile kept at weight 1 beside
    the forgetting sum of those ticks, the line is the weighted least-squares line through all of them, which
    numpy's polyfit computes independently."""
    m = TickModel([(1, 0.001), (1024, 0.011)])
    n = 1000
    for _ in range(n):
        m.observe(512, 0.02)
    decayed = sum(DECAY**k for k in range(n))  # the weight of the n ticks at 512 rows after forgetting
    per_row, fixed = np.polyfit([1, 1024, 512], [0.001, 0.011, 0.02], 1, w=np.sqrt([1.0, 1.0, decayed]))
    assert m.per_row_s == pytest.approx(per_row, rel=1e-6) and m.fixed_s == pytest.approx(fixed, rel=1e-6)
    assert m.tick_s(512) == pytest.approx(0.02, rel=0.05)


def test_without_a_profile_the_model_knows_only_the_mean_tick() -> None:
    m = TickModel()
    assert m.tick_s(4096) == 0.0
    m.observe(100, 0.01)
    m.observe(100, 0.03)
    assert m.per_row_s == 0.0 and m.tick_s(4096) == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ValueError, match="two distinct row counts"):
        TickModel([(8, 0.1), (8, 0.2)])


def test_a_handoff_is_kept_apart_from_the_line_and_paid_only_past_the_inline_limit() -> None:
    """Ticks too long for the event loop pay the handoff to the engine's thread on top of the line; the line
    is fitted to the ticks less their handoff, so handed-off and inline ticks agree on it."""
    m = TickModel([(1, 0.00101), (1024, 0.01124)], inline_s=0.003)  # 0.001 + 1e-5 x rows: inline up to 200 rows
    for _ in range(200):
        m.observe(100, 0.001 + 1e-5 * 100)  # inline
        m.observe(1000, 0.001 + 1e-5 * 1000, handoff_s=0.0005)  # handed off: 0.5 ms more, measured apart
    assert m.fixed_s == pytest.approx(0.001, rel=1e-3) and m.per_row_s == pytest.approx(1e-5, rel=1e-3)
    assert m.handoff_s == pytest.approx(0.0005, rel=1e-6)
    assert m.inline(100) and not m.inline(1000)
    assert m.tick_s(100) == pytest.approx(m.line_s(100)) and m.tick_s(1000) == pytest.approx(m.line_s(1000) + 0.0005)


@pytest.mark.parametrize("handoff", [0.0, 0.0005, 0.004])
def test_rows_within_is_the_inverse_of_tick_s(handoff: float) -> None:
    m = TickModel([(1, 0.001 + 1e-5), (1000, 0.001 + 1e-2)], inline_s=0.003)
    m.handoff_s = handoff
    for ms in [0.5, 1.0, 1.01, 2.0, 2.99, 3.0, 3.2, 3.5, 5.0, 7.0, 20.0]:
        seconds = ms * 1e-3
        rows = m.rows_within(seconds, 4096)
        assert rows == 0 or m.tick_s(rows) <= seconds + 1e-12, (ms, rows)
        assert all(m.tick_s(r) > seconds for r in range(rows + 1, rows + 600)), (ms, rows)


def test_the_profile_line_stays_the_yardstick_while_the_online_fit_moves() -> None:
    m = TickModel([(1, 0.001), (1024, 0.011)])
    before = m.yardstick()
    for _ in range(300):
        for rows in (8, 1024):
            m.observe(rows, 0.004 + 3e-5 * rows)
    assert m.fixed_s == pytest.approx(0.004, rel=0.05)  # the online line followed the ticks
    assert m.yardstick() == before == m.profiled
    assert TickModel().yardstick() == (0.0, 0.0)  # without a profile: the online line


def test_the_profile_times_every_size_in_rounds_within_its_budget() -> None:
    calls: list[int] = []

    def forward(x, t, y):  # 1 ms + 20 us a row
        calls.append(x.shape[0])
        time.sleep(0.001 + 2e-5 * x.shape[0])
        return x

    profile = profile_tick_times(forward, (2,), 0, (1, 64, 256), rounds=9, budget_s=10.0)
    assert [b for b, _ in profile] == [1, 64, 256] and len(calls) == 3 * 10  # a warm-up, then 9 rounds
    assert calls[3:6] == [1, 64, 256]  # sizes interleave within a round
    m = TickModel(profile)
    assert m.per_row_s == pytest.approx(2e-5, rel=0.2) and m.fixed_s == pytest.approx(0.001, abs=0.0005)
    calls.clear()
    profile_tick_times(forward, (2,), 0, (1, 64, 256), rounds=9, budget_s=0.0, min_rounds=3)
    assert len(calls) == 3 * 4  # past the budget: the minimum of rounds


def test_a_profile_without_per_row_cost_does_not_become_the_yardstick() -> None:
    """A flat profile (e.g. a small net on a GPU) would call every tick too small for good: the online line
    is the yardstick then."""
    m = TickModel([(1, 0.001), (1024, 0.0009)])
    assert m.profiled is not None and m.profiled[1] == 0.0
    for _ in range(100):
        for rows in (8, 1024):
            m.observe(rows, 0.001 + 1e-6 * rows)
    assert m.yardstick() == (m.fixed_s, m.per_row_s) and m.yardstick()[1] > 0


@pytest.mark.parametrize(
    ("fixed", "per_row", "inline_s", "handoff", "cap"),
    [
        (0.001, 1e-5, 0.003, 0.0005, 4096),  # inline up to 200 rows
        (0.001, 1e-5, 0.003, 0.0005, 150),  # the cap binds
        (0.004, 1e-5, 0.003, 0.0005, 4096),  # the fixed cost alone is past the inline limit: always handed off
        (0.0011939159099303306, 7.282597137377705e-06, 0.003, 0.01, 4096),  # the limit falls between two rows
        (0.001, 0.0, 0.003, 0.0005, 4096),  # rows cost nothing
        (0.004, 0.0, 0.003, 0.0005, 4096),  # rows cost nothing, handed off
    ],
)
def test_rows_within_holds_at_the_edges(fixed, per_row, inline_s, handoff, cap) -> None:
    m = TickModel(inline_s=inline_s)
    m.fixed_s, m.per_row_s, m.handoff_s = fixed, per_row, handoff
    for seconds in [0.0, 0.0005, 0.001, 0.002, 0.003, 0.0030001, 0.0035, 0.0045, 0.005, 0.02, 1.0]:
        rows = m.rows_within(seconds, cap)
        assert 0 <= rows <= cap
        assert rows == 0 or m.tick_s(rows) <= seconds + 1e-9, (seconds, rows)
        assert rows == cap or m.tick_s(rows + 1) > seconds, (seconds, rows)
    assert m.rows_within(math.inf, cap) == cap


def test_inline_s_zero_hands_every_tick_off() -> None:
    m = TickModel(inline_s=0.0)  # no profile: the line is 0 s until the first tick
    m.handoff_s = 0.001
    assert not m.inline(4096) and m.tick_s(1) == pytest.approx(0.001)


class _Bounded:
    def __init__(self, min_batch: int | None, max_batch: int | None) -> None:
        self.min_batch, self.max_batch = min_batch, max_batch


@pytest.mark.parametrize(
    ("top", "backend", "sizes"),
    [
        (4096, _Bounded(None, None), (1, 64, 256, 1024)),
        (128, _Bounded(None, None), (1, 64, 128)),
        (4096, _Bounded(1, 512), (1, 64, 256, 512)),  # a TensorRT plan built for at most 512 rows
        (4096, _Bounded(8, 512), (8, 64, 256, 512)),
        (4096, _Bounded(16, 16), (16,)),  # one batch size only: no line, the replica starts without a profile
        (1, _Bounded(None, None), (1,)),
    ],
)
def test_profile_sizes_keep_within_the_engine_and_the_backend(top, backend, sizes) -> None:
    assert tick_profile_sizes(top, backend) == sizes
