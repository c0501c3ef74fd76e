"""GET /v1/models/{id} shows the checkpoint's quality profile, over real HTTP from a real Serve application;
the same application, which never samples, shows that an idle model replica exports its in-flight gauge
as 0 from its start (not no series at all)."""

from __future__ import annotations

import time

import httpx
import pytest

from sampling.quality_profile import load_quality_profile
from tests.conftest import DEFAULT_MODELS, ROOT
from tests.serving.conftest import ServeCluster, app_args
from tests.serving.test_metrics import scrape


@pytest.mark.slow
def test_model_metadata_carries_the_quality_profile(serve_cluster: ServeCluster) -> None:
    checkpoints = {"moons-fm": ROOT / "models" / "moons-fm", "moons-fm-vp": ROOT / "models" / "moons-fm-vp"}
    base = serve_cluster.deploy("profiled", "/profiled", app_args(checkpoints, limits={"max_steps": 300}))
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            one = c.get("/v1/models/moons-fm").json()
            plain = c.get("/v1/models/moons-fm-vp").json()
            listed = {m["id"]: m for m in c.get("/v1/models").json()["models"]}
        # Neither model has had a request (deploy's /healthz and the metadata calls never enter an engine): each
        # replica's in-flight gauge reads 0.
        deadline = time.monotonic() + 30
        series: dict[str, float] = {}
        while len(series) < len(checkpoints) and time.monotonic() < deadline:
            series = {
                labels["model"]: value
                for name, labels, value in scrape(serve_cluster.metrics_url)
                if name == "ray_stepserve_requests_in_flight" and labels.get("application") == "profiled"
            }
            time.sleep(1.0)
    finally:
        serve_cluster.delete("profiled")
    expected = load_quality_profile(checkpoints["moons-fm"]).to_json()
    assert one["quality_profile"] == expected and listed["moons-fm"]["quality_profile"] == expected
    assert {p["sampler"] for p in one["quality_profile"]["points"]} == {"fm-euler", "fm-heun", "fm-rk4", "fm-unipc"}
    assert "min(1, 1 / value)" in one["quality_profile"]["definition"]
    assert plain["quality_profile"] is None  # a checkpoint without a profile
    assert one["sampler_max_steps"] == {
        "fm-euler": 300,
        "fm-heun": 300,
        "fm-rk4": 300,
        "fm-unipc": 300,
        "fm-dopri5": 300,
    }
    assert series == {"moons-fm": 0, "moons-fm-vp": 0}, f"in-flight gauges of the idle replicas: {series}"


def test_model_info_lists_each_samplers_max_steps_and_the_profile() -> None:
    """Without Ray: the metadata the ingress serves, built from the manifest (DDPM: T minus the grid's needs)."""
    from sampling.request import Limits
    from serving.api.schemas import model_info

    info = model_info("moons-ddpm", ROOT / "models" / "moons-ddpm", "torch", Limits()).to_json()
    assert info["sampler_max_steps"] == {"ddpm": 1000, "ddim": 1000, "dpm-solver++": 999, "unipc": 999, "heun": 1000}
    assert info["quality_profile"] == load_quality_profile(ROOT / "models" / "moons-ddpm").to_json()


def test_model_info_names_each_models_default_spacing() -> None:
    """moons-ddpm's config names leading, digits-ddpm's trailing (each measured at 10 NFE, docs/knobs.md); FM: none."""
    from sampling.request import Limits
    from serving.api.schemas import model_info

    got = {
        m: model_info(m, ROOT / "models" / m, "torch", Limits()).to_json()["default_spacing"] for m in DEFAULT_MODELS
    }
    assert got == {"moons-ddpm": "leading", "digits-ddpm": "trailing", "moons-fm": None, "digits-fm": None}
