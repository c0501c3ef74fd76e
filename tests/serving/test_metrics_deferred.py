"""ModelMetrics queues its records and makes them within FLUSH_S, off the request's path, in order."""

from __future__ import annotations

import asyncio

from serving.metrics import FLUSH_S, ModelMetrics


class Seen:
    """Stands in for one Ray metric: remembers what was recorded into it (the real export is covered end to
    end in test_metrics.py)."""

    def __init__(self, log: list) -> None:
        self.log = log

    def observe(self, value: float, tags: dict | None = None) -> None:
        self.log.append(("observe", value))

    def set(self, value: float, tags: dict | None = None) -> None:
        self.log.append(("set", value))


def metrics_with_log() -> tuple[ModelMetrics, list]:
    m = ModelMetrics("moons-fm")
    log: list = []
    m.tick_rows = m.in_flight = Seen(log)  # type: ignore[assignment]
    return m, log


def test_records_wait_for_the_timer_then_arrive_in_order() -> None:
    async def main() -> tuple[list, list]:
        m, log = metrics_with_log()
        m.set_in_flight(1)
        for rows in (64, 128, 32):
            m.on_tick(rows)
        m.set_in_flight(0)
        before = list(log)
        await asyncio.sleep(FLUSH_S + 0.1)
        return before, log

    before, after = asyncio.run(main())
    assert before == []
    assert after == [("set", 1), ("observe", 64), ("observe", 128), ("observe", 32), ("set", 0)]


def test_outside_an_event_loop_records_at_once() -> None:
    m, log = metrics_with_log()
    m.on_tick(7)
    assert log == [("observe", 7)]


def test_a_timer_left_on_an_ended_loop_does_not_strand_later_records() -> None:
    m, log = metrics_with_log()

    async def tick(rows: int) -> None:
        m.on_tick(rows)

    asyncio.run(tick(1))  # its loop ends before the timer fires: the record stays queued
    assert log == []

    async def later() -> None:
        m.on_tick(2)
        await asyncio.sleep(FLUSH_S + 0.1)

    asyncio.run(later())
    assert log == [("observe", 1), ("observe", 2)]
