"""A latent model's preview map: a linear stand-in for its decoder, for streamed previews.

The map is one k x k convolution from the latent (C, h, w) to f*f*3 channels, then a pixel shuffle to the
image (3, f*h, f*w), f the decoder's upsampling factor:

    preview(z) = pixel_shuffle(conv_k(z; W) + b, f)

W and b are the least-squares fit of the decoder's own outputs on a model's data latents, so the map is the
best linear approximation of the decoder over a k x k neighbourhood of latent pixels (a "latent to RGB"
projection as diffusion UIs use for previews, with spatial context). It costs 3 f^2 C k^2 multiply-adds a
latent pixel, against a convolutional decoder's millions; its PSNR against the decoder on held-out latents
is recorded with it (docs/benchmarks.md, "Latent models").

Shapes: z is raw latents (N, C, h, w), as the decoder takes them; images (N, 3, H, W) in the decoder's
output range ([-1, 1] for the project's VAE).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

PREVIEW_FILE = "preview.safetensors"
KERNEL = 3  # 3 x 3 latent pixels: 26.8 dB against the decoder on shapes-vae, 1 x 1 gives 22.9 (bench.latent)
HELD_OUT = 0.2  # share of the latents kept out of the fit to measure its PSNR


def apply_preview(state: dict[str, Tensor], z: Tensor) -> Tensor:
    """The preview map `state` ({"weight": (3 f^2, C, k, k), "bias": (3 f^2,)}) on raw latents z (N, C, h, w):
    images (N, 3, f h, f w)."""
    w = state["weight"]
    f = math.isqrt(w.shape[0] // 3)
    return F.pixel_shuffle(F.conv2d(z.to(w.dtype), w, state["bias"], padding=w.shape[-1] // 2), f)


def fit_preview(z: Tensor, images: Tensor, kernel: int = KERNEL) -> dict[str, Tensor]:
    """Least-squares fit of a preview map from latents z (N, C, h, w) to images (N, 3, f h, f w): the conv
    weights and bias that minimise the squared error of `apply_preview` over every image pixel."""
    if kernel % 2 != 1:
        raise ValueError(f"preview kernel must be odd, got {kernel}")
    n, c, h, w = z.shape
    f = images.shape[-1] // w
    if images.shape[0] != n or images.shape[1] != 3 or images.shape[-2:] != (f * h, f * w):
        raise ValueError(
            f"preview fit: images {tuple(images.shape)} are not (N, 3, f h, f w) of latents {tuple(z.shape)}"
        )
    cols = F.unfold(z.double(), kernel, padding=kernel // 2)  # (N, C k^2, h w)
    a = torch.cat([cols, torch.ones(n, 1, h * w, dtype=cols.dtype)], 1).transpose(1, 2).reshape(n * h * w, -1)
    y = F.pixel_unshuffle(images.double(), f).flatten(2).transpose(1, 2).reshape(n * h * w, 3 * f * f)
    sol = torch.linalg.lstsq(a, y).solution  # (C k^2 + 1, 3 f^2)
    weight = sol[:-1].T.reshape(3 * f * f, c, kernel, kernel)
    return {"weight": weight.float().contiguous(), "bias": sol[-1].float().contiguous()}


def psnr_db(a: Tensor, b: Tensor, peak_to_peak: float = 2.0) -> float:
    """PSNR of a against b, both in the decoder's output range clipped to [-1, 1] (peak to peak 2)."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)).double() ** 2).mean())
    return 10.0 * math.log10(peak_to_peak**2 / max(mse, 1e-20))


@torch.no_grad()
def measured_preview(decoder: torch.nn.Module, z: Tensor, kernel: int = KERNEL) -> tuple[dict[str, Tensor], float]:
    """Fit a preview map to `decoder` on the latents z (N, C, h, w) (the first 1 - HELD_OUT of them) and measure
    it on the rest: (state, PSNR in dB against the decoder's images of the held-out latents)."""
    if len(z) < 10:
        raise ValueError(f"preview fit: {len(z)} latents are too few (at least 10)")
    images = decoder(z.float()).float()
    cut = fitted_count(len(z))
    state = fit_preview(z[:cut], images[:cut], kernel)
    return state, psnr_db(apply_preview(state, z[cut:].float()), images[cut:])


def fitted_count(n: int) -> int:
    """How many of n latents `measured_preview` fits on (the rest are held out)."""
    return int(n * (1 - HELD_OUT))


def preview_manifest(kernel: int, psnr: float, n: int, latents: str = "data") -> dict[str, Any]:
    """The `latent.preview` section of a map measured on n latents: the file, its kernel, how many latents it
    was fitted on and held out, what they were ("data": the model's data latents; "standard normal": drawn as
    the samplers start, where no data is at hand) and its PSNR against the decoder on the held-out ones."""
    fitted = fitted_count(n)
    return {
        "file": PREVIEW_FILE,
        "kernel": kernel,
        "psnr_db_vs_decoder": round(psnr, 2),
        "fitted": fitted,
        "held_out": n - fitted,
        "latents": latents,
    }


def save_preview(state: dict[str, Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def load_preview(path: Path) -> dict[str, Tensor]:
    state = load_file(str(path))
    if set(state) != {"weight", "bias"} or state["weight"].ndim != 4 or state["weight"].shape[0] % 3:
        raise ValueError(f"{path}: not a preview map (weight (3 f^2, C, k, k) and bias)")
    return state
