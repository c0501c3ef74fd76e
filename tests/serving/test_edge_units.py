"""The HTTP edge's own checks, without Ray: JSON depth before parsing, the client's send time against the
server's clock, and the app's answers to them through an in-process client."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.api.ingress import build_http_app
from serving.api.middleware import json_too_deep
from serving.api.schemas import MAX_CLIENT_AGE_S, MAX_CLIENT_AHEAD_S, ApiError, arrival
from serving.api.service import SampleService


def test_json_depth_is_counted_outside_strings_without_recursion() -> None:
    assert not json_too_deep(b'{"a": [[1]]}', 3) and json_too_deep(b'{"a": [[[1]]]}', 3)
    assert not json_too_deep(b'{"a": "[[[[[[", "b": [1]}', 2)  # brackets in a string do not count
    assert not json_too_deep(b'{"a": "\\"[[[[", "b": [1]}', 2)  # nor after an escaped quote
    assert json_too_deep(b'{"a": "\\\\", "b": [[[1]]]}', 3)  # an escaped backslash ends nothing
    assert json_too_deep(b"[" * 1_000_000, 32)  # no recursion, whatever the depth


def test_a_deeply_nested_body_is_a_400_naming_the_body_before_any_parser() -> None:
    client = TestClient(build_http_app(SampleService({}, {})))
    r = client.post("/v1/samples", content=b"[" * 30_000, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body" and "nested" in r.json()["error"]["message"]
    r = client.post("/v1/samples", json={"model": "[" * 100, "sampler": "fm-euler", "steps": 1})
    assert r.status_code == 404 and r.json()["error"]["field"] == "model"


def test_the_clients_send_time_within_the_skew_bounds_is_the_arrival() -> None:
    now = 1_800_000_000.0
    assert arrival(None, now) == now
    assert arrival(f"{now - 2.5}", now) == now - 2.5
    assert arrival(f"{now + 0.9 * MAX_CLIENT_AHEAD_S}", now) == now  # slightly ahead: skew, taken as now
    assert arrival(f"{now - MAX_CLIENT_AGE_S + 1}", now) == now - MAX_CLIENT_AGE_S + 1
    for bad in ("", "soon", "nan", "inf", f"{now + 2 * MAX_CLIENT_AHEAD_S}", f"{now - 2 * MAX_CLIENT_AGE_S}"):
        with pytest.raises(ApiError) as e:
            arrival(bad, now)
        assert e.value.status == 400 and e.value.field == "X-Client-Sent-At", bad
