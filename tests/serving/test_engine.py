"""The engine alone (no Ray): batched results equal solo results, one net call per tick, bounds,
cancellation and backend failures."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from sampling import guidance, samplers
from sampling.driver import run_sampler
from sampling.request import initial_noise
from serving.engine import Engine, EngineLimits
from serving.policy.tick_model import TickModel
from serving.refusals import Overloaded, RequestTimeout
from training.checkpoint import load_checkpoint

# (model, sampler, steps, guidance, class_label, num_samples, seed, options)
CASES = [
    ("moons-fm", "fm-euler", 10, None, None, 5, 1, {}),
    ("moons-fm", "fm-rk4", 3, 2.0, 1, 4, 2, {}),
    ("moons-fm", "fm-euler", 7, 1.5, 0, 9, 3, {}),
    ("moons-ddpm", "ddpm", 12, None, 0, 3, 4, {}),
    ("moons-ddpm", "ddim", 6, 3.0, 1, 6, 5, {"eta": 0.5}),
    ("moons-ddpm", "ddim", 20, None, None, 2, 6, {"spacing": "linspace"}),
]


class RecordingForward:
    """A backend over the net's forward, recording the rows of every call."""

    name = "recording"

    def __init__(self, net: torch.nn.Module, max_batch: int | None = None) -> None:
        self.net = net
        self.max_batch = max_batch
        self.rows: list[int] = []

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.rows.append(int(x.shape[0]))
        return self.net(x, t, y)


@pytest.fixture(scope="module")
def ckpts(tiny_checkpoints: dict[str, Path]):
    return {name: load_checkpoint(tiny_checkpoints[name]) for name in ("moons-fm", "moons-ddpm")}


def _start(ckpt, sampler, steps, label, n, seed, options):
    noise, gen = initial_noise(ckpt.data_shape, n, seed)
    return samplers.start(sampler, ckpt.objective, noise, steps, gen, **options), guidance.labels(
        n, label, ckpt.null_label
    )


def _alone(ckpt, net, case) -> torch.Tensor:
    _, sampler, steps, w, label, n, seed, options = case
    gen, y = _start(ckpt, sampler, steps, label, n, seed, options)
    return run_sampler(gen, net, y, w, ckpt.null_label)


@pytest.mark.parametrize("scheduling", ["fifo", "deadline"])
def test_mixed_requests_match_solo_runs_and_share_each_tick(ckpts, scheduling) -> None:
    """Requests of different samplers, K, w and N submitted together get their solo samples, and the
    first tick carries every request's rows in one call. Under FIFO every tick carries every request still
    running; the deadline policy may split rows over ticks, each row still runs exactly once."""
    ckpt = ckpts["moons-fm"]
    fm_cases = [c for c in CASES if c[0] == "moons-fm"]
    net = ckpt.net("ema")
    fwd = RecordingForward(net)
    solo = [_alone(ckpt, net, c) for c in fm_cases]

    async def main():
        engine = Engine(fwd, ckpt.null_label, EngineLimits.from_options(scheduling=scheduling))
        jobs = []
        for c in fm_cases:
            gen, y = _start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7])
            jobs.append(engine.submit(gen, y, c[3]))
        out = await asyncio.gather(*jobs)
        await engine.close()
        return out

    results = asyncio.run(main())
    expected_rows = sum(c[5] * (2 if c[3] is not None else 1) for c in fm_cases)
    assert fwd.rows[0] == expected_rows
    evals = [c[2] * samplers.SAMPLERS[c[1]].evals_per_step for c in fm_cases]
    if scheduling == "fifo":
        # fm-rk4 with K = 3 needs 12 evaluations, the most of these; afterwards nothing is left.
        assert len(fwd.rows) == max(evals)
    rows = [c[5] * (2 if c[3] is not None else 1) for c in fm_cases]
    assert sum(fwd.rows) == sum(r * e for r, e in zip(rows, evals, strict=True))
    for case, res, ref in zip(fm_cases, results, solo, strict=True):
        evals = case[2] * samplers.SAMPLERS[case[1]].evals_per_step
        assert res.evaluations == evals
        assert res.nfe == evals * (2 if case[3] is not None else 1)
        torch.testing.assert_close(res.samples, ref, atol=1e-5, rtol=1e-5)


def test_ddpm_family_with_fresh_noise_matches_solo(ckpts) -> None:
    """ddpm and ddim(eta > 0) draw fresh noise each step from the request's own generator."""
    ckpt = ckpts["moons-ddpm"]
    cases = [c for c in CASES if c[0] == "moons-ddpm"]
    net = ckpt.net("ema")
    solo = [_alone(ckpt, net, c) for c in cases]

    async def main():
        engine = Engine(RecordingForward(net), ckpt.null_label)
        subs = [engine.submit(*_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]), c[3]) for c in cases]
        return await asyncio.gather(*subs)

    for res, ref in zip(asyncio.run(main()), solo, strict=True):
        torch.testing.assert_close(res.samples, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheduling", ["fifo", "deadline"])
def test_short_request_leaves_while_long_one_runs(ckpts, scheduling) -> None:
    """A K = 5 request joining a K = 200 one leaves after its own five evaluations, long before the long one
    ends (its awaiting coroutine resumes within a few ticks: a tick that runs on the loop yields once after
    it). Under FIFO the two share every tick whole."""
    ckpt = ckpts["moons-fm"]
    fwd = RecordingForward(ckpt.net("ema"))

    async def main():
        engine = Engine(fwd, ckpt.null_label, EngineLimits.from_options(scheduling=scheduling))
        long = asyncio.create_task(engine.submit(*_start(ckpt, "fm-euler", 200, None, 8, 0, {})))
        await asyncio.sleep(0)  # the long one joins first
        short = await engine.submit(*_start(ckpt, "fm-euler", 5, None, 3, 1, {}))
        ticks_when_short_done = engine.stats().ticks
        await long
        return short, ticks_when_short_done

    short, ticks_then = asyncio.run(main())
    assert short.evaluations == 5
    assert ticks_then <= 10  # joined at the next tick, left right after its 5th
    assert sum(fwd.rows) == 8 * 200 + 3 * 5  # every row ran once
    if scheduling == "fifo":
        assert len(fwd.rows) == 200
        assert fwd.rows.count(8 + 3) == 5 and fwd.rows.count(8) == 195


@pytest.mark.parametrize("scheduling", ["fifo", "deadline"])
def test_rows_per_tick_bound(ckpts, scheduling) -> None:
    """No tick over the bound. FIFO runs a lone request over the bound whole; the deadline policy splits its
    rows over several ticks. Samples are unchanged either way."""
    ckpt = ckpts["moons-fm"]
    fwd = RecordingForward(ckpt.net("ema"))
    net = ckpt.net("ema")
    limits = EngineLimits.from_options(max_rows_per_tick=10, max_in_flight=8, max_queue=8, scheduling=scheduling)
    cases = [("moons-fm", "fm-euler", 4, None, None, 6, s, {}) for s in range(4)]
    big = ("moons-fm", "fm-euler", 3, 1.0, 0, 8, 9, {})  # 16 rows: alone, over the bound

    async def main():
        engine = Engine(fwd, ckpt.null_label, limits)
        subs = [engine.submit(*_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]), c[3]) for c in [*cases, big]]
        return await asyncio.gather(*subs)

    results = asyncio.run(main())
    if scheduling == "fifo":
        assert max(fwd.rows[:-3]) <= 10 and fwd.rows[-3:] == [16, 16, 16]
        assert results[1].queue_s > 0  # the second 6-row request waited for the first to leave
    else:
        assert max(fwd.rows) <= 10
        assert sum(fwd.rows) == 4 * 6 * 4 + 16 * 3  # every row ran exactly once
    for c, res in zip([*cases, big], results, strict=True):
        torch.testing.assert_close(res.samples, _alone(ckpt, net, c), atol=1e-5, rtol=1e-5)


def test_overload_refuses_at_once_and_accepted_requests_finish(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    limits = EngineLimits.from_options(max_rows_per_tick=100, max_in_flight=2, max_queue=1)

    async def main():
        engine = Engine(RecordingForward(ckpt.net("ema")), ckpt.null_label, limits)
        accepted = [asyncio.create_task(engine.submit(*_start(ckpt, "fm-euler", 30, None, 2, s, {}))) for s in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await engine.submit(*_start(ckpt, "fm-euler", 30, None, 2, 7, {}))
        return await asyncio.gather(*accepted), refused.value

    done, refused = asyncio.run(main())
    assert len(done) == 3 and all(r.samples.shape == (2, 2) for r in done)
    assert refused.retry_after >= 1


def test_cancelled_request_leaves_engine_and_others_continue(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    fwd = RecordingForward(net)
    keep_case = ("moons-fm", "fm-euler", 40, None, None, 3, 11, {})

    async def main():
        engine = Engine(fwd, ckpt.null_label)
        gone = asyncio.create_task(engine.submit(*_start(ckpt, "fm-euler", 10_000, None, 5, 0, {})))
        keep = asyncio.create_task(engine.submit(*_start(ckpt, *keep_case[1:3], None, 3, 11, {})))
        while engine.stats().ticks < 3:
            await asyncio.sleep(0.001)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        res = await keep
        return res, engine.stats()

    res, stats = asyncio.run(main())
    assert stats.in_flight == 0 and stats.queued == 0
    assert len(fwd.rows) == 40 and fwd.rows[-1] == 3  # the cancelled request's rows are gone
    torch.testing.assert_close(res.samples, _alone(ckpt, net, keep_case), atol=1e-5, rtol=1e-5)


def test_backend_failure_fails_that_tick_only(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    calls = {"n": 0}

    class Flaky(RecordingForward):
        def __call__(self, x, t, y):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("device lost")
            return super().__call__(x, t, y)

    flaky = Flaky(net)

    async def main():
        engine = Engine(flaky, ckpt.null_label)
        with pytest.raises(RuntimeError, match="device lost"):
            await engine.submit(*_start(ckpt, "fm-euler", 5, None, 2, 0, {}))
        return await engine.submit(*_start(ckpt, "fm-euler", 5, None, 2, 1, {}))

    assert asyncio.run(main()).samples.shape == (2, 2)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        EngineLimits.from_options(max_rows_per_tick=0)


def test_ticks_beyond_the_backends_max_batch_are_split_and_results_unchanged(ckpts) -> None:
    """A backend with a bounded batch (a TensorRT profile) gets every tick in chunks of at most max_batch."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    fwd = RecordingForward(net, max_batch=5)
    fm_cases = [c for c in CASES if c[0] == "moons-fm"]
    solo = [_alone(ckpt, net, c) for c in fm_cases]

    async def main():
        engine = Engine(fwd, ckpt.null_label)
        jobs = [engine.submit(*_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]), c[3]) for c in fm_cases]
        out = await asyncio.gather(*jobs)
        await engine.close()
        return out

    results = asyncio.run(main())
    assert max(fwd.rows) == 5 and len(fwd.rows) > 12  # 31 rows in the first tick: 7 calls
    for res, ref in zip(results, solo, strict=True):
        torch.testing.assert_close(res.samples, ref, atol=1e-5, rtol=1e-5)


def test_a_failing_tick_fails_its_requests_and_the_engine_keeps_serving(ckpts) -> None:
    """An error outside the backend call (here: the per-tick callback) fails that tick's requests only."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    calls = {"n": 0}

    def on_tick(rows: int, requests: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metrics backend down")

    async def main():
        engine = Engine(RecordingForward(net), ckpt.null_label, on_tick=on_tick)
        first = engine.submit(*_start(ckpt, "fm-euler", 3, 0, 2, 1, {}), None)
        with pytest.raises(RuntimeError, match="metrics backend down"):
            await asyncio.wait_for(first, 30)
        second = await asyncio.wait_for(engine.submit(*_start(ckpt, "fm-euler", 3, 0, 2, 1, {}), None), 30)
        await engine.close()
        return second

    res = asyncio.run(main())
    assert res.samples.shape == (2, 2) and res.evaluations == 3


def test_admission_refuses_at_once_when_the_predicted_wait_exceeds_the_bound(ckpts) -> None:
    """Work-based shedding: a request whose rows do not fit beside the running ones is refused before any
    tick when the work ahead (rows x evaluations left) at the model's full-tick speed (plus the extra time
    of its own run in full ticks, zero here) exceeds max_wait_s; Retry-After is the time for that to
    drain below the bound."""
    ckpt = ckpts["moons-fm"]
    fwd = RecordingForward(ckpt.net("ema"))
    limits = EngineLimits.from_options(
        max_rows_per_tick=100, max_in_flight=8, max_queue=8, max_wait_s=1.0, scheduling="fifo"
    )
    model = TickModel([(1, 0.01), (100, 0.01)])  # 10 ms a tick whatever its rows: 1e-4 s per row evaluation

    async def main():
        engine = Engine(fwd, ckpt.null_label, limits, tick_model=model)
        model.observe = lambda rows, seconds, handoff_s=None: None  # keep the prediction exact for the assertions below
        big = asyncio.create_task(engine.submit(*_start(ckpt, "fm-euler", 200, None, 80, 0, {}), None, 200))
        while engine.stats().in_flight == 0:  # the big one has joined
            await asyncio.sleep(0.001)
        small = await engine.submit(*_start(ckpt, "fm-euler", 3, None, 20, 1, {}), None, 3)  # fits: 80 + 20 rows
        ticks_before = engine.stats().ticks
        wait = engine.predict(40, 5).wait_s
        with pytest.raises(Overloaded) as refused:  # 40 rows do not fit beside 80
            await engine.submit(*_start(ckpt, "fm-euler", 5, None, 40, 2, {}), None, 5)
        assert engine.stats().ticks == ticks_before  # refused at once, no tick ran meanwhile
        big.cancel()
        return small, wait, refused.value, ticks_before

    small, wait, refused, ticks_before = asyncio.run(main())
    assert small.evaluations == 3
    # work ahead: 80 rows x (200 - done) evaluations at 1e-4 s per row evaluation; a full tick costs no more
    # than its own 40 rows alone in this model, so its run adds nothing
    assert 80 * (200 - ticks_before) * 1e-4 == pytest.approx(wait, rel=1e-6) and wait > 1.0
    assert refused.retry_after == max(1, math.ceil(wait - 1.0))
    assert "predicted wait" in str(refused)


def test_a_request_past_the_timeout_leaves_and_frees_its_rows(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    fwd = RecordingForward(ckpt.net("ema"))
    limits = EngineLimits.from_options(request_timeout_s=0.3)

    async def main():
        engine = Engine(fwd, ckpt.null_label, limits)
        with pytest.raises(RequestTimeout, match="0.3 s"):
            await engine.submit(*_start(ckpt, "fm-euler", 1_000_000, None, 4, 0, {}), None, 1_000_000)
        stats_after = engine.stats()
        ok = await engine.submit(*_start(ckpt, "fm-euler", 3, None, 2, 1, {}), None, 3)
        return stats_after, ok

    stats_after, ok = asyncio.run(main())
    assert stats_after.in_flight == 0 and stats_after.queued == 0 and stats_after.rows_in_flight == 0
    assert ok.samples.shape == (2, 2)


LOW_K_CASES = [
    ("moons-ddpm", "dpm-solver++", 6, 2.0, 1, 5, 21, {}),
    ("moons-ddpm", "heun", 4, None, 0, 3, 22, {"spacing": "linspace"}),
    ("moons-ddpm", "unipc", 7, 2.0, 1, 5, 25, {"spacing": "leading"}),
    ("moons-fm", "fm-unipc", 6, None, 0, 4, 26, {}),
    ("moons-fm", "fm-heun", 5, 1.5, 1, 4, 23, {}),
    ("moons-fm", "fm-dopri5", 3, None, None, 6, 24, {"rtol": 1e-4, "atol": 1e-5}),
]


@pytest.mark.parametrize("case", LOW_K_CASES, ids=lambda c: c[1])
def test_low_k_samplers_are_batch_independent_in_the_engine(ckpts, case) -> None:
    """Each newer sampler (multistep, two-stage, adaptive with its own NFE) gets its solo samples when it
    runs amid 20 other requests of other samplers, K and sizes in the engine, within 1e-5."""
    ckpt = ckpts[case[0]]
    net = ckpt.net("ema")
    others = [
        (case[0], name, 3 + i % 7, (1.0 + i % 3) if i % 2 else None, i % 2, 1 + i % 5, 100 + i, {})
        for i, name in enumerate([s for s in samplers.samplers_for(ckpt.objective) if s != "fm-dopri5"] * 7)
    ][:20]

    async def main():
        engine = Engine(RecordingForward(net), ckpt.null_label)
        subs = [engine.submit(*_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]), c[3]) for c in [case, *others]]
        return await asyncio.gather(*subs)

    results = asyncio.run(main())
    torch.testing.assert_close(results[0].samples, _alone(ckpt, net, case), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("inline_s", [0.0, 10.0])
def test_handed_off_ticks_measure_their_handoff_apart_and_inline_ones_pay_none(ckpts, inline_s) -> None:
    """inline_s 0: every tick goes to the engine's thread; the time awaited beyond the time in the thread is
    the handoff, kept apart from the fitted line. inline_s 10 s: every tick runs on the loop, no handoff.
    The net sleeps 20 ms a call, so the line must come out at about that and the handoff well under it.
    Either way the samples are the solo run's."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    case = ("moons-fm", "fm-euler", 6, None, None, 16, 3, {})
    solo = _alone(ckpt, net, case)
    model = TickModel([(1, 1e-4), (100, 2e-4)], inline_s=inline_s)
    threads: list[str] = []
    fwd = RecordingForward(net)

    def slow(x, t, y):
        threads.append(threading.current_thread().name)
        time.sleep(0.02)
        return fwd(x, t, y)

    slow.max_batch = None  # the engine asks its backend for this

    async def main():
        engine = Engine(slow, ckpt.null_label, EngineLimits(), tick_model=model)
        loop_thread = threading.current_thread().name
        res = await engine.submit(*_start(ckpt, "fm-euler", 6, None, 16, 3, {}), None, 6)
        await engine.close()
        return res, loop_thread

    res, loop_thread = asyncio.run(main())
    torch.testing.assert_close(res.samples, solo)
    assert len(threads) == 6
    assert model.line_s(16) > 0.01  # the ticks' 20 ms went into the line (the profile said 0.1 ms)...
    if inline_s == 0.0:
        assert all(name.startswith("engine-forward") for name in threads)
        assert 0.0 < model.handoff_s < 0.01  # ...and the handoff is measured without them
        assert model.tick_s(16) == pytest.approx(model.line_s(16) + model.handoff_s)
    else:
        assert threads == [loop_thread] * 6
        assert model.handoff_s == 0.0 and model.tick_s(16) == model.line_s(16)


@pytest.mark.parametrize("bulk_nice", [0, 3])
def test_the_engines_thread_runs_at_bulk_nice_over_the_loops_priority(ckpts, bulk_nice) -> None:
    """Ticks handed to the engine's thread run with its OS niceness raised by engine.bulk_nice over the event
    loop's (read in the net's call, in that thread, by its own thread id); the loop's own is unchanged."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    model = TickModel([(1, 1e-4), (100, 2e-4)], inline_s=0.0)  # every tick to the engine's thread
    seen: list[tuple[str, int]] = []

    def forward(x, t, y):
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return net(x, t, y)

    forward.max_batch = None

    async def main() -> int:
        loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        engine = Engine(forward, ckpt.null_label, EngineLimits(bulk_nice=bulk_nice), tick_model=model)
        await engine.submit(*_start(ckpt, "fm-euler", 3, None, 8, 1, {}), None, 3)
        await engine.close()
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice
        return loop_nice

    loop_nice = asyncio.run(main())
    assert len(seen) == 3 and all(name.startswith("engine-forward") for name, _ in seen)
    assert {nice for _, nice in seen} == {min(19, loop_nice + bulk_nice)}


@pytest.mark.parametrize("bad", [-1, 20, 2.5, True])
def test_bulk_nice_out_of_range_is_refused_by_name(bad) -> None:
    with pytest.raises(ValueError, match="engine.bulk_nice must be an integer in"):
        EngineLimits.from_options(bulk_nice=bad)


class SlowWhenLong:
    """The net, holding calls of at least `long_rows` rows for `sleep_s` more (a long tick stays in the engine's
    thread a while); records (rows, thread name, start, end) of every call."""

    name = "slow-when-long"
    max_batch = None

    def __init__(self, net: torch.nn.Module, long_rows: int, sleep_s: float, concurrent_calls: bool = True) -> None:
        self.net, self.long_rows, self.sleep_s = net, long_rows, sleep_s
        self.concurrent_calls = concurrent_calls
        self.calls: list[tuple[int, str, float, float]] = []
        self.fail_below = 0  # calls of fewer rows raise

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        if x.shape[0] < self.fail_below:
            raise RuntimeError("small calls fail")
        out = self.net(x, t, y)
        if x.shape[0] >= self.long_rows:
            time.sleep(self.sleep_s)
        self.calls.append((int(x.shape[0]), threading.current_thread().name, start, time.perf_counter()))
        return out


LONG_CASE = ("moons-fm", "fm-euler", 3, None, None, 512, 7, {})
SHORT_CASE = ("moons-fm", "fm-euler", 4, None, None, 8, 8, {})


def _long_then_short(ckpt, backend, limits: EngineLimits):
    """A long request (512 rows, K = 3), then 20 ms later, while its first tick is in the engine's thread, a
    short one (8 rows, K = 4). The tick model says 512 rows take 50 ms (handed off), 8 rows well under the
    inline limit. Returns both results (or exceptions), the engine's stats and the loop's thread name."""
    model = TickModel([(1, 1e-4), (512, 0.05)])

    async def main():
        engine = Engine(backend, ckpt.null_label, limits, tick_model=model)
        subs = [_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]) for c in (LONG_CASE, SHORT_CASE)]
        long = asyncio.ensure_future(engine.submit(*subs[0], None, 3))
        await asyncio.sleep(0.02)
        short = asyncio.ensure_future(engine.submit(*subs[1], None, 4))
        results = await asyncio.gather(long, short, return_exceptions=True)
        stats = engine.stats()
        await engine.close()
        return results, stats, threading.current_thread().name

    return asyncio.run(main())


def test_express_lane_runs_a_short_request_beside_a_long_tick(ckpts) -> None:
    """With a backend that allows two calls at once, the short request's four evaluations run on the event
    loop while the long request's first tick is still in the engine's thread (held 300 ms); both get their
    solo samples, and the short one's rows never join a long tick."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    backend = SlowWhenLong(net, long_rows=256, sleep_s=0.3)
    (long, short), stats, loop_thread = _long_then_short(ckpt, backend, EngineLimits())
    torch.testing.assert_close(long.samples, _alone(ckpt, net, LONG_CASE))
    torch.testing.assert_close(short.samples, _alone(ckpt, net, SHORT_CASE))
    first_long = next(c for c in backend.calls if c[0] == 512)
    small = [c for c in backend.calls if c[0] == 8]
    assert [c[0] for c in backend.calls if c[0] != 8] == [512, 512, 512]  # the short rows joined no long tick
    assert len(small) == 4 and all(c[1] == loop_thread for c in small)
    assert first_long[1].startswith("engine-forward")
    assert all(first_long[2] < c[2] and c[3] < first_long[3] for c in small), (first_long, small)
    assert stats.express_ticks == 4


@pytest.mark.parametrize("why", ["backend not concurrent", "lane off", "fifo"])
def test_without_the_express_lane_the_short_request_waits_for_the_long_tick(ckpts, why) -> None:
    """A backend that does not allow two calls at once (TensorRT's), `express_lane: false`, or FIFO: no express
    tick runs, and the short request's first evaluation starts after the long tick it arrived during."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    backend = SlowWhenLong(net, long_rows=256, sleep_s=0.1, concurrent_calls=why != "backend not concurrent")
    limits = EngineLimits.from_options(
        express_lane=why != "lane off", scheduling="fifo" if why == "fifo" else "deadline"
    )
    (long, short), stats, _ = _long_then_short(ckpt, backend, limits)
    torch.testing.assert_close(long.samples, _alone(ckpt, net, LONG_CASE))
    torch.testing.assert_close(short.samples, _alone(ckpt, net, SHORT_CASE), atol=1e-5, rtol=1e-5)
    first_long = backend.calls[0]
    assert first_long[0] == 512
    assert all(c[2] >= first_long[3] for c in backend.calls[1:])
    assert stats.express_ticks == 0


def test_a_failing_express_tick_fails_its_request_only(ckpts) -> None:
    """The backend refuses calls of under 16 rows: the short request, ticking in the express lane, fails with
    that error; the long request beside it finishes with its solo samples."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    backend = SlowWhenLong(net, long_rows=256, sleep_s=0.1)
    backend.fail_below = 16
    (long, short), stats, _ = _long_then_short(ckpt, backend, EngineLimits())
    torch.testing.assert_close(long.samples, _alone(ckpt, net, LONG_CASE))
    assert isinstance(short, RuntimeError) and "small calls fail" in str(short)
    assert stats.express_ticks == 0 and stats.in_flight == 0


def test_a_short_request_left_out_of_express_ticks_still_advances(ckpts) -> None:
    """Starvation inside the lane. While a long tick (512 rows, held 500 ms) runs in the engine's thread, two
    express requests arrive: A (20 rows, K = 16, a deadline: first by EDF) and B (16 rows, K = 2, no
    deadline). Together they exceed the inline limit (about 30 rows by the model), so each express tick holds
    A alone while B waits; after `max_skip_ticks` (8) express ticks without B, B goes first. Both get their solo
    samples, and every express tick runs within the long tick's time."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    backend = SlowWhenLong(net, long_rows=256, sleep_s=0.5)
    model = TickModel([(1, 1e-4), (512, 0.05)])
    limits = EngineLimits()
    a_case = ("moons-fm", "fm-euler", 16, None, None, 20, 3, {})
    b_case = ("moons-fm", "fm-euler", 2, None, None, 16, 4, {})
    assert model.inline(20) and model.inline(16) and not model.inline(36)

    async def main():
        engine = Engine(backend, ckpt.null_label, limits, tick_model=model)
        long = asyncio.ensure_future(engine.submit(*_start(ckpt, "fm-euler", 3, None, 512, 7, {}), None, 3))
        await asyncio.sleep(0.02)
        a = asyncio.ensure_future(
            engine.submit(*_start(ckpt, *[a_case[i] for i in (1, 2, 4, 5, 6, 7)]), None, 16, time.perf_counter() + 5)
        )
        b = asyncio.ensure_future(engine.submit(*_start(ckpt, *[b_case[i] for i in (1, 2, 4, 5, 6, 7)]), None, 2))
        results = await asyncio.gather(long, a, b)
        stats = engine.stats()
        await engine.close()
        return results, stats

    (_, a, b), stats = asyncio.run(main())
    torch.testing.assert_close(a.samples, _alone(ckpt, net, a_case), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.samples, _alone(ckpt, net, b_case), atol=1e-5, rtol=1e-5)
    first_long = next(c for c in backend.calls if c[0] == 512)
    small = [c for c in backend.calls if c[0] < 256]
    assert limits.policy.max_skip_ticks == 8
    assert [c[0] for c in small[:8]] == [20] * 8  # A alone: B does not fit beside it
    assert small[8][0] != 20  # B's first evaluation (with A's rows cut to fit, if any), before A is done
    assert all(first_long[2] < c[2] and c[3] < first_long[3] for c in small)
    assert stats.express_ticks == len(small)


@pytest.mark.parametrize("lane", [True, False])
def test_a_short_request_beside_a_long_tick_is_predicted_by_its_lane(ckpts, lane) -> None:
    """While the long request's first tick (120 ms by the model, held 200 ms) runs in the engine's thread, a
    short request's predicted latency is, with the express lane, its 4 evaluations of its own 8-row tick;
    without the lane it also waits out the rest of the running tick."""
    ckpt = ckpts["moons-fm"]
    backend = SlowWhenLong(ckpt.net("ema"), long_rows=256, sleep_s=0.2)
    model = TickModel([(1, 1e-4), (512, 0.12)])  # 8 rows: about 2 ms, under the inline limit

    async def main():
        engine = Engine(backend, ckpt.null_label, EngineLimits.from_options(express_lane=lane), tick_model=model)
        long = asyncio.ensure_future(engine.submit(*_start(ckpt, "fm-euler", 3, None, 512, 7, {}), None, 3))
        await asyncio.sleep(0.02)
        # read together, before the long ticks are recorded: they teach the model that ticks take longer
        predicted, own, inline = engine.predict(8, 4).latency_s, 4 * model.tick_s(8), model.inline(8)
        await long
        await engine.close()
        return predicted, own, inline

    predicted, own, inline = asyncio.run(main())
    if lane:
        assert predicted == pytest.approx(own)
    else:
        assert inline and predicted > own + 0.05


class RecordingDecode:
    """A decode stage's decoder: a fixed linear map of each sample (2-D to 3-D), recording rows per call;
    fails while `fail` is set."""

    def __init__(self) -> None:
        self.weight = torch.tensor([[1.0, 0.5, -2.0], [0.0, 3.0, 1.0]])
        self.rows: list[int] = []
        self.fail = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("decoder broke")
        self.rows.append(int(x.shape[0]))
        return x @ self.weight


def test_the_decode_stage_decodes_requests_finished_together_in_one_call(ckpts) -> None:
    """Requests that finish in the same tick are decoded in one decoder call and each gets the decode of its
    own samples; one that finishes later gets a call of its own; a failed decode fails those requests only."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    cases = [("moons-fm", "fm-euler", 4, None, None, 3, 1, {}), ("moons-fm", "fm-euler", 4, 2.0, 1, 5, 2, {})]
    late = ("moons-fm", "fm-euler", 9, None, 0, 2, 3, {})
    solo = [_alone(ckpt, net, c) for c in [*cases, late]]
    decode = RecordingDecode()

    async def main():
        engine = Engine(RecordingForward(net), ckpt.null_label, decode=decode)
        subs = [engine.submit(*_start(ckpt, *c[1:3], c[4], c[5], c[6], c[7]), c[3]) for c in [*cases, late]]
        out = await asyncio.gather(*subs)
        decode.fail = True
        with pytest.raises(RuntimeError, match="decoder broke"):
            await engine.submit(*_start(ckpt, "fm-euler", 2, None, 4, 4, {}))
        decode.fail = False
        again = await engine.submit(*_start(ckpt, *late[1:3], late[4], late[5], late[6], late[7]))
        decodes = engine.decodes
        await engine.close()
        return out, again, decodes

    out, again, decodes = asyncio.run(main())
    assert decode.rows[:2] == [3 + 5, 2]  # the two K = 4 requests together, then the K = 9 one
    assert decodes == 3
    for res, ref in zip(out, solo, strict=True):
        torch.testing.assert_close(res.samples, ref @ decode.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.samples, solo[2] @ decode.weight, atol=1e-5, rtol=1e-5)


def test_a_decode_stage_is_counted_in_the_predicted_latency(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    model = TickModel([(1, 0.001), (64, 0.002)])
    decode_model = TickModel([(1, 0.01), (64, 0.05)])

    async def main():
        plain = Engine(RecordingForward(ckpt.net("ema")), ckpt.null_label, tick_model=model)
        staged = Engine(
            RecordingForward(ckpt.net("ema")),
            ckpt.null_label,
            tick_model=model,
            decode=RecordingDecode(),
            decode_model=decode_model,
        )
        return plain.predict(64, 10).latency_s, staged.predict(64, 10, samples=32).latency_s, staged

    plain, staged, engine = asyncio.run(main())
    assert staged == pytest.approx(plain + decode_model.tick_s(32))
    assert engine.alone_s(64, 10, 32) == pytest.approx(engine.alone_s(64, 10, 0) + decode_model.tick_s(32))
    assert engine.decode_s(1100) == pytest.approx(2 * decode_model.tick_s(512) + decode_model.tick_s(76))


def test_a_decode_in_progress_and_the_decodes_ahead_are_counted_in_a_new_requests_latency(ckpts) -> None:
    """While one request's decode runs (held), the engine's load carries what is left of it; a new request's
    predicted latency holds it, the backlog (`admission.drain_s`) does, and the load snapshot the edge
    predicts from (`admission.snapshot`) predicts the same for a request of the same samples."""
    from serving.policy import admission, routing

    ckpt = ckpts["moons-fm"]
    model = TickModel([(1, 0.001), (64, 0.002)])
    decode_model = TickModel([(1, 0.2), (64, 0.4)])  # 0.2 s + ~3 ms a row: far longer than the hold below
    entered, release = threading.Event(), threading.Event()

    def held_decode(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        release.wait(10)
        return x

    async def main():
        engine = Engine(
            RecordingForward(ckpt.net("ema")),
            ckpt.null_label,
            tick_model=model,
            decode=held_decode,
            decode_model=decode_model,
        )
        idle = engine.predict(64, 10, samples=64).latency_s
        expected_idle = 10 * model.tick_s(64) + decode_model.tick_s(64)  # before any tick or decode refits them
        job = asyncio.ensure_future(engine.submit(*_start(ckpt, "fm-euler", 2, None, 64, 1, {}), None, 2))
        while not entered.is_set():
            await asyncio.sleep(0.005)
        load = engine.load()
        loaded = engine.predict(64, 10, samples=64).latency_s
        # the request's own ticks and decode now: its two ticks refitted the tick model (no tick runs meanwhile)
        own = 10 * model.tick_s(64) + decode_model.tick_s(64)
        drain = admission.drain_s(load, model, engine.limits)
        snap = admission.snapshot(load, engine.clock(), model, engine.limits, "r", time.time(), 1.0, engine.decode_cost)
        seen = snap.latency_s(routing.state(64, 10, None, snap, 64), snap.taken_at)
        full = decode_model.tick_s(64)
        release.set()
        await job
        await engine.close()
        return idle, expected_idle, full, load, loaded, own, drain, seen

    idle, expected_idle, full, load, loaded, own, drain, seen = asyncio.run(main())
    assert idle == pytest.approx(expected_idle)
    assert 0.5 * full < load.decoding_s <= full  # what is left of the decode running now
    assert loaded == pytest.approx(own + load.decoding_s, rel=0.05)
    assert drain == pytest.approx(load.decoding_s)
    assert seen == pytest.approx(loaded, rel=0.05)


def test_a_request_the_express_lane_finishes_is_decoded_before_the_long_tick_ends(ckpts) -> None:
    """With a decode stage, the short request that ran in the express lane is decoded and answered while the
    long request's first tick is still in the engine's thread (held 300 ms), with the decode of its own samples."""
    ckpt = ckpts["moons-fm"]
    net = ckpt.net("ema")
    backend = SlowWhenLong(net, long_rows=256, sleep_s=0.3)
    decode = RecordingDecode()
    model = TickModel([(1, 1e-4), (512, 0.05)])

    async def main():
        engine = Engine(backend, ckpt.null_label, EngineLimits(), tick_model=model, decode=decode)
        subs = [_start(ckpt, c[1], c[2], c[4], c[5], c[6], c[7]) for c in (LONG_CASE, SHORT_CASE)]
        long = asyncio.ensure_future(engine.submit(*subs[0], None, 3))
        await asyncio.sleep(0.02)
        short = await engine.submit(*subs[1], None, 4)
        answered = time.perf_counter()
        await long
        await engine.close()
        return short, answered

    short, answered = asyncio.run(main())
    first_long = next(c for c in backend.calls if c[0] == 512)
    assert answered < first_long[3], (answered, first_long)
    torch.testing.assert_close(short.samples, _alone(ckpt, net, SHORT_CASE) @ decode.weight)


def test_closing_the_engine_cancels_requests_waiting_for_their_decode(ckpts) -> None:
    ckpt = ckpts["moons-fm"]
    entered, release = threading.Event(), threading.Event()

    def stuck_decode(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        release.wait(10)
        return x

    async def main():
        engine = Engine(RecordingForward(ckpt.net("ema")), ckpt.null_label, decode=stuck_decode)
        job = asyncio.ensure_future(engine.submit(*_start(ckpt, "fm-euler", 2, None, 3, 1, {})))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await engine.close()
        try:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(job, 5)
        finally:
            release.set()

    asyncio.run(main())


def test_the_decode_chunk_is_the_profiled_size_with_the_most_rows_per_second(ckpts) -> None:
    from serving.engine import best_decode_chunk

    assert best_decode_chunk([(1, 0.002), (64, 0.02), (256, 0.28)]) == 64  # 500, 3200, 914 rows/s
    assert best_decode_chunk([(1, 0.001), (64, 0.023), (256, 0.079)]) == 256
    decode = RecordingDecode()

    async def main():
        engine = Engine(RecordingForward(ckpts["moons-fm"].net("ema")), 2, decode=decode, decode_chunk=4)
        out = await engine.submit(*_start(ckpts["moons-fm"], "fm-euler", 2, None, 10, 1, {}))
        await engine.close()
        return out

    assert asyncio.run(main()).samples.shape == (10, 3) and decode.rows == [4, 4, 2]
