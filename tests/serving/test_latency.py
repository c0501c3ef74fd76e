"""The replica's latency model: a least-squares line through (rows, tick seconds) with forgetting."""

from __future__ import annotations

import pytest

from serving.latency import TickModel


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
    m = TickModel([(1, 0.001), (1024, 0.011)])
    for _ in range(1000):
        m.observe(512, 0.02)
    assert m.tick_s(512) == pytest.approx(0.02, rel=0.05)
    assert m.per_row_s >= 0 and m.fixed_s >= 0


def test_without_a_profile_the_model_knows_only_the_mean_tick() -> None:
    m = TickModel()
    assert m.tick_s(4096) == 0.0
    m.observe(100, 0.01)
    m.observe(100, 0.03)
    assert m.per_row_s == 0.0 and m.tick_s(4096) == pytest.approx(0.02, rel=0.05)
    with pytest.raises(ValueError, match="two distinct row counts"):
        TickModel([(8, 0.1), (8, 0.2)])
