"""The pieces of serving.api.auth / headers / docs that need no Ray: key parsing, matching, the token bucket,
header caps, and the /docs page of the FastAPI app itself (through Starlette's in-process client)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.api.auth import ApiKeys, AuthArgs, TokenBucket, bearer_token, key_id, parse_keys
from serving.api.docs import serve_docs_locally
from serving.api.headers import header_error
from serving.api.middleware import relative_path
from serving.app import AppArgs

KEY_A, KEY_B = "a" * 8 + "-key-one-1234567", "b" * 8 + "-key-two-7654321"


def test_parse_keys_file_and_env_forms_and_refusals_never_show_the_key() -> None:
    assert parse_keys(f"# comment\n{KEY_A}\n\n{KEY_B}  # trailing\n{KEY_A}\n", "f") == [KEY_A, KEY_B]
    assert parse_keys(f"{KEY_A},{KEY_B}", "env X") == [KEY_A, KEY_B]
    with pytest.raises(ValueError) as e:
        parse_keys(f"{KEY_A}\nshort-secret\n", "f")
    assert "line 2" in str(e.value) and "short-secret" not in str(e.value)
    with pytest.raises(ValueError, match="no API key"):
        parse_keys("# nothing\n", "f")


def test_auth_args_need_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        AuthArgs()
    with pytest.raises(ValidationError):
        AuthArgs(keys_file="k", keys_env="K")
    with pytest.raises(ValidationError):
        AuthArgs(keys_env="K", burst=3)  # a burst without a rate means nothing
    a = AppArgs.model_validate({"models": {}, "auth": {"keys_env": "K", "rate_per_s": 2}})
    assert a.auth is not None and a.auth.rate_per_s == 2 and AppArgs.model_validate({"models": {}}).auth is None


def test_identify_matches_each_key_and_nothing_else(tmp_path: Path) -> None:
    keys = ApiKeys([KEY_A, KEY_B], AuthArgs(keys_env="unused"))
    assert keys.identify(KEY_A.encode()) == key_id(KEY_A) and keys.identify(KEY_B.encode()) == key_id(KEY_B)
    assert keys.identify(KEY_A[:-1].encode()) is None and keys.identify(b"") is None
    assert re.fullmatch(r"[0-9a-f]{8}", key_id(KEY_A)) and KEY_A not in key_id(KEY_A)


def test_in_flight_quota_is_per_key() -> None:
    keys = ApiKeys([KEY_A, KEY_B], AuthArgs(keys_env="unused", max_in_flight=1))
    a, b = key_id(KEY_A), key_id(KEY_B)
    assert keys.enter(a) and not keys.enter(a) and keys.enter(b)
    keys.leave(a)
    assert keys.enter(a)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    t = bucket.stamp
    assert [bucket.take(t) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(t) == pytest.approx(0.5)  # one token comes back after 1 / rate seconds
    assert bucket.take(t + 0.5) == 0.0 and bucket.take(t + 0.5) > 0


def test_bearer_token_forms() -> None:
    def scope(*values: bytes) -> dict:
        return {"headers": [(b"authorization", v) for v in values]}

    assert bearer_token(scope(b"Bearer abc")) == (b"abc", "")
    assert bearer_token(scope(b"bearer  abc ")) == (b"abc", "")
    assert bearer_token(scope())[0] is None
    assert bearer_token(scope(b"Basic abc"))[0] is None
    assert bearer_token(scope(b"Bearer a", b"Bearer b"))[0] is None
    assert relative_path({"path": "/p/v1/models", "root_path": "/p"}) == "/v1/models"
    assert relative_path({"path": "/healthz", "root_path": ""}) == "/healthz"


def test_header_caps() -> None:
    small = [(b"host", b"x"), (b"accept", b"*/*")]
    assert header_error(small, 64, 16384) is None
    assert "header lines" in (header_error(small * 40, 64, 16384) or "")
    big = [*small, (b"x-long", b"v" * 20000)]
    why = header_error(big, 64, 16384) or ""
    assert "x-long" in why and "vvvv" not in why  # names the header, never echoes the value


def test_docs_page_and_its_assets_come_from_the_app_not_a_cdn() -> None:
    api = FastAPI(title="t")
    serve_docs_locally(api)
    client = TestClient(api)
    html = client.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)
    assert urls and all(u.startswith("/") for u in urls), urls
    assert "cdn.jsdelivr" not in html and "fastapi.tiangolo" not in html and "validatorUrl" in html
    for u in urls:
        if u.startswith("/docs/static/"):
            r = client.get(u)
            assert r.status_code == 200 and len(r.content) > 1000, u
    assert client.get("/docs/static/..%2F__init__.py").status_code == 404
    assert client.get("/docs/static/index.html").status_code == 404
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{}, {"bearer": []}]


def test_openapi_declares_the_edge_answers_and_the_open_paths() -> None:
    from serving.api.ingress import build_http_app
    from serving.api.service import SampleService

    schema = build_http_app(SampleService({}, {})).openapi()
    samples = schema["paths"]["/v1/samples"]["post"]
    assert {"401", "429", "431"} <= set(samples["responses"]) and "security" not in samples
    assert samples["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    health = schema["paths"]["/healthz"]["get"]
    assert health["security"] == [] and "431" in health["responses"] and "401" not in health["responses"]
