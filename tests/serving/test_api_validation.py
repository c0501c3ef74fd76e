"""Malformed requests over real HTTP: each gets the right 4xx naming the field, none a 500, none
disturbs a request in flight, and a request sent after them is served."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from serving.app import AppArgs, build_app

ROOT = Path(__file__).resolve().parents[2]

GOOD_FM = {"model": "moons-fm", "sampler": "fm-euler", "steps": 5, "num_samples": 2, "seed": 1}
GOOD_DDPM = {"model": "moons-ddpm", "sampler": "ddim", "steps": 5, "num_samples": 2, "seed": 1}
GOOD_DIGITS = {"model": "digits-fm", "sampler": "fm-euler", "steps": 5, "num_samples": 2, "seed": 1}


def _with(base: dict, **changes) -> dict:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()

# (case id, body: dict (sent as JSON) or bytes (sent raw as application/json), status, field)
CASES = [
    ("missing model", _with(GOOD_FM, model=_DROP), 422, "model"),
    ("missing sampler", _with(GOOD_FM, sampler=_DROP), 422, "sampler"),
    ("missing steps", _with(GOOD_FM, steps=_DROP), 422, "steps"),
    ("model not a string", _with(GOOD_FM, model=123), 422, "model"),
    ("unknown model", _with(GOOD_FM, model="nope"), 404, "model"),
    ("steps zero", _with(GOOD_FM, steps=0), 422, "steps"),
    ("steps over max", _with(GOOD_FM, steps=1001), 422, "steps"),
    ("steps huge", _with(GOOD_FM, steps=10**30), 422, "steps"),
    ("steps string", _with(GOOD_FM, steps="10"), 422, "steps"),
    ("steps float", _with(GOOD_FM, steps=2.5), 422, "steps"),
    ("steps bool", _with(GOOD_FM, steps=True), 422, "steps"),
    (
        "guidance NaN",
        json.dumps(_with(GOOD_FM, guidance=float("nan"), class_label=0)).encode(),
        422,
        "guidance",
    ),
    (
        "guidance inf",
        json.dumps(_with(GOOD_FM, guidance=float("inf"), class_label=0)).encode(),
        422,
        "guidance",
    ),
    ("guidance over range", _with(GOOD_FM, guidance=100.0, class_label=0), 422, "guidance"),
    ("guidance negative", _with(GOOD_FM, guidance=-1.0, class_label=0), 422, "guidance"),
    ("guidance without label", _with(GOOD_FM, guidance=2.0), 422, "guidance"),
    ("guidance string", _with(GOOD_FM, guidance="high", class_label=0), 422, "guidance"),
    ("num_samples zero", _with(GOOD_FM, num_samples=0), 422, "num_samples"),
    ("num_samples negative", _with(GOOD_FM, num_samples=-3), 422, "num_samples"),
    ("num_samples over model max", _with(GOOD_FM, num_samples=257), 422, "num_samples"),
    ("class_label = num_classes", _with(GOOD_FM, class_label=2), 422, "class_label"),
    ("class_label negative", _with(GOOD_DIGITS, class_label=-1), 422, "class_label"),
    ("class_label digits 10", _with(GOOD_DIGITS, class_label=10), 422, "class_label"),
    ("ddim on fm model", _with(GOOD_FM, sampler="ddim"), 422, "sampler"),
    ("fm-euler on ddpm model", _with(GOOD_DDPM, sampler="fm-euler"), 422, "sampler"),
    ("unknown sampler", _with(GOOD_FM, sampler="euler-a"), 422, "sampler"),
    ("seed negative", _with(GOOD_FM, seed=-1), 422, "seed"),
    ("seed 2^63", _with(GOOD_FM, seed=2**63), 422, "seed"),
    ("seed string", _with(GOOD_FM, seed="abc"), 422, "seed"),
    ("eta on fm-euler", _with(GOOD_FM, eta=0.5), 422, "eta"),
    ("eta on ddpm", _with(GOOD_DDPM, sampler="ddpm", eta=0.5), 422, "eta"),
    ("eta over 1", _with(GOOD_DDPM, eta=1.5), 422, "eta"),
    ("eta negative", _with(GOOD_DDPM, eta=-0.1), 422, "eta"),
    ("spacing unknown", _with(GOOD_DDPM, spacing="random"), 422, "spacing"),
    ("spacing on fm", _with(GOOD_FM, spacing="leading"), 422, "spacing"),
    ("format unknown", _with(GOOD_FM, format="gif"), 422, "format"),
    ("unknown field", _with(GOOD_FM, temperature=0.7), 422, "temperature"),
    ("body not JSON", b"{bad json", 400, "body"),
    ("body a list", b"[1, 2, 3]", 422, "body"),
    ("body empty", b"", 422, "body"),
    ("body oversized", json.dumps(_with(GOOD_FM, pad="x" * 70_000)).encode(), 413, "body"),
    ("body of 30 000 nested [", b"[" * 30_000, 400, "body"),
    ("body nested 33 deep, closed", b'{"model": ' + b"[" * 33 + b"]" * 33 + b"}", 400, "body"),
    ("brackets inside a string", json.dumps(_with(GOOD_FM, model="[" * 40)).encode(), 404, "model"),
]


@pytest.mark.slow
def test_malformed_requests_table(stepserve_url: str) -> None:
    assert len(CASES) >= 25
    long_body = {"model": "moons-fm", "sampler": "fm-rk4", "steps": 300, "num_samples": 16, "seed": 42}
    in_flight: dict = {}

    def long_request() -> None:
        in_flight["response"] = httpx.post(f"{stepserve_url}/v1/samples", json=long_body, timeout=300)

    worker = threading.Thread(target=long_request)
    worker.start()
    failures = []
    with httpx.Client(base_url=stepserve_url, timeout=60) as c:
        for name, body, status, field in CASES:
            if isinstance(body, bytes):
                r = c.post("/v1/samples", content=body, headers={"content-type": "application/json"})
            else:
                r = c.post("/v1/samples", json=body)
            got_field = (
                r.json().get("error", {}).get("field") if r.headers.get("content-type") == "application/json" else None
            )
            if r.status_code != status or got_field != field:
                failures.append(f"{name}: got {r.status_code} {got_field!r}, want {status} {field!r}: {r.text[:200]}")
        assert not failures, "\n".join(failures)

        # A body without Content-Length (chunked) is bounded by the bytes actually received.
        chunks = (b'{"pad": "' + b"x" * 8192 for _ in range(10))
        r = c.post("/v1/samples", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["field"] == "body"

        after = c.post("/v1/samples", json=GOOD_DIGITS)
        assert after.status_code == 200 and after.json()["shape"] == [2, 1, 8, 8]
    worker.join(timeout=300)
    resp = in_flight["response"]
    assert resp.status_code == 200 and resp.json()["nfe"] == 300 * 4


def test_a_models_engine_options_override_the_app_wide_ones(tiny_checkpoints: dict[str, Path]) -> None:
    from serving.app import model_replicas

    path = str(tiny_checkpoints["moons-fm"])
    args = {
        "models": {"a": {"path": path}, "b": {"path": path, "engine": {"auto_utilization": 0.8, "max_wait_s": 2}}},
        "engine": {"max_wait_s": 5.0, "max_queue": 32},
    }
    replicas, _ = model_replicas(AppArgs.model_validate(args))
    assert replicas["a"]["engine"] == {"max_wait_s": 5.0, "max_queue": 32}
    assert replicas["b"]["engine"] == {"max_wait_s": 2, "max_queue": 32, "auto_utilization": 0.8}
    args["models"]["b"]["engine"] = {"auto_utilization": 1.5}
    with pytest.raises(ValueError, match=r"model b: engine.auto_utilization must be in \[0, 1\], got 1.5"):
        model_replicas(AppArgs.model_validate(args))
    args["models"]["b"]["engine"] = {"max_wiat_s": 1}
    with pytest.raises(ValueError, match=r"model b: unknown engine option\(s\) \['max_wiat_s'\]"):
        model_replicas(AppArgs.model_validate(args))


def test_config_refuses_a_max_request_that_cannot_fit_one_tick(tiny_checkpoints: dict[str, Path]) -> None:
    args = {
        "models": {"moons-fm": {"path": str(tiny_checkpoints["moons-fm"])}},
        "limits": {"max_num_samples": 600},
        "engine": {"max_rows_per_tick": 1000},
    }
    with pytest.raises(ValueError, match="max_rows_per_tick"):
        build_app(args)
    with pytest.raises(ValueError, match="extra"):
        AppArgs.model_validate({**args, "modles": {}})


@pytest.mark.parametrize("name", ["serve.yaml", "serve-gpu.yaml", "serve-latent.yaml"])
def test_deploy_configs_are_valid_serve_configs(name: str) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from sampling.request import Limits
    from serving.engine import EngineLimits

    config = yaml.safe_load((ROOT / "deploy" / name).read_text())
    ServeDeploySchema.model_validate(config)
    apps = {app["name"]: app for app in config["applications"]}
    (app,) = [a for a in apps.values() if a["route_prefix"] == "/"]
    args = AppArgs.model_validate(app["args"])
    defaults = {"moons-ddpm", "moons-fm", "digits-ddpm", "digits-fm"}
    if name == "serve.yaml":  # make serve: the defaults and the distilled student, in a family with its teacher
        assert set(args.models) == defaults | {"moons-fm-reflow"}
        assert args.families == {"moons-fm-family": ["moons-fm", "moons-fm-reflow"]}
    elif name == "serve-latent.yaml":  # the latent models, each with its decoder, built from the committed ones
        assert set(args.models) == {"shapes-latent-fm", "shapes-latent-ddpm"}
        build_app({**app["args"], "models_dir": str(ROOT / "models")})
    else:
        assert set(args.models) == defaults
    engine, limits = EngineLimits.from_options(**args.engine), Limits(**args.limits)
    assert 2 * limits.max_num_samples <= engine.max_rows_per_tick
    model_deployments = [d for d in app["deployments"] if d["name"] in args.models]
    for model, m in args.models.items():
        if m.application is None:
            continue
        # a model served by its own application: one model, single_hop, a deployment named after it, the same
        # limits (requests are validated by the Ingress that sends them there); its own route at /models/<id>
        own = apps[m.application]
        own_args = AppArgs.model_validate(own["args"])
        assert own_args.single_hop and list(own_args.models) == [model], m.application
        assert own["route_prefix"] == f"/models/{model}"
        assert Limits(**{**own_args.limits, **own_args.models[model].limits}) == Limits(**{**args.limits, **m.limits})
        (deployment,) = own["deployments"]
        assert deployment["name"] == model
        model_deployments.append(deployment)
        build_app({**own["args"], "models_dir": str(ROOT / "models")})  # the committed checkpoint builds
    assert {d["name"] for d in model_deployments} == set(args.models)
    assert len(apps) == 1 + sum(m.application is not None for m in args.models.values())
    for dep in model_deployments:
        # Serve must let requests past the engine's bounds through, so that the engine answers them 503
        # at once; at or below the bound they would wait in Serve's unbounded handle queue instead.
        assert dep["max_ongoing_requests"] > engine.max_in_flight + engine.max_queue
        assert dep["autoscaling_config"]["min_replicas"] == 1


def test_kuberay_service_carries_the_gpu_config() -> None:
    import yaml

    service = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    gpu = yaml.safe_load((ROOT / "deploy" / "serve-gpu.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == gpu


def test_serve_cli_names_each_models_own_route() -> None:
    """The one-hop curl example `make serve` prints: a model's own application in the shipped config, none in a
    config without per-model applications."""
    import yaml

    from serving.serve_cli import model_route

    shipped = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    assert model_route(shipped, "moons-fm") == "/models/moons-fm"
    assert model_route(shipped, "digits-ddpm") == "/models/digits-ddpm"
    assert model_route(shipped, "moons-fm-family") is None
    assert model_route(yaml.safe_load((ROOT / "deploy" / "serve-cluster.yaml").read_text()), "moons-fm") is None
    # serve-one-hop.yaml's one model is at / already: the example above is its one hop
    assert model_route(yaml.safe_load((ROOT / "deploy" / "serve-one-hop.yaml").read_text()), "moons-fm") is None
