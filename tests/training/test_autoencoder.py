"""The latent stage's autoencoder (training/autoencoder.py, training/nets/vae.py): shapes, the KL against
torch.distributions, the scale factor's definition, config errors by name, and the checkpoint's hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from training.autoencoder import (
    SCALE_IMAGES,
    images,
    load_autoencoder,
    load_vae_config,
    scale_factor,
    train_vae,
    vae_config_from_dict,
)
from training.checkpoint import CheckpointError
from training.nets.vae import VAE, kl_to_standard_normal

TINY = {
    "name": "tiny-vae",
    "data": {"kind": "shapes", "n": 40, "seed": 0},
    "vae": {"latent_channels": 4, "base_channels": 8, "downsample": 2},
    "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
}


def test_the_vae_maps_32x32_rgb_to_an_8x8x4_posterior_and_back() -> None:
    vae = VAE(3, latent_channels=4, base_channels=8, downsample=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 8, 8)
    recon, m, _ = vae(x, sample=False)
    assert recon.shape == x.shape and torch.equal(m, mean)
    assert torch.equal(vae(x, sample=False)[0], vae.decode(mean))
    with pytest.raises(ValueError, match="downsample"):
        VAE(3, downsample=0)


def test_kl_equals_torch_distributions() -> None:
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected, atol=1e-5)


def test_the_scale_factor_gives_latents_unit_variance() -> None:
    vae = VAE(3, base_channels=8)
    x = torch.rand(64, 3, 32, 32) * 2 - 1
    f = scale_factor(vae, x)
    with torch.no_grad():
        assert float((vae.encode(x)[0] * f).std()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"data": {"kind": "moons"}}, "data.kind"),
        ({"vae": {"downsample": 0}}, "vae.downsample"),
        ({"train": {"kl_weight": -1.0}}, "train.kl_weight"),
        ({"train": {"stpes": 10}}, "stpes"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(patch: dict, field: str) -> None:
    d = {**TINY, **{k: {**TINY.get(k, {}), **v} if isinstance(v, dict) else v for k, v in patch.items()}}
    with pytest.raises(ValueError, match=field):
        vae_config_from_dict(d)


def test_a_checkpoint_round_trips_and_a_tampered_file_is_refused_by_name(tmp_path: Path) -> None:
    out = train_vae(vae_config_from_dict(TINY), tmp_path / "vae", progress=False)
    ae = load_autoencoder(out)
    assert ae.latent_shape == (4, 8, 8) and ae.scale_factor > 0
    assert ae.manifest["training"]["steps"] == 3 and (out / "reconstructions.png").stat().st_size > 0
    vae = ae.vae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(vae.decode(vae.encode(x)[0]), ae.vae().decode(ae.vae().encode(x)[0]))
    # the scale factor was computed from the training images the way scale_factor defines it
    training_images = images(vae_config_from_dict(TINY).data)[:SCALE_IMAGES]
    assert ae.scale_factor == pytest.approx(scale_factor(vae, training_images), rel=1e-5)
    weights = out / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="ema.safetensors"):
        load_autoencoder(out)
    (out / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors"):
        load_autoencoder(out)


def test_load_refuses_a_diffusion_checkpoint_and_a_missing_config(tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        load_autoencoder(tiny_checkpoints["moons-fm"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_vae_config("no/such.yaml")
