"""Shedding at the door: the HTTP edge refuses a request its model's replicas would refuse, without
calling them, from the load snapshots they send back with every answer.

Each answer of a model replica (a `SampleOutput` or its `Overloaded`) carries its engine's
`serving.policy.admission.Snapshot`. Before sending a fixed-steps request, the edge asks every replica of
the model it has heard from lately whether its engine would refuse it (`Snapshot.refusal`: the engine's own
admission rule on that load, with the requests this edge sent since the snapshot queued behind it), and
answers the engine's own 503 with its Retry-After when all of them would. It never sheds on old news: a
replica whose last snapshot is older than FRESH_S (an idle or new replica, or one that stopped answering)
makes the door let requests through, and the engine, which decides for itself, stays the authority. The
requests sent since a snapshot are counted only while one replica is known (with several, which one a
request reaches is the router's choice). Requests with steps "auto" are not shed here: the replica picks K
for the load, which is the point.

In front of that, `LoopLag` measures how late the Ingress replica's own event loop runs what is ready; while
it has been late on every recent probe, `middleware.ShedWhenBusy` refuses new sampling requests before their
body is read or parsed: requests past what this replica's CPU can take in are answered at once instead of
waiting in its event loop behind each other.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from serving.policy import routing
from serving.policy.admission import Snapshot
from serving.policy.routing import best_fit, state
from serving.policy.step_budget import Candidate
from serving.refusals import Overloaded

FRESH_S = 0.5  # a snapshot older than this is not acted on
SEEN_S = 5.0  # replicas heard from within this are the ones whose snapshots must all agree
MAX_SENT = 4096  # requests remembered as sent since the last snapshot


@dataclass
class _Model:
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    sent: deque[tuple[float, int, int, float | None, int]] = field(default_factory=lambda: deque(maxlen=MAX_SENT))


class Door:
    """Per model: the latest snapshot of each replica and the requests sent since."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._models: dict[str, _Model] = {}

    def observe(self, model: str, snapshot: Snapshot | None) -> None:
        """A replica's answer came back with `snapshot` (None: it carried none)."""
        if snapshot is None:
            return
        routing.BOARD.observe(snapshot)  # what this process's routers rank replicas by (serving.router)
        m = self._models.setdefault(model, _Model())
        known = m.snapshots.get(snapshot.replica)
        if known is None or snapshot.taken_at >= known.taken_at:
            m.snapshots[snapshot.replica] = snapshot
        now = self.clock()
        for replica in [r for r, s in m.snapshots.items() if now - s.taken_at > SEEN_S]:  # gone or idle
            del m.snapshots[replica]
        if not m.snapshots:
            return
        newest = min(s.taken_at for s in m.snapshots.values())
        while m.sent and m.sent[0][0] <= newest:  # in every snapshot by now, or done
            m.sent.popleft()

    def refusal(
        self, model: str, rows: int, evaluations: int, due: float | None, samples: int = 0
    ) -> Overloaded | None:
        """The engine's refusal of a request of `rows` rows x `evaluations` evaluations (`samples` images to
        decode where the model has a decode stage) due at unix time `due` (or None) when every replica of
        `model` heard from lately would refuse it, by a fresh snapshot; else None (the request goes on)."""
        m = self._models.get(model)
        if m is None:
            return None
        now = self.clock()
        recent = [s for s in m.snapshots.values() if now - s.taken_at <= SEEN_S]
        if not recent or any(now - s.taken_at > FRESH_S for s in recent):
            return None
        refusals = []
        for s in recent:
            sent = [] if len(recent) > 1 else [state(r, e, d, s, n) for t, r, e, d, n in m.sent if t > s.taken_at]
            refused = s.refusal(state(rows, evaluations, due, s, samples), now, sent)
            if refused is None:
                return None
            refusals.append(refused)
        return min(refusals, key=lambda r: r.retry_after)

    def outlook(self, model: str, candidates: list[Candidate], due: float) -> tuple[float, float] | None:
        """What `model`'s replicas would choose for a steps-"auto" request due at unix time `due`, by their latest
        snapshots (fresh or not: this ranks the members of a family, it refuses nothing): (quality, predicted
        seconds) of the best candidate predicted to finish in time on the best replica, (-1.0, inf) when none
        would, None when no replica has been heard from within SEEN_S (an idle or new deployment)."""
        m = self._models.get(model)
        now = self.clock()
        recent = [] if m is None else [s for s in m.snapshots.values() if now - s.taken_at <= SEEN_S]
        if not recent:
            return None
        best = (-1.0, float("inf"))
        for s in recent:
            sent = [] if len(recent) > 1 else [state(r, e, d, s, n) for t, r, e, d, n in m.sent if t > s.taken_at]
            fit = best_fit(s, candidates, due, now, sent)
            if fit is not None and (fit[0], -fit[1]) > (best[0], -best[1]):
                best = fit[:2]
        return best

    def sent(self, model: str, rows: int, evaluations: int, due: float | None, samples: int = 0) -> None:
        """A request was sent to `model`'s replicas now."""
        self._models.setdefault(model, _Model()).sent.append((self.clock(), rows, evaluations, due, samples))


class LoopLag:
    """How late the running event loop wakes a sleeper: a probe task sleeps `period_s` again and again and
    keeps its last `window` overshoots. `busy(limit_s)` holds when every one of them is over `limit_s`, so a
    single long callback (a GC pause, a large response being encoded) delays one probe only and sheds
    nothing, while a loop with more ready work than time stays late on every probe (shedding starts about
    `window` lags into an overload). Starts on first use, inside the loop it measures."""

    def __init__(self, period_s: float = 0.01, window: int = 3) -> None:
        self.period_s = period_s
        self.lags: deque[float] = deque([0.0] * window, maxlen=window)
        self._task: asyncio.Task | None = None

    def busy(self, limit_s: float) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._probe())
        return min(self.lags) > limit_s

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period_s)
            self.lags.append(loop.time() - t0 - self.period_s)
