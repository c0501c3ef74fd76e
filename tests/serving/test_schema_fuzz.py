"""Schemathesis against the live /openapi.json: generated valid and invalid requests for every operation,
each response checked against the document (no 5xx, only declared status codes, content types, headers
and bodies, invalid data refused, unsupported methods answered 405 with Allow).

`positive_data_acceptance` is left out, by design: the document can state types, but whether a request
fits a model (its samplers, K up to its T, its classes, its work cap) is checked at run time and answered
422 naming the field, which the document declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS, positive_data_acceptance
from schemathesis.generation import GenerationMode

from tests.serving.conftest import SMALL_REPLICA, ServeCluster, app_args

pytestmark = pytest.mark.slow
EXAMPLES = 30  # per operation and generation mode


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
    yield schemathesis.openapi.from_url(f"{url}/openapi.json"), url
    serve_cluster.delete("fuzz")  # its replicas would idle-poll through every later module


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_answers_as_documented(api_schema, mode: GenerationMode) -> None:
    schema, url = api_schema
    checks = [c for c in CHECKS.get_all() if c is not positive_data_acceptance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/samples", "/v1/models", "/v1/models/{model_id}", "/healthz"}
    fuzzed = []
    for op in operations:

        @given(case=op.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:
            case.call_and_validate(base_url=url, checks=checks, timeout=60)

        try:
            run()
        except Unsatisfiable:  # no invalid input exists: no parameters, or one string path parameter
            assert mode is GenerationMode.NEGATIVE and op.path != "/v1/samples", op.path
            continue
        fuzzed.append(op.path)
    assert "/v1/samples" in fuzzed
