"""Model families: one name over a teacher and its distilled student, steps "auto" choosing the member.

In process: the Ingress's `SampleService` over real `ModelReplica`s of the committed moons-fm and
moons-fm-reflow (`serving.local`, no Ray), so the load on each member is real engine load. Over HTTP on Ray:
tests/serving/test_app_e2e.py's stepserve_url has no student, so one small application here."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from serving.api.schemas import ApiError, SampleRequest
from serving.api.service import SampleService
from serving.app import AppArgs, check_families, model_replicas
from serving.local import local_models
from tests.conftest import ROOT
from tests.serving.conftest import SMALL_REPLICA, ServeCluster

TEACHER, STUDENT, FAMILY = "moons-fm", "moons-fm-reflow", "moons-fm-family"
# Wide ticks, so that a loaded teacher's ticks are long (8 guided 1 024-sample requests: 16 384 rows a tick), and
# no express lane (which would tick a small request apart from them: tests/serving/test_engine.py).
ENGINE = {"max_wait_s": 60.0, "max_in_flight": 64, "max_queue": 64, "max_rows_per_tick": 16384, "express_lane": False}


def _args(**extra) -> AppArgs:
    models = {m: {"path": str(ROOT / "models" / m)} for m in (TEACHER, STUDENT, "digits-fm")}
    return AppArgs.model_validate({"models": models, "engine": ENGINE, "limits": {"max_num_samples": 1024}, **extra})


@pytest.fixture(scope="module")
def infos_and_replicas() -> tuple[dict, dict]:
    replicas, infos = model_replicas(_args())
    return replicas, infos


@pytest.mark.parametrize(
    ("families", "message"),
    [
        ({TEACHER: [TEACHER, STUDENT]}, "already a model id"),
        ({FAMILY: [TEACHER]}, "two or more distinct members"),
        ({FAMILY: [TEACHER, TEACHER]}, "two or more distinct members"),
        ({FAMILY: [TEACHER, "nope"]}, "['nope'] not among the served models"),
        ({FAMILY: [TEACHER, "digits-fm"]}, "digits-fm has data_kind digits"),
    ],
)
def test_a_family_that_cannot_be_served_is_refused_by_name(infos_and_replicas, families, message) -> None:
    _, infos = infos_and_replicas
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        check_families(families, infos)
    assert "families." in str(e.value)


def _request(**body) -> SampleRequest:
    return SampleRequest.model_validate(
        {"model": FAMILY, "sampler": "auto", "steps": "auto", "num_samples": 256, **body}
    )


async def _sample(service: SampleService, req: SampleRequest) -> dict:
    return await service.sample(req, time.perf_counter(), time.time())


def test_family_requests_pick_a_member_and_route_around_a_loaded_teacher(infos_and_replicas, serve_cluster) -> None:
    """Idle, a family request runs on a member and says which; the member named directly with the same seed,
    sampler and K gives the same samples. With the teacher's engine busy, a deadline the teacher could meet only
    at a small K (or not at all: it answers 503) goes to the student, whose few-step quality beats that.
    (`serve_cluster`: the replicas' metrics need Ray, and this process's Ray is the session's.)"""
    replicas, infos = infos_and_replicas
    members = {m: replicas[m] for m in (TEACHER, STUDENT)}

    async def main() -> dict:
        service = SampleService(
            local_models(members), {m: infos[m] for m in members}, families={FAMILY: [TEACHER, STUDENT]}
        )
        idle = await _sample(service, _request(deadline_ms=5000, seed=7))
        direct = await _sample(
            service,
            SampleRequest(model=idle["model"], sampler=idle["sampler"], steps=idle["steps"], num_samples=256, seed=7),
        )
        # Load the teacher: long requests in its engine (they run for seconds), and one short answered request so
        # that the edge holds a snapshot of that load (every answer carries one).
        heavy = SampleRequest(model=TEACHER, sampler="fm-rk4", steps=100, num_samples=1024, guidance=1.5, class_label=0)
        background = [asyncio.create_task(_sample(service, heavy.model_copy(update={"seed": s}))) for s in range(8)]
        await asyncio.sleep(0.5)
        await _sample(service, SampleRequest(model=TEACHER, sampler="fm-euler", steps=1, num_samples=1, seed=0))
        # 40 ms: the loaded teacher fits a few evaluations (its profile: 0.26 at 4 NFE, 0.91 needs 10), the idle
        # student its best (0.83 at 1 NFE, 0.87 at 8).
        deadline = 40
        family = await _sample(service, _request(deadline_ms=deadline, seed=8))
        try:
            teacher_alone = await _sample(service, _request(model=TEACHER, deadline_ms=deadline, seed=8))
        except ApiError as e:  # nothing of the teacher's fits the deadline under this load: a 503
            assert e.status == 503, e.message
            teacher_alone = {"model": TEACHER, "family": None, "predicted_quality": 0.0}
        for t in background:
            t.cancel()
        return {"idle": idle, "direct": direct, "family": family, "teacher": teacher_alone, "service": service}

    got = asyncio.run(main())
    idle, direct = got["idle"], got["direct"]
    # Idle (no snapshot yet), the member whose profile promises the most: the teacher (0.93 against 0.87).
    assert idle["family"] == FAMILY and idle["model"] == TEACHER
    assert direct["family"] is None and direct["samples"] == idle["samples"]
    family, teacher = got["family"], got["teacher"]
    print(
        "DBG",
        {k: family.get(k) for k in ("model", "sampler", "steps", "predicted_quality", "deadline_met", "predicted_ms")},
        {k: teacher.get(k) for k in ("model", "sampler", "steps", "predicted_quality", "deadline_met")},
        idle["model"],
        idle["sampler"],
        idle["steps"],
    )
    assert family["family"] == FAMILY and family["model"] == STUDENT, family["model"]
    assert teacher["model"] == TEACHER and teacher["family"] is None
    assert family["predicted_quality"] > teacher["predicted_quality"], (family, teacher)
    listed = got["service"].models()["families"]
    assert listed == [{"id": FAMILY, "members": [TEACHER, STUDENT]}]


def test_a_family_takes_only_steps_auto(infos_and_replicas) -> None:
    _, infos = infos_and_replicas
    service = SampleService({}, {m: infos[m] for m in (TEACHER, STUDENT)}, families={FAMILY: [TEACHER, STUDENT]})
    fixed = SampleRequest(model=FAMILY, sampler="fm-euler", steps=4, num_samples=4)
    for call in (_sample(service, fixed), service.stream(fixed, time.perf_counter())):
        with pytest.raises(ApiError) as e:
            asyncio.run(call)
        assert e.value.status == 422 and e.value.field == "steps" and "family" in e.value.message
    with pytest.raises(ApiError) as e:
        asyncio.run(_sample(service, fixed.model_copy(update={"model": "moons-fm-famly"})))
    assert e.value.status == 404 and FAMILY in e.value.message  # the unknown-model error lists the families


@pytest.fixture(scope="module")
def family_url(serve_cluster: ServeCluster) -> str:
    models = {m: {"path": str(ROOT / "models" / m)} for m in (TEACHER, STUDENT)}
    args = {
        "models": models,
        "families": {FAMILY: [TEACHER, STUDENT]},
        "engine": {"max_wait_s": 60.0},
        "limits": {"max_num_samples": 256},
        "deployment_options": {n: SMALL_REPLICA for n in (TEACHER, STUDENT, "Ingress")},
    }
    yield serve_cluster.deploy("family", "/family", args)
    serve_cluster.delete("family")


def test_a_family_over_http(family_url: str) -> None:
    with httpx.Client(base_url=family_url, timeout=60) as c:
        listed = c.get("/v1/models").json()
        assert listed["families"] == [{"id": FAMILY, "members": [TEACHER, STUDENT]}]
        assert c.get(f"/v1/models/{FAMILY}").json() == {"id": FAMILY, "members": [TEACHER, STUDENT]}
        body = {"model": FAMILY, "sampler": "auto", "steps": "auto", "deadline_ms": 2000, "num_samples": 16, "seed": 3}
        r = c.post("/v1/samples", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["family"] == FAMILY and got["model"] in (TEACHER, STUDENT) and got["shape"] == [16, 2]
        fixed = c.post("/v1/samples", json={**body, "steps": 4, "sampler": "fm-euler", "deadline_ms": 5000})
        assert fixed.status_code == 422 and fixed.json()["error"]["field"] == "steps", fixed.text


def test_committed_family_members_share_data() -> None:
    """The shipped family (deploy/serve.yaml) passes the build's checks with the committed checkpoints."""
    import yaml

    apps = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())["applications"]
    (app,) = [a for a in apps if a["route_prefix"] == "/"]
    args = AppArgs.model_validate({**app["args"], "models_dir": str(ROOT / "models")})
    _, infos = model_replicas(args)
    check_families(args.families, infos)
    assert all(infos[m]["quality_profile"] is not None for m in args.families[FAMILY])


def test_a_fair_share_makes_a_burst_of_auto_requests_choose_cheaper(infos_and_replicas, serve_cluster) -> None:
    """engine.auto_utilization on a real replica (digits-fm, a DiT): a burst of 24 steps-"auto" requests of 16
    samples with a loose deadline. The greedy replica gives each the best quality that fits (the most
    evaluations); the one with a fair share holds them, once it has seen two arrivals, to fewer evaluations,
    every request still answered in time. The share is small (utilization 0.01: at most 0.01 / (24 / 5 s) =
    2 ms for any spread of the burst's arrivals up to the rate's 5 s window, under any choice's time alone)
    so that the verdict does not hang on how fast this machine takes the burst in (at utilization 1.0 the
    share, 0.5 s / arrivals so far, was above the largest choice's time for most of a burst taken in slowly)."""
    replicas, infos = infos_and_replicas
    model = "digits-fm"
    shared = {**replicas[model], "name": "shared", "engine": {**ENGINE, "auto_utilization": 0.01}}

    async def burst(service: SampleService, name: str) -> list[dict]:
        reqs = [_request(model=name, deadline_ms=20_000, num_samples=16, seed=s) for s in range(24)]
        return await asyncio.gather(*(_sample(service, r) for r in reqs))

    async def main() -> tuple[list[dict], list[dict]]:
        service = SampleService(
            local_models({model: replicas[model], "shared": shared}),
            {model: infos[model], "shared": {**infos[model], "id": "shared"}},
        )
        return await burst(service, model), await burst(service, "shared")

    greedy, fair = asyncio.run(main())
    assert all(r["deadline_met"] for r in greedy + fair)
    greedy_nfe = sorted(r["nfe"] for r in greedy)
    fair_nfe = sorted(r["nfe"] for r in fair)
    # (the first arrivals, before the replica has seen the rate, are not held)
    assert fair_nfe[len(fair_nfe) // 2] < greedy_nfe[len(greedy_nfe) // 2], (greedy_nfe, fair_nfe)
    assert sum(fair_nfe) < 0.8 * sum(greedy_nfe), (greedy_nfe, fair_nfe)
