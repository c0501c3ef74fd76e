"""What the HTTP edge does for each route, apart from HTTP: find the model, check the request once, call its
replica through a handle (run once more if the replica died), and shape the answer.

The path of a request: `routes` (pydantic types) -> `SampleService.sample` (model lookup,
`SampleRequest.check` for the checks between fields, `sampling.request.validate` for what must fit the
model, or for steps "auto" the `candidates` from the model's quality profile) -> the door (`door`: a
fixed-steps request every replica would refuse by its last load snapshot is refused here) -> the model's
`ModelReplica.sample` through its handle (a validated `SampleSpec`) -> engine -> backend, and back as a
`SampleOutput`. Every refusal is an `ApiError` (`errors.refusal` for the replica's).

A deadline enters once, as an absolute unix time: when the request arrived plus its `deadline_ms`, where a
client's `X-Client-Sent-At` moves the arrival back to when it sent the request (`schemas.arrival`). The
replica is given that time less this model's path estimate (the time a request spends outside the engine:
hops, serialization, noise and data-space conversion, and under load the wait for a replica slot; a moving
average per model of what answers measured, `PathEstimate`), so that the way back fits; `deadline_met` is
judged against the time itself.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sampling.quality_profile import QualityProfile
from sampling.render import render_base64
from sampling.request import InvalidRequest, SampleSpec, validate
from serving.api.candidates import candidates
from serving.api.door import Door
from serving.api.errors import REFUSALS, REPLICA_LOST, refusal
from serving.api.schemas import ApiError, ModelInfo, SampleRequest
from serving.api.streaming import sse_events
from serving.metrics import DoorMetrics
from serving.replica import SampleOutput

PATH_EWMA = 0.2
PATH_INITIAL_S = 0.01
PATH_RELAX_S = 2.0  # without answers, the estimate's excess over PATH_INITIAL_S halves this often

T = TypeVar("T")


class PathEstimate:
    """Time outside the engine, per model: a moving average (PATH_EWMA) of what answers measured, whose
    excess over PATH_INITIAL_S halves every PATH_RELAX_S while no answer comes. Under a backlog the answers
    measure seconds of waiting for a replica slot; once that clears, deadline requests refused on the old
    estimate would bring no new answers to lower it, so it must also relax with time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._s, self._at = PATH_INITIAL_S, clock()

    def seconds(self) -> float:
        age = self.clock() - self._at
        return PATH_INITIAL_S + (self._s - PATH_INITIAL_S) * 0.5 ** (age / PATH_RELAX_S)

    def observe(self, seconds: float) -> None:
        now_s = self.seconds()
        self._s, self._at = now_s + PATH_EWMA * (max(0.0, seconds) - now_s), self.clock()


class SampleService:
    """The models behind the edge: their handles (Serve's, or `serving.local`'s in-process ones) and
    metadata, each one's quality profile and path estimate, and the door (`door.Door`; None with
    shed_at_door off) that refuses what their replicas' load snapshots say they would refuse."""

    def __init__(
        self,
        handles: dict[str, Any],
        infos: dict[str, dict[str, Any]],
        shed_at_door: bool = True,
        families: dict[str, list[str]] | None = None,
    ) -> None:
        self.handles = handles
        # A family: one name for several served models of the same data (a teacher and its distilled student);
        # a steps-"auto" request to it runs on the member whose profile and load promise the best quality.
        self.families = {name: list(members) for name, members in (families or {}).items()}
        self.infos = {name: ModelInfo.from_dict(info) for name, info in infos.items()}
        self.objectives = {name: info.objective_obj() for name, info in self.infos.items()}
        self.profiles = {
            name: QualityProfile.from_json(info.quality_profile)
            for name, info in self.infos.items()
            if info.quality_profile is not None
        }
        self.path = {name: PathEstimate() for name in self.infos}
        self.door = Door() if shed_at_door else None
        # The replicas' latest snapshots, for ranking a family's members: the door's own, or (shedding off) a
        # Door that only ranks and never refuses.
        self._outlook = self.door if self.door is not None else Door()
        self._door_metrics: DoorMetrics | None = None

    def info(self, model: str, field: str = "model") -> ModelInfo:
        info = self.infos.get(model)
        if info is None:
            if model in self.families:
                raise ApiError(
                    "steps",
                    f'{model!r} is a family of {self.families[model]}: it takes steps "auto" and deadline_ms (the '
                    "member is chosen for them); name a member for fixed steps or streaming",
                )
            served = sorted(self.infos) + sorted(self.families)
            raise ApiError(field, f"unknown model {model[:64]!r}; served: {served}", 404)
        return info

    async def sample(self, req: SampleRequest, t0: float, arrived: float) -> dict[str, Any]:
        """The response body of an unstreamed request that counts as arrived at `arrived` (unix time: when
        the client sent it, `schemas.arrival`); `t0`: when the route got it, on perf_counter (total_ms)."""
        if req.model in self.families and req.steps == "auto":
            return await self.sample_family(req, t0, arrived)
        info = self.info(req.model)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        deadline_s = req.check().deadline_s
        due = None if deadline_s is None else arrived + deadline_s
        handle = self.handles[req.model]
        path_s = self.path[req.model].seconds()  # the path around the engine, kept out of the engine's time
        if req.steps == "auto":
            assert due is not None and deadline_s is not None  # check() requires deadline_ms
            choices = candidates(req, info, self.objectives[req.model], self.profiles.get(req.model), seed)
            before_s = time.time() - arrived  # the deadline's time spent before the call
            # What the engine would have on a quiet service: a choice that fits that is refused for load (503).
            quiet_s = deadline_s - PATH_INITIAL_S
            out = await self.call(req.model, lambda: handle.sample_auto.remote(choices, due - path_s), quiet_s)
            self.observe(req.model, out)
            return await self.respond(req, seed, out, t0, due, before_s + path_s)
        spec = self.spec(req, info, seed)
        before_s = time.time() - arrived
        engine_due = None if due is None else due - path_s
        self.enter(req.model, spec, engine_due)
        out = await self.call(req.model, lambda: handle.sample.remote(spec, engine_due))
        self.observe(req.model, out)
        return await self.respond(req, seed, out, t0, due, before_s + path_s)

    async def sample_family(self, req: SampleRequest, t0: float, arrived: float) -> dict[str, Any]:
        """A steps-"auto" request to a family. Each member's candidates (its quality profile, its limits) and its
        promise: the quality its replicas' latest snapshots predict it would choose in time (`Door.outlook`), or,
        for a member not heard from lately, its profile's best (as an idle replica would choose). Members are
        asked in the order of their promises, each with a floor: only its candidates at or above the best
        promise of the member after it, so that a member whose replica can no longer do that in time (the
        outlook does not see the hop to it) refuses at once (422 / 503) and the next one runs the request: at most
        two calls, the first-ranked member at the runner-up's promise, then the runner-up as is. The response
        names the member that ran in `model` and the family in `family`."""
        deadline_s = req.check().deadline_s
        assert deadline_s is not None  # check() requires deadline_ms with steps "auto"
        due = arrived + deadline_s
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        options, refused = [], None
        for member in self.families[req.model]:
            mine = req.model_copy(update={"model": member})
            try:
                choices = candidates(mine, self.infos[member], self.objectives[member], self.profiles.get(member), seed)
            except ApiError as e:  # e.g. the member lacks the requested sampler, or min_quality is beyond it
                refused = refused or e
                continue
            # The replica gets `due - path` and starts its clock after the hop to it, about half the path.
            seen = self._outlook.outlook(member, choices, due - 1.5 * self.path[member].seconds())
            promise = seen if seen is not None else (max(c.quality for c in choices), 0.0)
            options.append(((promise[0], -promise[1]), member, mine, choices))
        if not options:
            assert refused is not None
            raise refused
        options.sort(key=lambda o: o[0], reverse=True)
        # At most two calls: the first-ranked member held to the runner-up's promise, then the runner-up as is.
        (_, first, first_req, first_choices), rest = options[0], options[1:]
        tries = [(first, first_req, first_choices)]
        if rest:
            floor = rest[0][0][0]
            tries = [(first, first_req, [c for c in first_choices if c.quality >= floor]), rest[0][1:]]
            tries = [t for t in tries if t[2]]
        wasted_s = 0.0  # spent on members that refused: not part of the path around the engine that answers
        for member, mine, choices in tries:
            handle, path_s = self.handles[member], self.path[member].seconds()
            before_s, started = time.time() - arrived, time.perf_counter()
            try:
                out = await self.call(
                    member,
                    lambda h=handle, c=choices, p=path_s: h.sample_auto.remote(c, due - p),
                    deadline_s - PATH_INITIAL_S,
                )
            except ApiError as e:
                if e.status not in (422, 503):
                    raise
                refused = e  # this member cannot make the deadline at its floor: the next may
                wasted_s += time.perf_counter() - started
                continue
            self.observe(member, out)
            body = await self.respond(mine, seed, out, t0, due, before_s + path_s, wasted_s)
            return {**body, "family": req.model}
        assert refused is not None
        raise refused

    def observe(self, model: str, out: SampleOutput) -> None:
        """The load snapshot an answer carries, for the door (and the family ranking)."""
        self._outlook.observe(model, out.snapshot)

    def enter(self, model: str, spec: SampleSpec, due: float | None) -> None:
        """Through the door (`door.Door`): the engine's own 503 when every replica of the model would refuse
        the request by its latest load, else it is counted as sent."""
        if self.door is None:
            return
        refused = self.door.refusal(model, spec.rows, spec.evaluations, due, spec.num_samples)
        if refused is not None:
            if self._door_metrics is None:  # made on first use, inside the replica's process
                self._door_metrics = DoorMetrics()
            self._door_metrics.refused(model)
            raise refusal(model, refused)
        self.door.sent(model, spec.rows, spec.evaluations, due, spec.num_samples)

    def spec(self, req: SampleRequest, info: ModelInfo, seed: int) -> SampleSpec:
        """The request as a `SampleSpec`, validated against the model."""
        spec = req.to_spec(seed)
        try:
            validate(spec, self.objectives[req.model], info.num_classes, info.limits)
        except InvalidRequest as e:
            raise ApiError(e.field, e.message) from None
        return spec

    async def stream(self, req: SampleRequest, t0: float) -> AsyncIterator[str]:
        """A streamed request's SSE events. The replica's first event is awaited here, before any byte is
        sent, so a refusal before any work (503, a dead replica run once more) is an ordinary JSON error."""
        info = self.info(req.model)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        preview_every = req.check().preview_every
        spec = self.spec(req, info, seed)
        handle = self.handles[req.model].options(stream=True)
        self.enter(req.model, spec, None)

        async def start() -> tuple[Any, Any]:
            events = handle.sample_stream.remote(spec, preview_every)
            try:
                return events, await events.__anext__()
            except BaseException:
                events.cancel()
                raise

        events, first = await self.call(req.model, start)
        return sse_events(req.model, events, first, lambda out: self.respond(req, seed, out, t0))

    async def respond(
        self,
        req: SampleRequest,
        seed: int,
        out: SampleOutput,
        t0: float,
        due: float | None = None,
        outside_s: float = 0.0,
        not_path_s: float = 0.0,
    ) -> dict[str, Any]:
        """The response body of a finished request, streamed or not. due: its deadline (unix time);
        outside_s: the time before the call and the predicted path around the engine (for predicted_ms);
        not_path_s: time since t0 that was not this answer's path (a family's refused members)."""
        image = await asyncio.to_thread(render_base64, out.samples) if req.format == "png" else None
        total_s = time.perf_counter() - t0
        self.path[req.model].observe(total_s - not_path_s - out.queue_s - out.compute_s)
        predicted_ms = None
        if out.predicted_s is not None and due is not None:
            predicted_ms = 1e3 * (outside_s + out.predicted_s)
        # Built as the response model's JSON directly: validating the samples again through SampleResponse
        # cost more than the rest of the route for large requests (the route still declares the model).
        return {
            "model": req.model,
            "sampler": out.sampler,
            "steps": out.steps,
            "num_samples": req.num_samples,
            "guidance": req.guidance,
            "class_label": req.class_label,
            "seed": seed,
            "nfe": out.nfe,
            "shape": list(out.samples.shape),
            "samples": None if image is not None else out.samples.tolist(),
            "image": image,
            "timing": {"queue_ms": 1e3 * out.queue_s, "compute_ms": 1e3 * out.compute_s, "total_ms": 1e3 * total_s},
            "deadline_ms": req.deadline_ms,
            "deadline_met": None if due is None else time.time() <= due,
            "predicted_ms": predicted_ms,
            "predicted_quality": out.quality,
            "family": None,
        }

    async def call(self, model: str, call: Callable[[], Awaitable[T]], quiet_s: float = 0.0) -> T:
        """`call()` awaited, once more if its replica died; refusals as ApiErrors (`errors.refusal`)."""
        try:
            try:
                return await call()
            except REPLICA_LOST:
                return await call()
        except REFUSALS as e:
            self._outlook.observe(model, getattr(e, "snapshot", None))
            raise refusal(model, e, quiet_s) from None

    def models(self) -> dict[str, Any]:
        return {
            "models": [info.to_json() for info in self.infos.values()],
            "families": [{"id": name, "members": members} for name, members in self.families.items()],
        }

    async def model(self, model_id: str) -> dict[str, Any]:
        if model_id in self.families:
            return {"id": model_id, "members": self.families[model_id]}
        info = self.info(model_id, "model_id")
        return {**info.to_json(), "replica_load": await self.handles[model_id].load.remote()}

    async def health(self) -> tuple[dict[str, Any], bool]:
        """Which model deployments answer within 5 s; True when all do."""
        names = list(self.handles)
        calls = [asyncio.wait_for(self.handles[n].load.remote(), 5.0) for n in names]
        results = await asyncio.gather(*calls, return_exceptions=True)
        down = [n for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)]
        return {"status": "ok" if not down else "unavailable", "models": names, "unavailable": down}, not down
