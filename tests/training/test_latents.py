"""Latent models (training/latents.py): the encoded set against the autoencoder's own encoder, the cache, the
checkpoint's decoder against the autoencoder's decoder, and a missing or tampered decoder refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sampling.request import to_data_space
from tests.conftest import tiny_latent_config
from training.autoencoder import load_autoencoder
from training.checkpoint import CheckpointError, load_checkpoint
from training.config import config_from_dict
from training.data import load_dataset
from training.latents import DECODER_FILE, encode, latent_dataset
from training.trainer import train


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEPSERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_latent_set_is_the_autoencoders_scaled_posterior_means_and_is_cached(tiny_vae: Path, _cache: Path) -> None:
    images = load_dataset("shapes", n=30, seed=0)
    data = latent_dataset(images, tiny_vae, n=30, seed=0, progress=False)
    ae = load_autoencoder(tiny_vae)
    expected = encode(ae.vae("ema"), images.x) * ae.scale_factor
    assert data.shape == (4, 8, 8) and data.x.shape == (30, 4, 8, 8)
    assert torch.allclose(data.x, expected, atol=1e-6)
    assert torch.equal(data.y, images.y) and data.num_classes == 5
    assert torch.allclose(data.normalization.denormalize(data.x), expected / ae.scale_factor, atol=1e-6)
    (cached,) = (_cache / "latents").iterdir()
    assert cached.name.startswith(ae.manifest["files"]["ema.safetensors"]["sha256"][:16])
    again = latent_dataset(images, tiny_vae, n=30, seed=0, progress=False)  # from the cache
    assert torch.equal(again.x, data.x)


@pytest.mark.parametrize("kind", ["fm", "ddpm"])
def test_a_latent_checkpoint_decodes_with_the_autoencoders_decoder(tiny_vae: Path, tmp_path: Path, kind: str) -> None:
    out = train(config_from_dict(tiny_latent_config(tiny_vae, kind)), tmp_path / "m", progress=False)
    ckpt = load_checkpoint(out)
    assert ckpt.manifest["files"][DECODER_FILE]["role"] == "decoder"
    assert ckpt.data_shape == (4, 8, 8) and ckpt.output_shape == (3, 32, 32)
    ae = load_autoencoder(tiny_vae)
    assert ckpt.latent["scale_factor"] == ae.scale_factor
    x = torch.randn(3, 4, 8, 8)  # samples in the net's (scaled) latent space
    with torch.no_grad():
        expected = (ae.vae("ema").decode(x / ae.scale_factor) * 0.5 + 0.5).clamp(0, 1).numpy()
    got = to_data_space(ckpt, x)
    assert got.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_missing_or_tampered_decoder_is_refused_by_name(tiny_vae: Path, tmp_path: Path) -> None:
    out = train(config_from_dict(tiny_latent_config(tiny_vae)), tmp_path / "m", progress=False)
    data = (out / DECODER_FILE).read_bytes()
    (out / DECODER_FILE).write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=DECODER_FILE):
        load_checkpoint(out)
    (out / DECODER_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{DECODER_FILE} listed in the manifest is missing"):
        load_checkpoint(out)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"][DECODER_FILE]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="decoder"):
        load_checkpoint(out)


def test_an_autoencoder_of_other_images_is_refused_naming_it(tiny_vae: Path, tmp_path: Path) -> None:
    cfg = tiny_latent_config(tiny_vae)
    cfg["data"] = {"kind": "digits", "autoencoder": str(tiny_vae)}
    with pytest.raises(ValueError, match="data.autoencoder"):
        train(config_from_dict(cfg), tmp_path / "m", progress=False)
    cfg["data"] = {"kind": "shapes", "autoencoder": str(tmp_path / "nowhere")}
    with pytest.raises(CheckpointError, match="nowhere"):
        train(config_from_dict(cfg), tmp_path / "m", progress=False)
    with pytest.raises(ValueError, match="data.autoencoder"):
        config_from_dict({**cfg, "data": {"kind": "shapes", "autoencoder": ""}})
