"""stepserve_client against the real application (real Ray Serve, real HTTP): samples equal the raw
response, typed errors carry the API's field and message, and a real 503 is retried after Retry-After."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from stepserve_client import NO_RETRY, BadRequest, Client, NotFound, RetryPolicy, Unavailable

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "body",
    [
        {"model": "moons-fm", "sampler": "fm-rk4", "steps": 5, "num_samples": 7, "seed": 3},
        {
            "model": "digits-ddpm",
            "sampler": "ddim",
            "steps": 4,
            "num_samples": 3,
            "seed": 11,
            "eta": 0.5,
            "guidance": 2.0,
            "class_label": 4,
        },
    ],
)
def test_samples_equal_the_raw_http_response(stepserve_url: str, body: dict) -> None:
    raw = httpx.post(f"{stepserve_url}/v1/samples", json=body, timeout=60).json()
    options = {k: v for k, v in body.items() if k not in ("model", "sampler", "steps")}
    with Client(stepserve_url) as c:
        result = c.sample_result(body["model"], body["sampler"], body["steps"], **options)
        x = c.sample(body["model"], body["sampler"], body["steps"], **options)
    expected = np.asarray(raw["samples"], dtype=np.float32)
    assert result.samples is not None and result.samples.shape == tuple(raw["shape"]) == expected.shape
    np.testing.assert_array_equal(result.samples, expected)  # same seed: the same samples, bit for bit
    np.testing.assert_array_equal(x, expected)
    assert (result.nfe, result.seed, result.attempts) == (raw["nfe"], body["seed"], ())
    assert set(result.timing) == {"queue_ms", "compute_ms", "total_ms"}


def test_png_format_comes_back_as_image_bytes(stepserve_url: str) -> None:
    with Client(stepserve_url) as c:
        result = c.sample_result("moons-fm", "fm-euler", 3, num_samples=16, seed=0, format="png")
    assert result.samples is None and result.image is not None and result.image[:8] == b"\x89PNG\r\n\x1a\n"


def test_refusals_raise_typed_errors_naming_the_field(stepserve_url: str) -> None:
    bad = {"model": "moons-fm", "sampler": "fm-euler", "steps": 0, "num_samples": 2}
    raw = httpx.post(f"{stepserve_url}/v1/samples", json=bad, timeout=30)
    assert raw.status_code == 422
    with Client(stepserve_url) as c:
        with pytest.raises(BadRequest) as err:
            c.sample("moons-fm", "fm-euler", 0, num_samples=2)
        assert (err.value.status, err.value.field, err.value.message) == (422, "steps", raw.json()["error"]["message"])
        with pytest.raises(BadRequest) as err:
            c.sample("moons-fm", "fm-euler", 3, eta=0.5)  # eta is ddim's only
        assert err.value.field == "eta"
        with pytest.raises(NotFound) as missing:
            c.sample("no-such-model", "fm-euler", 3)
        assert (missing.value.status, missing.value.field) == (404, "model")
        assert "no-such-model" in missing.value.message
        assert [m["id"] for m in c.models()] == ["moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm"]
        with pytest.raises(NotFound):
            c.model("nope")


def _in_flight(base: str, model: str) -> int:
    return int(httpx.get(f"{base}/v1/models/{model}", timeout=10).json()["replica_load"]["in_flight"])


def test_a_503_is_retried_after_retry_after(one_slot_url: str) -> None:
    """An engine that takes one request and queues none: a long request in flight makes the next one a
    real 503 with Retry-After; the client waits it out and gets the samples once the engine is free."""
    base = one_slot_url
    # fm-rk4 K=1000 on 256 rows: 4000 net calls, a few seconds of one replica's CPU
    long_body = {"model": "moons-fm", "sampler": "fm-rk4", "steps": 1000, "num_samples": 256, "seed": 1}
    long_status: list[int] = []
    t = threading.Thread(
        target=lambda: long_status.append(httpx.post(f"{base}/v1/samples", json=long_body, timeout=120).status_code)
    )
    t.start()
    deadline = time.monotonic() + 30
    while _in_flight(base, "moons-fm") == 0:
        assert time.monotonic() < deadline, "the long request never reached the engine"
        time.sleep(0.05)

    with Client(base, retry=NO_RETRY) as c, pytest.raises(Unavailable) as busy:
        c.sample("moons-fm", "fm-euler", 2, seed=5)
    assert (busy.value.status, busy.value.field) == (503, "model")
    assert busy.value.retry_after is not None and busy.value.retry_after >= 1

    t0 = time.monotonic()
    # Retries enough to outlast the long request's own 120 s timeout (each waits its Retry-After, >= 1 s): how
    # long that request runs depends on the machine's minute (10 s usually, over 30 s once in CI), not the verdict.
    with Client(base, retry=RetryPolicy(max_retries=240, max_wait=5.0)) as c:
        result = c.sample_result("moons-fm", "fm-euler", 2, seed=5)
    elapsed = time.monotonic() - t0
    t.join(120)
    assert long_status == [200]
    assert len(result.attempts) >= 1 and all(a.status == 503 for a in result.attempts)
    assert all(a.retry_after is not None and a.waited == a.retry_after >= 1 for a in result.attempts)
    assert elapsed >= sum(a.waited for a in result.attempts)  # it did wait what the service asked
    again = httpx.post(
        f"{base}/v1/samples", json={"model": "moons-fm", "sampler": "fm-euler", "steps": 2, "seed": 5}, timeout=30
    ).json()
    np.testing.assert_array_equal(result.samples, np.asarray(again["samples"], dtype=np.float32))
