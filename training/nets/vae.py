"""A KL-regularised convolutional autoencoder (the shape of Stable Diffusion's AutoencoderKL, small): images
(N, C, H, W) in [-1, 1] to a diagonal Gaussian posterior over latents (N, latent_channels, H / f, W / f),
f = 2 ** downsample, and latents back to images.

Encoder: a 3x3 conv in, then per level a residual block and a stride-2 conv (channels doubling up to 4x
base), a residual block, GroupNorm + SiLU, and a 3x3 conv to 2 x latent_channels (mean and log-variance).
The decoder mirrors it with nearest-neighbour upsampling. Residual blocks are GroupNorm-SiLU-conv twice with
a skip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _widths(base: int, downsample: int) -> list[int]:
    return [base * min(2**i, 4) for i in range(downsample + 1)]


def build_decoder(in_channels: int, latent_channels: int, base_channels: int, downsample: int) -> nn.Sequential:
    """The decoder alone (the VAE's `decoder`, same parameter names): latents (N, latent_channels, h, w) to
    images (N, in_channels, h * 2**downsample, w * 2**downsample) in [-1, 1]. A latent model's checkpoint holds
    this half only."""
    w = _widths(base_channels, downsample)
    dec: list[nn.Module] = [nn.Conv2d(latent_channels, w[-1], 3, padding=1), ResBlock(w[-1])]
    for i in reversed(range(downsample)):
        dec += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w[i + 1], w[i], 3, padding=1),
            ResBlock(w[i]),
        ]
    dec += [_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], in_channels, 3, padding=1)]
    return nn.Sequential(*dec)


class VAE(nn.Module):
    def __init__(self, in_channels: int = 3, latent_channels: int = 4, base_channels: int = 32, downsample: int = 2):
        super().__init__()
        if downsample < 1 or latent_channels < 1 or base_channels < 8:
            raise ValueError(
                f"vae: need downsample >= 1, latent_channels >= 1, base_channels >= 8; got {downsample}, "
                f"{latent_channels}, {base_channels}"
            )
        self.in_channels, self.latent_channels, self.downsample = in_channels, latent_channels, downsample
        w = _widths(base_channels, downsample)
        enc: list[nn.Module] = [nn.Conv2d(in_channels, w[0], 3, padding=1)]
        for i in range(downsample):
            enc += [ResBlock(w[i]), nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1)]
        enc += [ResBlock(w[-1]), _norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = build_decoder(in_channels, latent_channels, base_channels, downsample)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and log-variance (clamped to [-30, 20], as AutoencoderKL does)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, mean, logvar); the latent is a posterior draw (reparameterised) or its mean."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return self.decode(z), mean, logvar


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over the latent's elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
