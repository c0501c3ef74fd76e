"""Load shedding, timeouts, the work cap and replica loss, on a real local Ray over real HTTP.

Loops are bounded in count and time; all traffic goes to 127.0.0.1."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import SMALL_REPLICA, ServeCluster, app_args
from tests.serving.test_autoscale import running_replicas, wait_for
from tests.serving.test_metrics import scrape

pytestmark = pytest.mark.slow

BODY = {"model": "moons-fm", "sampler": "fm-euler", "steps": 50, "num_samples": 256}
MAX_WAIT_S = 1.0


async def _timed(client: httpx.AsyncClient, body: dict) -> tuple[str, float, httpx.Response | None]:
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/samples", json=body)
    except httpx.TimeoutException:
        return "timeout", time.perf_counter() - t0, None
    return str(r.status_code), time.perf_counter() - t0, r


async def _closed(url: str, clients: int, seconds: float) -> list[tuple[str, float, httpx.Response | None]]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            k = i
            while time.perf_counter() < end:
                out.append(await _timed(c, {**BODY, "seed": k}))
                k += clients

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return out


async def _open(url: str, rate: float, seconds: float) -> list[tuple[str, float, httpx.Response | None]]:
    """Requests fired at a fixed rate whatever the answers, each timed from its own send."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        t0, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(_timed(c, {**BODY, "seed": i})))
        return await asyncio.gather(*tasks)


@pytest.fixture(scope="module")
def shed_url(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]) -> Iterator[str]:
    args = app_args(
        tiny_checkpoints,
        models=("moons-fm", "digits-fm"),
        engine={"max_wait_s": MAX_WAIT_S, "request_timeout_s": 3.0},
        limits={"max_num_samples": 1024, "max_work": 300_000},
        deployment_options={
            "moons-fm": {**SMALL_REPLICA, "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 1024},
            "digits-fm": SMALL_REPLICA,
            "Ingress": {**SMALL_REPLICA, "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}},
        },
    )
    yield serve_cluster.deploy("shed", "/shed", args)
    serve_cluster.delete("shed")  # its replicas would idle-poll through every later module


def test_overload_at_three_times_capacity_sheds_fast_and_serves_the_rest(
    serve_cluster: ServeCluster, shed_url: str
) -> None:
    asyncio.run(_closed(shed_url, 8, 2.0))  # warm-up: the first requests after deployment are slower
    warm = asyncio.run(_closed(shed_url, 8, 4.0))
    ok = [lat for status, lat, _ in warm if status == "200"]
    # Requests per second the replica sustains, measured just now: the closed loop's rate, or 8 clients over
    # its median latency when stragglers (the first requests after deployment) held the loop's rate down.
    capacity = max(len(ok) / 4.0, 8 / statistics.median(ok)) if ok else 0.0
    assert capacity > 0.5, warm[:3]
    alone = statistics.median(lat for status, lat, _ in asyncio.run(_closed(shed_url, 1, 1.0)) if status == "200")
    rate = 3 * capacity
    results = asyncio.run(_open(shed_url, rate, 10.0))
    statuses = [s for s, _, _ in results]
    served = [lat for s, lat, _ in results if s == "200"]
    refused = [(lat, r) for s, lat, r in results if s == "503"]
    after = asyncio.run(_closed(shed_url, 1, 1.0))
    print(
        f"capacity {capacity:.1f} req/s, alone {1e3 * alone:.0f} ms; offered {rate:.1f} req/s for 10 s: "
        f"{len(served)} x 200, {len(refused)} x 503, "
        f"p99 200 {1e3 * sorted(served)[int(0.99 * (len(served) - 1))]:.0f} ms, "
        f"max 503 {1e3 * max((lat for lat, _ in refused), default=0):.0f} ms, "
        f"median 503 {1e3 * statistics.median([lat for lat, _ in refused] or [0]):.0f} ms"
    )
    assert set(statuses) <= {"200", "503"}, sorted(set(statuses))  # no timeouts, no other 5xx
    assert refused and served
    for _, r in refused:
        body = r.json()["error"]
        assert body["status"] == 503 and body["field"] == "model" and int(r.headers["retry-after"]) >= 1
    # Refusals are decided at admission, from the predicted wait, before the request waits at all: a refusal
    # that waited for its turn would take at least the wait bound MAX_WAIT_S. What a client sees is the round
    # trip through the proxy, the Ingress and the model replica, 30-120 ms on a 2-core machine shared with the
    # load generator (docs/reliability.md has the measured distribution; the speed is `make bench`'s
    # reliability section): the median is held to half the wait bound and the 95th percentile to the bound,
    # which a refusal decided after waiting could not meet and a machine slowed by several times still does.
    refused_lat = sorted(lat for lat, _ in refused)
    assert statistics.median(refused_lat) < 0.5 * MAX_WAIT_S, refused_lat
    assert refused_lat[int(0.95 * (len(refused_lat) - 1))] < MAX_WAIT_S, refused_lat[-10:]
    served.sort()
    assert served[int(0.99 * (len(served) - 1))] < 2 * MAX_WAIT_S + 2.0  # wait bound, plus the run itself
    # After the burst the queue drains: a new request waits at most the wait bound, then runs in a few times
    # its lone time (measured above, before the burst).
    assert after and after[0][0] == "200" and after[0][1] < MAX_WAIT_S + 3 * alone, (after[0][1], alone)

    # Some of the refusals were made at the door, from the replica's load snapshots, without calling it.
    def door_refusals() -> float:
        samples = scrape(serve_cluster.metrics_url)
        name = "ray_stepserve_door_refusals_total"
        return sum(v for n, lab, v in samples if n == name and lab.get("application") == "shed")

    wait_for(lambda: door_refusals() > 0, 20.0, "door refusals in the metrics")  # exported every few seconds


def test_work_cap_refuses_the_hour_long_request_naming_its_fields(shed_url: str) -> None:
    body = {
        "model": "digits-fm",
        "sampler": "fm-rk4",
        "steps": 1000,
        "num_samples": 1024,
        "guidance": 2.0,
        "class_label": 3,
    }
    # Refused before it runs: run, it would take about an hour, and the client's 30 s timeout would raise.
    r = httpx.post(f"{shed_url}/v1/samples", json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 422 and err["field"] == "steps"
    for word in (
        "num_samples 1024",
        "x 2 (guided)",
        "4000 net evaluations",
        "steps 1000",
        "8192000",
        "max_work 300000",
    ):
        assert word in err["message"], err["message"]


def test_request_timeout_ends_the_request_and_frees_its_rows(shed_url: str) -> None:
    long = {"model": "digits-fm", "sampler": "fm-rk4", "steps": 1000, "num_samples": 32, "seed": 1}  # 128000 work
    t0 = time.perf_counter()
    r = httpx.post(f"{shed_url}/v1/samples", json=long, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 504 and r.json()["error"]["status"] == 504, r.text
    assert 3.0 <= elapsed < 10.0
    load = httpx.get(f"{shed_url}/v1/models/digits-fm", timeout=30).json()["replica_load"]
    assert load["in_flight"] == 0 and load["rows_in_flight"] == 0
    ok = httpx.post(f"{shed_url}/v1/samples", json={**long, "steps": 2}, timeout=60)
    assert ok.status_code == 200


FAULTS_REPLICAS = {"moons-fm": 2, "Ingress": 2}


@pytest.fixture(scope="module")
def faults_url(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]) -> Iterator[str]:
    """One application for the three fault tests, in order (replica loss, Ingress loss, stalled uploads): two
    model replicas and two Ingress replicas of 1 024 slots each, a wait bound that never sheds (these tests are
    about faults, not load) and a 5 s body timeout. Each test starts once Serve has replaced what the one before
    killed."""
    args = app_args(
        tiny_checkpoints,
        models=("moons-fm",),
        engine={"max_wait_s": 60.0},
        deployment_options={
            # routed by work (serving.router, opt-in): a killed replica's last stats must not stall routing
            "moons-fm": {
                **SMALL_REPLICA,
                "num_replicas": 2,
                "request_router_config": {"request_router_class": "serving.router:WorkAwareRouter"},
            },
            "Ingress": {
                **SMALL_REPLICA,
                "num_replicas": 2,
                "max_ongoing_requests": 1024,
                "ray_actor_options": {"num_cpus": 0.25},
            },
        },
    )
    args["body_timeout_s"] = 5.0
    yield serve_cluster.deploy("faults", "/faults", args)
    serve_cluster.delete("faults")


def _wait_running(app: str, replicas: dict[str, int], timeout_s: float = 120.0) -> None:
    """Until each deployment of `app` has that many RUNNING replicas, each a live named actor (Serve replaces
    a killed one)."""
    wait_for(
        lambda: all(running_replicas(app, d) == len(_replica_actor_names(app, d)) == n for d, n in replicas.items()),
        timeout_s,
        f"{app}: {replicas} RUNNING replicas",
    )


def _replica_actor_names(app: str, deployment: str) -> list[str]:
    import ray

    actors = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in actors if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]


def test_killing_a_model_replica_under_load_fails_no_request(faults_url: str) -> None:
    """A request whose replica dies is run again on the other one (same seed, same samples)."""
    import ray

    url = faults_url
    _wait_running("faults", FAULTS_REPLICAS)
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 100, "num_samples": 16}
    results: list[tuple[str, float]] = []
    errors: list[str] = []
    stop = threading.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:

            async def worker(i: int) -> None:
                k = i
                while not stop.is_set():
                    status, lat, r = await _timed(c, {**body, "seed": k})
                    results.append((status, lat))
                    if status != "200":
                        errors.append(r.text[:300] if r is not None else status)
                    k += 4

            await asyncio.gather(*(worker(i) for i in range(4)))

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    try:
        time.sleep(3.0)
        names = _replica_actor_names("faults", "moons-fm")
        assert len(names) == 2, names
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        killed_at = len(results)
        time.sleep(8.0)
    finally:
        stop.set()
        thread.join(120)
    statuses = [s for s, _ in results]
    failed = [s for s in statuses if s != "200"]
    print(f"model replica killed after {killed_at} answers; {len(results)} answers in all, failed: {errors}")
    assert len(results) > killed_at + 5  # the service kept answering after the kill
    assert not failed


def test_killing_an_ingress_replica_under_load_fails_only_its_in_flight_requests(faults_url: str) -> None:
    """One of two Ingress replicas is killed under a closed loop of CLIENTS clients. Only requests in flight
    on it can fail, so at most CLIENTS do; each failure is Serve's proxy's own answer (500, plain text
    "Internal Server Error", not the API's JSON): Ray Serve 2.60's proxy neither retries a request whose
    ingress replica died nor lets an application shape that answer (docs/reliability.md). Once, in CI, one
    such request instead reached the surviving replica without its body and got the API's 408 (body) after
    body_timeout_s; that is allowed too. Requests sent after
    the kill are answered 200 within a few seconds, by the surviving replica."""
    import ray

    clients = 8
    url = faults_url
    _wait_running("faults", FAULTS_REPLICAS)
    body = {"model": "moons-fm", "sampler": "fm-euler", "steps": 20, "num_samples": 16}
    results: list[tuple[float, float, int, str]] = []  # send, answer (perf_counter), status (0: no answer), body
    stop = threading.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:

            async def worker(i: int) -> None:
                k = i
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        r = await c.post("/v1/samples", json={**body, "seed": k})
                        status, text = r.status_code, r.text if r.status_code != 200 else ""
                    except httpx.HTTPError as e:
                        status, text = 0, type(e).__name__
                    results.append((t0, time.perf_counter(), status, text[:200]))
                    k += clients

            await asyncio.gather(*(worker(i) for i in range(clients)))

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    try:
        time.sleep(2.0)
        names = _replica_actor_names("faults", "Ingress")
        assert len(names) == 2, names
        killed = time.perf_counter()
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        time.sleep(6.0)
    finally:
        stop.set()
        thread.join(60)
    before = [r for r in results if r[1] < killed]
    failed = [r for r in results if r[2] != 200]
    sent_after = sorted((r for r in results if r[0] > killed), key=lambda r: r[0])
    first_ok = next(r[1] - killed for r in sent_after if r[2] == 200)
    last_failure = max((r[1] - killed for r in failed), default=0.0)
    kinds = sorted({(status, text) for _, _, status, text in failed})
    print(
        f"Ingress replica killed after {len(before)} answers; {len(results)} in all; {len(failed)} failed "
        f"(last {last_failure:.2f} s after the kill), as {kinds}; first 200 sent after the kill answered "
        f"{first_ok:.2f} s after it"
    )
    assert before and all(r[2] == 200 for r in before)  # the service was healthy before the kill
    assert len(failed) <= clients, kinds  # only requests in flight on the killed replica
    for _, _, status, text in failed:
        # the proxy's answer, or (seen once in CI) a request that reached the surviving replica without its body,
        # which the API answers with its JSON 408 after body_timeout_s
        proxy = status == 500 and text == "Internal Server Error"
        assert proxy or (status == 408 and '"field": "body"' in text), (status, text)
    # Every request, on the surviving replica too, stalls for ~2-3 s after the kill on this 2-core machine
    # (docs/reliability.md); then all are answered again.
    assert first_ok < 5.0
    late = [r for r in sent_after if r[0] > killed + first_ok]
    assert len(late) > 5 and all(r[2] == 200 for r in late), late[:3]


NORMAL_REQUESTS = 24  # one every 0.5 s while the stalled connections are open


def test_stalled_uploads_do_not_take_the_api_down(serve_cluster: ServeCluster, faults_url: str) -> None:
    """1 200 connections send headers and part of a body, then stall for 12 s; meanwhile a normal client's
    requests are answered. Stalled bodies get 408 after body_timeout_s (5 s), so they hold an Ingress slot for
    that long at most; two Ingress replicas hold 2 x 1 024 slots. Every normal request gets a 200 while the
    1 200 connections are still open (they are closed only after the last answer). Its verdict is the
    statuses, not a latency: while the flood is being accepted, answers on a loaded 2-core machine took more
    than 10 s (seen in CI), so each request may take up to 60 s; an API that the stalled uploads took down
    would not answer within it (without the body timeout they would hold their slots until closed)."""
    url = faults_url
    _wait_running("faults", FAULTS_REPLICAS)
    host, port = "127.0.0.1", serve_cluster.http_port
    head = (
        f"POST /faults/v1/samples HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
        "content-length: 1000\r\n\r\n"
    ).encode() + b'{"model": "moons-fm", '
    normal = {"model": "moons-fm", "sampler": "fm-euler", "steps": 5, "num_samples": 4, "seed": 0}

    async def main() -> tuple[int, list[tuple[int, float]], int]:
        writers, opened = [], 0
        for _ in range(1200):
            try:
                _, w = await asyncio.open_connection(host, port)
            except OSError:
                break
            w.write(head)
            writers.append(w)
            opened += 1
        # The normal client starts a request every 0.5 s for 12 s (over twice the body timeout), at fixed times,
        # so the count does not hang on how fast the machine answers; each must get 200.
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:

            async def one(delay: float) -> tuple[int, float]:
                await asyncio.sleep(delay)
                t0 = time.perf_counter()
                try:
                    status = (await c.post("/v1/samples", json=normal)).status_code
                except httpx.HTTPError:
                    status = 0
                return status, time.perf_counter() - t0

            answers = list(await asyncio.gather(*(one(0.5 * i) for i in range(NORMAL_REQUESTS))))
        for w in writers:
            w.close()
        return opened, answers, len(writers)

    opened, answers, _ = asyncio.run(main())
    statuses = [s for s, _ in answers]
    latencies = sorted(lat for _, lat in answers)
    print(
        f"{opened} stalled connections; normal client: {len(statuses)} requests, statuses {sorted(set(statuses))}, "
        f"latency median {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s"
    )
    assert opened == 1200
    assert len(statuses) == NORMAL_REQUESTS and all(s == 200 for s in statuses), answers
