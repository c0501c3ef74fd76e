"""The preview map (training/preview.py): the least-squares fit recovers a decoder that is itself linear
exactly, its PSNR is measured on latents it was not fitted on, a latent checkpoint carries one (refused by
name when tampered), and the committed latent models' maps reproduce their recorded PSNR on a fresh draw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_latent_config
from training.checkpoint import CheckpointError, load_checkpoint, sha256_file
from training.config import config_from_dict
from training.preview import PREVIEW_FILE, apply_preview, fit_preview, measured_preview, psnr_db
from training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def linear_decoder(c: int, f: int, k: int, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A decoder that is exactly a preview map: conv k x k to 3 f^2 channels, pixel shuffle by f."""
    g = torch.Generator().manual_seed(seed)
    state = {"weight": torch.randn(3 * f * f, c, k, k, generator=g), "bias": torch.randn(3 * f * f, generator=g)}

    class Linear(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return F.pixel_shuffle(F.conv2d(z, state["weight"], state["bias"], padding=k // 2), f)

    return Linear(), state


@pytest.mark.parametrize(("c", "f", "k"), [(4, 4, 3), (2, 2, 1), (3, 2, 5)])
def test_the_fit_recovers_a_linear_decoder_exactly(c: int, f: int, k: int) -> None:
    decoder, truth = linear_decoder(c, f, k, seed=c + f + k)
    z = torch.randn(40, c, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = fit_preview(z, decoder(z), kernel=k)
    torch.testing.assert_close(state["weight"], truth["weight"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state["bias"], truth["bias"], atol=1e-4, rtol=1e-4)
    z2 = torch.randn(3, c, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(apply_preview(state, z2), decoder(z2), atol=1e-3, rtol=1e-4)


def test_a_wider_kernel_fits_a_wider_decoder_better_and_the_psnr_is_held_out() -> None:
    """A 3 x 3 decoder followed by a nonlinearity: a 3 x 3 map beats a 1 x 1 map; the PSNR is that of the
    held-out latents (recomputed here)."""
    lin, _ = linear_decoder(4, 2, 3, seed=0)
    decoder = torch.nn.Sequential(lin, torch.nn.Tanh())
    z = torch.randn(100, 4, 6, 6, generator=torch.Generator().manual_seed(2)) * 0.3
    s1, p1 = measured_preview(decoder, z, kernel=1)
    s3, p3 = measured_preview(decoder, z, kernel=3)
    assert p3 > p1 + 3.0
    with torch.no_grad():
        assert p3 == pytest.approx(psnr_db(apply_preview(s3, z[80:]), decoder(z[80:])), abs=1e-6)


def test_bad_fits_are_refused_by_name() -> None:
    z = torch.randn(12, 4, 4, 4)
    with pytest.raises(ValueError, match="kernel must be odd"):
        fit_preview(z, torch.zeros(12, 3, 16, 16), kernel=2)
    with pytest.raises(ValueError, match="are not"):
        fit_preview(z, torch.zeros(12, 1, 16, 16))
    with pytest.raises(ValueError, match="too few"):
        measured_preview(torch.nn.Identity(), z[:5])


def test_a_latent_checkpoint_carries_its_preview_and_a_tampered_one_is_refused(
    tiny_vae: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPSERVE_CACHE", str(tmp_path / "cache"))
    out = train(config_from_dict(tiny_latent_config(tiny_vae)), tmp_path / "m", progress=False)
    ckpt = load_checkpoint(out)
    info = ckpt.latent["preview"]
    assert info["file"] == PREVIEW_FILE and ckpt.manifest["files"][PREVIEW_FILE]["role"] == "preview"
    assert info["fitted"] + info["held_out"] == 30 and info["latents"] == "data"  # the config's n = 30 latents
    state = ckpt.preview_map()
    assert apply_preview(state, torch.zeros(2, *ckpt.data_shape)).shape == (2, *ckpt.output_shape)
    data = (out / PREVIEW_FILE).read_bytes()
    (out / PREVIEW_FILE).write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=PREVIEW_FILE):
        load_checkpoint(out)
    (out / PREVIEW_FILE).write_bytes(b"not a safetensors file")  # re-hashed: loads past the hash check
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][PREVIEW_FILE]["sha256"] = sha256_file(out / PREVIEW_FILE)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="preview map does not load"):
        load_checkpoint(out).preview_map()


@pytest.mark.parametrize("name", ["shapes-latent-fm", "shapes-latent-ddpm"])
def test_a_committed_latent_models_preview_reproduces_its_psnr_on_a_fresh_draw(name: str) -> None:
    from training.autoencoder import load_autoencoder
    from training.latents import encode
    from training.shapes import shapes_raw

    ckpt = load_checkpoint(ROOT / "models" / name)
    ae = load_autoencoder(ROOT / "models" / "shapes-vae")
    x, _ = shapes_raw(300, seed=4321)
    z = encode(ae.vae(), torch.as_tensor(x).float() * 2 - 1)
    with torch.no_grad():
        got = psnr_db(apply_preview(ckpt.preview_map(), z), ckpt.decoder()(z))
    assert ckpt.latent["preview"]["psnr_db_vs_decoder"] >= 24.0
    assert got == pytest.approx(ckpt.latent["preview"]["psnr_db_vs_decoder"], abs=1.0)
