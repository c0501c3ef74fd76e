"""The application end to end on real Ray Serve over real HTTP: determinism under batching, the
metadata endpoints, PNG output, seeds, client disconnects and overload."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from sampling import guidance, samplers
from sampling.driver import run_sampler
from sampling.request import initial_noise
from tests.serving.conftest import ServeCluster, app_args
from tests.serving.test_metrics import scrape
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


# Requests that differ in model, sampler, K, w, label and sample count.
def _req(model: str, sampler: str, steps: int, n: int, seed: int, **extra) -> dict:
    return {"model": model, "sampler": sampler, "steps": steps, "num_samples": n, "seed": seed, **extra}


DISTINCT = [
    _req("moons-fm", "fm-euler", 10, 5, 1),
    _req("moons-fm", "fm-rk4", 4, 3, 2, guidance=2.0, class_label=1),
    _req("moons-fm", "fm-euler", 25, 17, 3, class_label=0),
    _req("moons-ddpm", "ddpm", 15, 4, 4),
    _req("moons-ddpm", "ddim", 8, 6, 5, eta=0.7, guidance=1.5, class_label=0),
    _req("moons-ddpm", "ddim", 30, 2, 6, spacing="leading"),
    _req("digits-fm", "fm-euler", 6, 3, 7, guidance=3.0, class_label=7),
    _req("digits-ddpm", "ddim", 5, 2, 8),
]


def _others(n: int) -> list[dict]:
    """n more requests, varied, to surround the distinct ones."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = dict(DISTINCT[i % len(DISTINCT)])
        base.update(seed=1000 + i, steps=int(rng.integers(3, 40)), num_samples=int(rng.integers(1, 20)))
        out.append(base)
    return out


async def _post_all(base: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/samples", json=b) for b in bodies))


def _close(a: list, b: list) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_samples_alone_equal_samples_amid_twenty_others(stepserve_url: str, tiny_checkpoints) -> None:
    alone = []
    with httpx.Client(base_url=stepserve_url, timeout=120) as c:
        for body in DISTINCT:
            r = c.post("/v1/samples", json=body)
            assert r.status_code == 200, r.text
            alone.append(r.json())
    mixed = asyncio.run(_post_all(stepserve_url, [*DISTINCT, *_others(20)]))
    assert all(r.status_code == 200 for r in mixed), [r.text for r in mixed if r.status_code != 200]
    for body, solo, amid in zip(DISTINCT, alone, mixed[: len(DISTINCT)], strict=True):
        got = amid.json()
        assert got["seed"] == body["seed"] and got["shape"] == solo["shape"]
        assert got["nfe"] == solo["nfe"]
        _close(got["samples"], solo["samples"])

    # Independent reference: the bare sampler driven in-process, denormalized, for two of them.
    for body, solo in zip(DISTINCT[1:2] + DISTINCT[4:5], alone[1:2] + alone[4:5], strict=True):
        ckpt = load_checkpoint(tiny_checkpoints[body["model"]])
        noise, gen = initial_noise(ckpt.data_shape, body["num_samples"], body["seed"])
        opts = {"eta": body["eta"]} if "eta" in body else {}
        if ckpt.default_spacing is not None:  # the service samples on the checkpoint's default spacing
            opts["spacing"] = body.get("spacing", ckpt.default_spacing)
        sampler = samplers.start(body["sampler"], ckpt.objective, noise, body["steps"], gen, **opts)
        y = guidance.labels(body["num_samples"], body.get("class_label"), ckpt.null_label)
        x = run_sampler(sampler, ckpt.net("ema"), y, body.get("guidance"), ckpt.null_label)
        _close(solo["samples"], ckpt.normalization.denormalize(x).numpy())
        evals = body["steps"] * samplers.SAMPLERS[body["sampler"]].evals_per_step
        assert solo["nfe"] == evals * (2 if body.get("guidance") is not None else 1)


def test_concurrent_requests_share_ticks(stepserve_url: str) -> None:
    """Ten K = 30 requests sent together take far fewer than 10 x 30 engine ticks."""
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        before = c.get("/v1/models/moons-fm").json()["replica_load"]["ticks"]
    bodies = [{"model": "moons-fm", "sampler": "fm-euler", "steps": 30, "num_samples": 4, "seed": s} for s in range(10)]
    assert all(r.status_code == 200 for r in asyncio.run(_post_all(stepserve_url, bodies)))
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        after = c.get("/v1/models/moons-fm").json()["replica_load"]["ticks"]
    assert 30 <= after - before < 10 * 30


def test_metadata_health_and_docs(stepserve_url: str) -> None:
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["models"]}
        assert set(models) == {"moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm"}
        assert models["moons-fm"]["samplers"] == ["fm-euler", "fm-heun", "fm-rk4", "fm-unipc", "fm-dopri5"]
        assert models["digits-ddpm"]["samplers"] == ["ddpm", "ddim", "dpm-solver++", "unipc", "heun"]
        assert models["digits-fm"]["data_shape"] == [1, 8, 8] and models["digits-fm"]["classes"] == list(range(10))
        assert models["moons-ddpm"]["limits"]["max_num_samples"] == 256
        one = c.get("/v1/models/digits-fm").json()
        assert one["kind"] == "fm" and one["net"]["kind"] == "dit" and "replica_load" in one
        missing = c.get("/v1/models/nope")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "model_id"
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()
        assert "/v1/samples" in schema["paths"] and "SampleRequest" in schema["components"]["schemas"]


@pytest.mark.parametrize("model", ["moons-fm", "digits-fm"])
def test_png_format(stepserve_url: str, model: str) -> None:
    body = {"model": model, "sampler": "fm-euler", "steps": 3, "num_samples": 6, "format": "png"}
    r = httpx.post(f"{stepserve_url}/v1/samples", json=body, timeout=60)
    assert r.status_code == 200
    got = r.json()
    assert got["samples"] is None and base64.b64decode(got["image"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_seed_is_drawn_and_reproduces(stepserve_url: str) -> None:
    body = {"model": "digits-fm", "sampler": "fm-euler", "steps": 4, "num_samples": 2}
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        first = c.post("/v1/samples", json=body).json()
        again = c.post("/v1/samples", json={**body, "seed": first["seed"]}).json()
    assert 0 <= first["seed"] < 2**63
    _close(first["samples"], again["samples"])
    assert np.min(first["samples"]) >= 0.0 and np.max(first["samples"]) <= 1.0  # images clipped to [0, 1]


def replica_load(base: str, model: str) -> dict:
    """The model's `replica_load` as GET /v1/models/{model} shows it."""
    return httpx.get(f"{base}/v1/models/{model}", timeout=30).json()["replica_load"]


def test_client_disconnect_drops_the_request(stepserve_url: str) -> None:
    """A 4000-evaluation request whose client hangs up leaves the engine long before it would finish."""
    body = {"model": "digits-fm", "sampler": "fm-rk4", "steps": 1000, "num_samples": 128, "seed": 1}
    ticks_before = replica_load(stepserve_url, "digits-fm")["ticks"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stepserve_url}/v1/samples", json=body, timeout=httpx.Timeout(30, read=2.0))
    ticks_then = replica_load(stepserve_url, "digits-fm")["ticks"]
    assert ticks_then > ticks_before  # it was running when the client left
    deadline = time.monotonic() + 20
    while (load := replica_load(stepserve_url, "digits-fm"))["in_flight"] + load["queued"] > 0:
        assert time.monotonic() < deadline, f"request still in the engine after the client left: {load}"
        time.sleep(0.2)
    # The replica ran nothing else meanwhile, so one tick is one of this request's evaluations: had it run to its
    # end, it would have taken all 4000 ticks.
    assert load["ticks"] - ticks_before < 4000, load


def test_overload_gets_503_quickly_and_accepted_requests_finish(
    serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]
) -> None:
    args = app_args(tiny_checkpoints, models=("moons-fm",), engine={"max_in_flight": 2, "max_queue": 2})
    base = serve_cluster.deploy("tight", "/tight", args)
    body = {"model": "moons-fm", "sampler": "fm-rk4", "steps": 400, "num_samples": 8}

    async def one(client: httpx.AsyncClient, seed: int) -> tuple[int, float, httpx.Response]:
        t0 = time.perf_counter()
        r = await client.post("/v1/samples", json={**body, "seed": seed})
        return r.status_code, time.perf_counter() - t0, r

    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            return await asyncio.gather(*(one(client, s) for s in range(12)))

    try:
        results = asyncio.run(main())
        ok = [(t, r) for s, t, r in results if s == 200]
        refused = [(t, r) for s, t, r in results if s == 503]
        assert len(ok) == 4 and len(refused) == 8, [s for s, _, _ in results]
        assert max(t for t, _ in refused) < min(t for t, _ in ok)  # refused before any accepted one finished
        for _, r in refused:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["status"] == 503
        for _, r in ok:
            assert r.json()["nfe"] == 400 * 4
        assert httpx.post(f"{base}/v1/samples", json={**body, "steps": 2}, timeout=60).status_code == 200
    finally:
        serve_cluster.delete("tight")


def test_replica_sets_torch_threads_to_its_cpus(stepserve_url: str, tiny_checkpoints) -> None:
    """A model replica sizes torch's pool to the CPUs Ray gave it, whatever the process default was."""
    import ray

    from serving.replica import ModelReplica

    @ray.remote
    def threads_after_replica_start(path: str) -> int:
        torch.set_num_threads(7)  # a default that differs from the assignment
        ModelReplica("moons-fm", path)
        return torch.get_num_threads()

    path = str(tiny_checkpoints["moons-fm"])
    assert ray.get(threads_after_replica_start.options(num_cpus=2).remote(path)) == 2
    assert ray.get(threads_after_replica_start.options(num_cpus=0.5).remote(path)) == 1


def test_single_hop_answers_as_the_two_hop_application(
    serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path], stepserve_url: str
) -> None:
    """`single_hop`, one model: the application is that model's `ModelIngress` (its engine behind its own HTTP
    edge). Same samples for the same seed, same refusals, the replica's load on GET /v1/models/{id}, healthy.
    Another application whose `models` name it by `application` sends its requests to that same replica
    (two hops: its Ingress, then the handle), with the same answers."""
    args = {**app_args(tiny_checkpoints, models=("moons-fm",)), "single_hop": True}
    args["deployment_options"] = {"moons-fm": {"ray_actor_options": {"num_cpus": 0.5}}}
    url = serve_cluster.deploy("onehop", "/onehop", args)
    via = app_args(tiny_checkpoints, models=("moons-fm", "moons-ddpm"))
    via["models"]["moons-fm"]["application"] = "onehop"
    via_url = serve_cluster.deploy("via", "/via", via)
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 8, "num_samples": 16, "seed": 5}
    before = scrape(serve_cluster.metrics_url)
    with httpx.Client(timeout=60) as c:
        one, two = c.post(f"{url}/v1/samples", json=body), c.post(f"{stepserve_url}/v1/samples", json=body)
        assert one.status_code == two.status_code == 200, one.text
        a, b = one.json(), two.json()
        assert a.keys() == b.keys() and a["nfe"] == b["nfe"] == 8 and a["shape"] == [16, 2]
        np.testing.assert_array_equal(np.asarray(a["samples"]), np.asarray(b["samples"]))
        bad = c.post(f"{url}/v1/samples", json={**body, "sampler": "ddim"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "sampler", bad.text
        other = c.post(f"{url}/v1/samples", json={**body, "model": "digits-fm"})
        assert other.status_code == 404 and other.json()["error"]["field"] == "model"
        ticks = c.get(f"{url}/v1/models/moons-fm").json()["replica_load"]["ticks"]
        assert ticks >= 8
        assert c.get(f"{url}/healthz").json() == {"status": "ok", "models": ["moons-fm"], "unavailable": []}
        # The other application: its moons-fm requests run on onehop's replica (its ticks grow by the steps).
        routed = c.post(f"{via_url}/v1/samples", json=body)
        assert routed.status_code == 200, routed.text
        np.testing.assert_array_equal(np.asarray(routed.json()["samples"]), np.asarray(a["samples"]))
        assert c.get(f"{url}/v1/models/moons-fm").json()["replica_load"]["ticks"] == ticks + 8
        assert c.get(f"{via_url}/v1/models/moons-fm").json()["replica_load"]["ticks"] == ticks + 8
        health = c.get(f"{via_url}/healthz").json()
        assert health == {"status": "ok", "models": ["moons-fm", "moons-ddpm"], "unavailable": []}
        bad = c.post(f"{via_url}/v1/samples", json={**body, "sampler": "ddim"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "sampler", bad.text

    # The edge's request metrics count the requests of an application at a route prefix too (the middleware
    # matches the path below the prefix): onehop's own route got one 200 and one 422 for moons-fm.
    def requests(samples: list, status: str) -> float:
        want = {"application": "onehop", "model": "moons-fm", "status": status}
        name = "ray_stepserve_requests_total"
        return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in want.items()))

    deadline = time.monotonic() + 60  # Ray's agent exports every metrics_report_interval_ms (1 s here)
    while True:
        after = scrape(serve_cluster.metrics_url)
        got = [requests(after, s) - requests(before, s) for s in ("200", "422")]
        if got == [1, 1] or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert got == [1, 1]
    serve_cluster.delete("via")
    serve_cluster.delete("onehop")
