"""API keys, header caps and /docs on a real local Ray Serve over real HTTP: keys from a file and from an
environment variable of the ingress replica, 401 / 429 / 431 JSON answers, and no key in any Ray log."""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import TEST_ENV, ServeCluster, app_args

pytestmark = pytest.mark.slow
MODEL = "moons-fm"
BODY = {"model": MODEL, "sampler": "fm-euler", "steps": 4, "num_samples": 2, "seed": 0}
# Distinct per test session, so the log grep cannot match a key some earlier run wrote.
KEYS = {name: f"k{name}-{secrets.token_urlsafe(24)}" for name in ("basic", "rate", "quota")}
ENV_NAME = "STEPSERVE_TEST_API_KEYS"
KEYS["env"] = TEST_ENV[ENV_NAME]  # set before ray.init by the serve_cluster fixture, so replicas inherit it


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, field: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["status"] == status and err["field"] == field and err["message"], err
    return err


@pytest.fixture(scope="module")
def keyed_apps(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path], tmp_path_factory: Any) -> dict:
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text("# one key a line\n" + "\n".join(KEYS[n] for n in ("basic", "rate", "quota")) + "\n")
    keys_file.chmod(0o600)
    file_args = app_args(tiny_checkpoints, models=(MODEL,))
    file_args["auth"] = {"keys_file": str(keys_file), "rate_per_s": 0.2, "burst": 6, "max_in_flight": 2}
    file_url = serve_cluster.deploy("keyfile", "/keyfile", file_args)
    env_args = app_args(tiny_checkpoints, models=(MODEL,))
    env_args["auth"] = {"keys_env": ENV_NAME}
    env_args["max_headers"] = 32
    # The variable must exist in the ingress replica's process. It does here because Ray's workers inherit
    # the environment ray.init ran in; runtime_env env_vars would work too, but Ray logs their values.
    env_url = serve_cluster.deploy("keyenv", "/keyenv", env_args)
    yield {"file": file_url, "env": env_url}
    serve_cluster.delete("keyfile")
    serve_cluster.delete("keyenv")


def test_without_a_valid_key_401_with_a_challenge_and_a_valid_key_200(keyed_apps: dict) -> None:
    for base, key in ((keyed_apps["file"], KEYS["basic"]), (keyed_apps["env"], KEYS["env"])):
        for headers in ({}, {"Authorization": "Basic eDp5"}, bearer("wrong-" + key), bearer(key[:-1])):
            r = httpx.post(f"{base}/v1/samples", json=BODY, headers=headers, timeout=30)
            err = assert_error(r, 401, "authorization")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert key not in r.text and key[:-1] not in r.text
        assert_error(httpx.get(f"{base}/v1/models", timeout=30), 401, "authorization")
        r = httpx.post(f"{base}/v1/samples", json=BODY, headers=bearer(key), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["shape"] == [2, 2]
        assert httpx.get(f"{base}/v1/models", headers=bearer(key), timeout=30).status_code == 200
        # Open without a key: probes and the API's description.
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        assert httpx.get(f"{base}/openapi.json", timeout=30).json()["info"]["title"] == "stepserve"
        assert "swagger-ui-bundle.js" in httpx.get(f"{base}/docs", timeout=30).text
    assert "invalid" in err["message"]
    # A key of one application is not a key of the other.
    assert_error(
        httpx.get(f"{keyed_apps['env']}/v1/models", headers=bearer(KEYS["basic"]), timeout=30), 401, "authorization"
    )


def test_over_the_rate_429_with_retry_after(keyed_apps: dict) -> None:
    base, key = keyed_apps["file"], KEYS["rate"]
    statuses = [httpx.get(f"{base}/v1/models", headers=bearer(key), timeout=30).status_code for _ in range(6)]
    assert statuses == [200] * 6  # the burst
    r = httpx.get(f"{base}/v1/models", headers=bearer(key), timeout=30)
    err = assert_error(r, 429, "authorization")
    assert 1 <= int(r.headers["retry-after"]) <= 5  # a token every 1 / 0.2 s
    assert key not in err["message"]
    # Other keys keep their own buckets.
    assert httpx.get(f"{base}/v1/models", headers=bearer(KEYS["basic"]), timeout=30).status_code == 200


def open_upload(base: str, key: str) -> socket.socket:
    """A POST /v1/samples whose body is announced but not sent yet: the request is in progress at the
    ingress (the key check has passed; the body reader waits) until `finish_upload`."""
    url = httpx.URL(base)
    body = json.dumps(BODY).encode()
    sock = socket.create_connection((url.host, url.port), timeout=30)
    head = (
        f"POST {url.path}/v1/samples HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:5])
    return sock


def finish_upload(sock: socket.socket) -> bytes:
    sock.sendall(json.dumps(BODY).encode()[5:])
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def test_over_the_in_flight_quota_429(keyed_apps: dict) -> None:
    base, key = keyed_apps["file"], KEYS["quota"]
    uploads = [open_upload(base, key) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while True:  # the proxy hands the two requests to the ingress shortly after their headers
            r = httpx.post(f"{base}/v1/samples", json=BODY, headers=bearer(key), timeout=30)
            if r.status_code == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        err = assert_error(r, 429, "authorization")
        assert "in progress" in err["message"] and r.headers["retry-after"] == "1"
        assert httpx.post(f"{base}/v1/samples", json=BODY, headers=bearer(KEYS["basic"]), timeout=60).status_code == 200
    finally:
        answers = [finish_upload(s) for s in uploads]
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    r = httpx.post(f"{base}/v1/samples", json=BODY, headers=bearer(key), timeout=60)
    assert r.status_code == 200, r.text  # the quota is given back when a request ends


def test_header_caps_431_json(keyed_apps: dict) -> None:
    base = keyed_apps["env"]  # max_headers 32; max_header_bytes 16384 (the default)
    r = httpx.get(f"{base}/healthz", headers={"x-pad": "v" * 20000}, timeout=30)
    err = assert_error(r, 431, "headers")
    assert "x-pad" in err["message"] and "vvvv" not in r.text
    r = httpx.get(f"{base}/healthz", headers=[(f"x-h{i}", "1") for i in range(40)], timeout=30)
    assert "header lines" in assert_error(r, 431, "headers")["message"]
    assert httpx.get(f"{base}/healthz", headers={"x-pad": "v" * 4000}, timeout=30).status_code == 200


def test_no_key_in_any_ray_log(keyed_apps: dict) -> None:
    import ray

    # Every refusal and answer above has happened (this test runs last in the module); give the log
    # writers a moment to flush, then read every file of this Ray instance's session.
    time.sleep(2.0)
    ctx = ray.get_runtime_context()
    session = Path(ctx.get_temp_dir()) / ctx.get_session_name()
    assert session.is_dir(), session
    files = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix in (".log", ".out", ".err") for p in files)
    found = {}
    for p in files:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        for name, key in KEYS.items():
            if key.encode() in data:
                found.setdefault(name, []).append(str(p.relative_to(session)))
    assert not found, f"API keys found in Ray's session files: {found}"


def test_playground_page_is_open_and_its_calls_take_the_key(keyed_apps: dict) -> None:
    base, key = keyed_apps["env"], KEYS["env"]
    page = httpx.get(f"{base}/", timeout=30)
    assert page.status_code == 200 and 'id="api_key"' in page.text
    assert 'src="/keyenv/playground/playground.js"' in page.text  # the page's URLs start at the route prefix
    assert httpx.get(f"{base}/playground/playground.js", timeout=30).status_code == 200
    streamed = {**BODY, "stream": True}
    assert_error(httpx.post(f"{base}/v1/samples", json=streamed, timeout=30), 401, "authorization")
    r = httpx.post(f"{base}/v1/samples", json=streamed, headers=bearer(key), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.count("event: progress") == BODY["steps"] and "event: result" in r.text
