"""A latent model served for real (Ray Serve, HTTP): its samples come back decoded, equal to the offline path
(net in latent space, then the checkpoint's decoder), as JSON and as an RGB PNG, and GET /v1/models tells
both shapes."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from sampling.driver import sample
from sampling.request import SampleSpec, to_data_space
from tests.serving.conftest import ServeCluster, app_args
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

MODEL = "tiny-latent-fm"


@pytest.fixture(scope="module")
def latent_url(serve_cluster: ServeCluster, tiny_latent: Path) -> str:
    return serve_cluster.deploy("latent", "/latent", app_args({MODEL: tiny_latent}))


def test_samples_come_back_decoded_and_equal_to_the_offline_path(latent_url: str, tiny_latent: Path) -> None:
    bodies = [
        {"model": MODEL, "sampler": "fm-euler", "steps": 3, "num_samples": 3, "seed": 7, "class_label": 2},
        {
            "model": MODEL,
            "sampler": "fm-rk4",
            "steps": 2,
            "num_samples": 2,
            "seed": 8,
            "guidance": 2.0,
            "class_label": 4,
        },
        {"model": MODEL, "sampler": "fm-euler", "steps": 5, "num_samples": 4, "seed": 9},
    ]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=latent_url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/samples", json=b) for b in bodies))

    ckpt = load_checkpoint(tiny_latent)
    net = ckpt.net("ema")
    for body, r in zip(bodies, asyncio.run(post_all()), strict=True):
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["samples"])
        assert r.json()["shape"] == [body["num_samples"], 3, 32, 32]
        assert got.min() >= 0.0 and got.max() <= 1.0
        spec = SampleSpec(**{k: v for k, v in body.items() if k != "model"})
        with torch.inference_mode():
            expected = to_data_space(ckpt, sample(ckpt, net, spec))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_png_of_a_latent_model_is_an_rgb_grid(latent_url: str) -> None:
    body = {"model": MODEL, "sampler": "fm-euler", "steps": 2, "num_samples": 4, "seed": 1, "format": "png"}
    r = httpx.post(f"{latent_url}/v1/samples", json=body, timeout=60)
    assert r.status_code == 200, r.text
    px = imread(io.BytesIO(base64.b64decode(r.json()["image"])), format="png")[..., :3]
    assert px.shape[0] > 32 and px.shape[1] > 32
    assert np.abs(px[..., 0] - px[..., 1]).max() > 0.01  # colour: a grey rendering has R = G = B everywhere


def test_the_model_info_tells_the_latent_and_the_output_shape(latent_url: str) -> None:
    info = httpx.get(f"{latent_url}/v1/models/{MODEL}", timeout=30).json()
    assert info["data_shape"] == [4, 8, 8] and info["output_shape"] == [3, 32, 32]
    assert info["latent"]["autoencoder"] == "tiny-vae" and info["latent"]["scale_factor"] > 0
    assert info["data_kind"] == "shapes" and info["num_classes"] == 5


def test_streamed_previews_are_the_preview_map_of_the_data_estimate(latent_url: str, tiny_latent: Path) -> None:
    """fm-euler's data estimate at its last step's start, x + (1 - t) v with 1 - t = 1 / K, is the Euler step's
    own result, so the last preview is the checkpoint's preview map (not its decoder) of the final latents."""
    from sampling.request import preview_of
    from tests.serving.test_stream import events

    body = {"model": MODEL, "sampler": "fm-euler", "steps": 3, "num_samples": 2, "seed": 5, "class_label": 1}
    got = events(latent_url, {**body, "stream": True, "preview_every": 1})
    previews = [np.asarray(d["preview"]) for e, d in got if e == "progress" and "preview" in d]
    assert len(previews) == 3 and all(p.shape == (2, 3, 32, 32) for p in previews)
    ckpt = load_checkpoint(tiny_latent)
    with torch.inference_mode():
        latents = sample(ckpt, ckpt.net("ema"), SampleSpec(**{k: v for k, v in body.items() if k != "model"}))
    np.testing.assert_allclose(previews[-1], preview_of(ckpt)(latents), atol=1e-4, rtol=0)
    assert np.abs(previews[-1] - np.asarray(got[-1][1]["samples"])).max() > 1e-3  # the decoder's differ
