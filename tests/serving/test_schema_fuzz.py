"""Schemathesis against the live /openapi.json: generated valid and invalid requests for every operation,
every response checked against the document (no 5xx, declared status codes, content types and bodies)."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.serving.conftest import SMALL_REPLICA, ServeCluster, app_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(serve_cluster: ServeCluster, tiny_checkpoints: dict[str, Path]):
    # A small work cap keeps every generated request that passes validation cheap to run.
    args = app_args(
        tiny_checkpoints,
        models=("moons-fm", "moons-ddpm"),
        limits={"max_num_samples": 64, "max_work": 20_000},
        deployment_options={"moons-fm": SMALL_REPLICA, "moons-ddpm": SMALL_REPLICA, "Ingress": SMALL_REPLICA},
    )
    url = serve_cluster.deploy("fuzz", "/fuzz", args)
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case) -> None:
    case.call_and_validate(timeout=60)
