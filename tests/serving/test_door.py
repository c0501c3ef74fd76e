"""Shedding at the door (serving.api.door) on the policy's own objects, without Ray: the door's verdict is
the engine's admission on the same load, it never acts on a stale snapshot or while any replica it knows of
could take the request, and it counts what it sent since a snapshot."""

from __future__ import annotations

from serving.api.door import FRESH_S, Door
from serving.policy import admission
from serving.policy.limits import EngineLimits
from serving.policy.state import Load, RequestState
from serving.policy.tick_model import TickModel

MODEL = TickModel([(1, 1e-3 + 1e-5), (1000, 1e-3 + 1e-2)])  # 1 ms a tick plus 10 us a row
LIMITS = EngineLimits(max_wait_s=1.0)
ENGINE_NOW = 500.0  # the engine's clock when the snapshot is taken
TAKEN = 1_800_000_000.0  # unix time of the snapshot


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _load(evals: int, deadline_in: float | None = 60.0) -> Load:
    """Four 256-row requests with `evals` evaluations each, due `deadline_in` s after ENGINE_NOW (so, by EDF,
    ahead of a request without a deadline)."""
    deadline = None if deadline_in is None else ENGINE_NOW + deadline_in
    return Load([RequestState(256, evals, deadline, seq=i) for i in range(4)], (), 256, ENGINE_NOW - 0.001)


def _snapshot(load: Load, replica: str = "r1", taken: float = TAKEN) -> admission.Snapshot:
    return admission.snapshot(load, ENGINE_NOW, MODEL, LIMITS, replica, taken)


def test_the_door_refuses_exactly_what_the_engine_would() -> None:
    probes = [(256, 50, None), (256, 400, None), (16, 5, None), (512, 200, 0.5), (64, 20, 30.0), (1024, 100, None)]
    for evals, deadline_in in ((10, 60.0), (200, 60.0), (1000, 60.0), (1000, None), (200, 0.2)):
        load = _load(evals, deadline_in)
        door = Door(Clock(TAKEN + 0.05))
        door.observe("m", _snapshot(load))
        for rows, n, due_in in probes:
            due = None if due_in is None else TAKEN + due_in
            engine_deadline = None if due_in is None else ENGINE_NOW + due_in
            probe = RequestState(rows, n, engine_deadline)
            want = admission.refusal(admission.predict(probe, load, ENGINE_NOW + 0.05, MODEL, LIMITS), load, LIMITS)
            got = door.refusal("m", rows, n, due)
            assert (got is None) == (want is None), (evals, rows, n, due_in, got, want)
            if want is not None:
                assert got.retry_after == want.retry_after and got.message == want.message
    # and the heavy load refuses some probes, the light one none: the comparison above is not vacuous
    heavy, light = Door(Clock(TAKEN)), Door(Clock(TAKEN))
    heavy.observe("m", _snapshot(_load(1000)))
    light.observe("m", _snapshot(_load(10)))
    assert heavy.refusal("m", 256, 50, None) is not None and light.refusal("m", 256, 50, None) is None


def test_no_shedding_on_a_stale_snapshot_or_an_unknown_model() -> None:
    clock = Clock(TAKEN + 0.1)
    door = Door(clock)
    assert door.refusal("m", 256, 100, None) is None  # nothing heard yet
    door.observe("m", _snapshot(_load(1000)))
    assert door.refusal("m", 256, 100, None) is not None
    assert door.refusal("other", 256, 100, None) is None
    clock.now = TAKEN + FRESH_S + 0.01
    assert door.refusal("m", 256, 100, None) is None  # old news: the engine decides


def test_every_recent_replica_must_refuse() -> None:
    clock = Clock(TAKEN + 0.1)
    door = Door(clock)
    door.observe("m", _snapshot(_load(1000), "busy"))
    door.observe("m", _snapshot(Load([]), "idle"))
    assert door.refusal("m", 256, 100, None) is None  # the idle replica would take it
    door = Door(clock)
    door.observe("m", _snapshot(_load(1000), "busy"))
    door.observe("m", _snapshot(_load(1000), "quiet", TAKEN - 1.0))  # heard from, but not lately enough
    assert door.refusal("m", 256, 100, None) is None
    door.observe("m", _snapshot(_load(1000), "quiet", TAKEN))
    assert door.refusal("m", 256, 100, None) is not None


def test_requests_sent_since_the_snapshot_count_until_a_newer_one() -> None:
    clock = Clock(TAKEN + 0.01)
    door = Door(clock)
    door.observe("m", _snapshot(Load([])))
    assert door.refusal("m", 256, 100, None) is None
    sent = 0
    while door.refusal("m", 256, 100, None) is None and sent < 100:
        door.sent("m", 256, 100, None)
        sent += 1
    assert 1 < sent < 100  # an idle engine fills up with what the door sent it
    clock.now = TAKEN + 0.02
    door.observe("m", _snapshot(Load([]), taken=TAKEN + 0.02))  # newer, and those requests are not in it
    assert door.refusal("m", 256, 100, None) is None


def test_a_replica_gone_quiet_is_forgotten_and_holds_nothing_back() -> None:
    clock = Clock(TAKEN)
    door = Door(clock)
    door.observe("m", _snapshot(Load([]), "gone"))
    door.sent("m", 256, 50, None)
    clock.now = TAKEN + 10.0  # the first replica has not answered since
    door.observe("m", _snapshot(_load(1000), "live", TAKEN + 10.0))
    assert door.refusal("m", 256, 50, None) is not None  # only the live replica counts now
    assert not door._models["m"].sent  # the request sent before the live snapshot is not counted twice


def _candidates(rows: int) -> list:
    """A quality profile's worth of choices: quality rising with evaluations but not monotonically across
    samplers (a 12-evaluation choice beats a 15-evaluation one), as in the committed profiles."""
    from sampling.request import SampleSpec
    from serving.policy.step_budget import Candidate

    points = [(1, 0.04), (2, 0.09), (4, 0.26), (5, 0.63), (8, 0.83), (10, 0.91), (12, 0.85), (15, 0.93), (40, 0.9)]
    out = []
    for evals, quality in points:
        spec = SampleSpec("fm-euler", evals, rows // 2 if rows > 1 else 1)
        assert spec.evaluations == evals
        out.append(Candidate(spec, quality))
    return out


def test_outlook_picks_what_a_prediction_of_every_candidate_would() -> None:
    """Door.outlook bisects over evaluation counts; the answer equals predicting every candidate on the same
    snapshot (with the replica's calibration factor), for loads from idle to past every deadline; unknown models
    and replicas gone quiet give None."""
    door = Door(Clock(TAKEN + 0.05))
    assert door.outlook("m", _candidates(64), TAKEN + 1.0) is None
    seen = set()
    for evals, factor in ((1, 1.0), (50, 1.0), (200, 2.5), (1000, 1.0)):
        snap = admission.snapshot(_load(evals), ENGINE_NOW, MODEL, LIMITS, "r1", TAKEN, factor)
        door = Door(Clock(TAKEN + 0.05))
        door.observe("m", snap)
        for due_in in (0.005, 0.02, 0.1, 0.5, 5.0):
            cands = _candidates(64)
            now, due = TAKEN + 0.05, TAKEN + 0.05 + due_in
            fit = []
            for c in cands:
                probe = RequestState(c.spec.rows, c.spec.evaluations, ENGINE_NOW + 0.05 + due_in)
                s = factor * admission.predict(probe, _load(evals), ENGINE_NOW + 0.05, MODEL, LIMITS).latency_s
                if now + s <= due:
                    fit.append((c.quality, -s))
            want = max(fit) if fit else (-1.0, float("-inf"))
            got = door.outlook("m", cands, due)
            assert got[0] == want[0] and abs(-got[1] - want[1]) < 1e-9 if fit else got == (-1.0, float("inf"))
            seen.add(got[0])
    assert len(seen) >= 3  # idle and loaded snapshots gave different answers: the comparison is not vacuous
    quiet = Door(Clock(TAKEN + 10.0))
    quiet.observe("m", _snapshot(_load(10)))
    assert quiet.outlook("m", _candidates(64), TAKEN + 11.0) is None
