"""Latent data: a data set encoded once by a frozen autoencoder, cached, and what turns latents back into images.

A latent model (config `data: {kind: shapes, autoencoder: models/shapes-vae}`) trains on the autoencoder's
posterior means times its scale factor (unit variance, as Stable Diffusion's latents times 0.18215), so its
normalization is mean 0, std 1 / scale_factor: `Normalization.denormalize` gives the raw latent, and the
decoder gives an image in the data set's normalized range, denormalized and clipped like any image.

The encoded set is cached in `cache_dir()` (STEPSERVE_CACHE, else ~/.cache/stepserve) under a name holding the
autoencoder's EMA sha256, the data kind, n and seed: a retrained autoencoder or another draw misses the cache.
The checkpoint of a latent model holds the decoder's weights (decoder.safetensors), the decoder's linear
preview map fitted on the model's data latents (preview.safetensors, training/preview.py) and its `latent`
manifest section (training/checkpoint.py): serving needs nothing of the autoencoder's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from training.data import Dataset, Normalization
from training.preview import KERNEL, measured_preview, preview_manifest

DECODER_FILE = "decoder.safetensors"
PREVIEW_FIT_LATENTS = 2000  # the preview map's fit: 1 600 latents fitted, 400 held out for its PSNR
ENCODE_BATCH = 500


@dataclass(frozen=True)
class LatentSpace:
    """The frozen decoder of a latent model and how its samples become images."""

    autoencoder: str  # the autoencoder checkpoint's name
    autoencoder_sha256: str  # of its EMA weights, the ones encoded with
    scale_factor: float
    image_shape: tuple[int, ...]
    image_normalization: Normalization
    decoder_hparams: dict[str, int]
    decoder_state: dict[str, Tensor]
    preview_state: dict[str, Tensor]  # training.preview: the decoder's linear stand-in for streamed previews
    preview_section: dict[str, Any]  # its kernel, fit size and PSNR against the decoder

    def manifest(self) -> dict[str, Any]:
        """The checkpoint's `latent` section, less the decoder's and preview's hashes (added when written)."""
        return {
            "autoencoder": {"name": self.autoencoder, "ema_sha256": self.autoencoder_sha256},
            "scale_factor": self.scale_factor,
            "image_shape": list(self.image_shape),
            "image_normalization": self.image_normalization.to_dict(),
            "decoder": {"file": DECODER_FILE, "hparams": dict(self.decoder_hparams)},
            "preview": dict(self.preview_section),
        }


def cache_dir() -> Path:
    return Path(os.environ.get("STEPSERVE_CACHE") or Path.home() / ".cache" / "stepserve")


@torch.no_grad()
def encode(vae: torch.nn.Module, x: Tensor) -> Tensor:
    """Posterior means of images x (N, C, H, W) in [-1, 1], in batches."""
    return torch.cat([vae.encode(x[i : i + ENCODE_BATCH])[0] for i in range(0, len(x), ENCODE_BATCH)])


def latent_dataset(
    images: Dataset, autoencoder_dir: str | Path, *, n: int, seed: int, progress: bool = True
) -> Dataset:
    """`images` (normalized to [-1, 1]) as the autoencoder's scaled latents, from the cache when it holds them."""
    from training.autoencoder import load_autoencoder  # (autoencoder imports shapes, training-only)

    ae = load_autoencoder(autoencoder_dir)
    if tuple(ae.manifest["data"]["shape"]) != images.shape:
        raise ValueError(
            f"data.autoencoder {autoencoder_dir}: it encodes images of shape {tuple(ae.manifest['data']['shape'])}, "
            f"data kind {images.kind!r} has {images.shape}"
        )
    if images.normalization != Normalization(mean=[0.5], std=[0.5]):
        raise ValueError(f"data.autoencoder: data kind {images.kind!r} is not normalized to [-1, 1]")
    ema_sha = ae.manifest["files"]["ema.safetensors"]["sha256"]
    path = cache_dir() / "latents" / f"{ema_sha[:16]}-{images.kind}-{n}-{seed}.safetensors"
    vae = ae.vae("ema")
    if path.is_file():
        z = load_file(str(path))["latents"]
    else:
        if progress:
            print(f"encoding {len(images.x)} {images.kind} images with {ae.manifest['name']} (cached in {path})")
        z = encode(vae, images.x)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"latents": z.contiguous()}, str(tmp))
        os.replace(tmp, path)
    if z.shape != (len(images.x), *ae.latent_shape):
        raise ValueError(f"latent cache {path}: shape {tuple(z.shape)} is not ({len(images.x)}, {ae.latent_shape})")
    scale = ae.scale_factor
    channels = ae.latent_shape[0]
    norm = Normalization(mean=[0.0] * channels, std=[1.0 / scale] * channels)
    hp = ae.manifest["vae"]
    fit_on = z[:PREVIEW_FIT_LATENTS]
    preview, psnr = measured_preview(vae.decoder, fit_on)
    space = LatentSpace(
        autoencoder=ae.manifest["name"],
        autoencoder_sha256=ema_sha,
        scale_factor=scale,
        image_shape=images.shape,
        image_normalization=images.normalization,
        decoder_hparams={k: int(hp[k]) for k in ("in_channels", "latent_channels", "base_channels", "downsample")},
        decoder_state={k.removeprefix("decoder."): v for k, v in vae.state_dict().items() if k.startswith("decoder.")},
        preview_state=preview,
        preview_section=preview_manifest(KERNEL, psnr, len(fit_on)),
    )
    return replace(images, x=norm.normalize(z), shape=tuple(ae.latent_shape), normalization=norm, latent=space)


def add_preview(ckpt_dir: str | Path, autoencoder_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Fit a latent checkpoint's preview map on its own data latents (the training draw: kind, n and seed from
    its manifest) and write it in (preview.safetensors, `latent.preview`), for checkpoints written before
    preview maps. The autoencoder (default: models/<its name> beside the checkpoint) must be the one the
    model was trained on (its EMA sha256). Returns the `latent.preview` section."""
    from training.checkpoint import CheckpointError, load_checkpoint, read_manifest, write_manifest, write_preview
    from training.data import load_dataset

    ckpt = load_checkpoint(ckpt_dir)
    if not ckpt.latent or ckpt.decoder_is_onnx:
        raise CheckpointError(f"{ckpt_dir}: not a latent model with a torch decoder; nothing to fit a preview to")
    ae_dir = Path(autoencoder_dir) if autoencoder_dir else Path(ckpt_dir).parent / ckpt.latent["autoencoder"]["name"]
    data_cfg, seed = ckpt.manifest["data"], int(ckpt.manifest["training"]["seed"])
    images = load_dataset(data_cfg["kind"], n=int(data_cfg.get("n", 20000)), seed=seed)
    space = latent_dataset(images, ae_dir, n=int(data_cfg.get("n", 20000)), seed=seed, progress=progress).latent
    if space.autoencoder_sha256 != ckpt.latent["autoencoder"]["ema_sha256"]:
        raise CheckpointError(f"--autoencoder {ae_dir}: not the autoencoder {ckpt_dir} was trained on (EMA sha256)")
    d = Path(ckpt_dir)
    section = space.preview_section
    manifest = read_manifest(d)
    manifest["files"][section["file"]] = write_preview(d, space.preview_state, section)
    manifest["latent"]["preview"] = section
    write_manifest(d, manifest)
    return section


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m training.latents",
        description="Add a preview map (the decoder's linear stand-in for streamed previews, training/preview.py) "
        "to a latent checkpoint written without one; new latent checkpoints get one when trained.",
    )
    p.add_argument("--checkpoint", required=True, help="a latent model's checkpoint directory")
    p.add_argument("--autoencoder", help="the autoencoder it was trained on (default: models/<its name> beside it)")
    args = p.parse_args(argv)
    try:
        section = add_preview(args.checkpoint, args.autoencoder)
    except (OSError, ValueError) as e:
        raise SystemExit(f"training.latents: {e}") from None
    print(f"{args.checkpoint}: preview map {section}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
