"""Tiny nets made elsewhere for the import tests: a seeded diffusers UNet2DModel and a small torch net exported
to ONNX outside the project's checkpoints (what a user would bring)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export.onnx_export import to_onnx_model


def tiny_unet(channels: int = 1, seed: int = 0) -> nn.Module:
    """A randomly initialised UNet2DModel on 8x8 images with one attention level (~45k parameters)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
    ).eval()


class TinyFMNet(nn.Module):
    """x (B, 3), t (B,), y (B,) in [0, 2] -> velocity (B, 3): an MLP on [x, t, onehot(y)]."""

    def __init__(self, num_classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(3 + 1 + num_classes + 1, 32), nn.SiLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(y, self.num_classes + 1).float()
        return self.mlp(torch.cat([x, t[:, None], onehot], dim=1))


def export_tiny_fm(path: Path, net: nn.Module) -> Path:
    inputs = (torch.zeros(3, 3), torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long))
    import onnx

    onnx.save_model(to_onnx_model(net.eval(), inputs, 18), path)
    return path


FM_SPEC = """\
objective: fm
path: linear
shape: [3]
num_classes: 2
normalization: {mean: [1.0, 2.0, 3.0], std: [2.0]}
name: tiny-fm
"""


DIT_SCHEDULER = {"clip_sample": False, "prediction_type": "epsilon", "beta_schedule": "linear"}


def tiny_dit_pipeline(learned_sigma: bool = True, seed: int = 0):
    """A randomly initialised DiTPipeline: a 2-layer DiT (patch 2, hidden 16, 1000 classes as DiTPipeline's
    null label 1000 needs) on 4x4x4 latents, a 2-level AutoencoderKL (8x8 RGB images), a DDIMScheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=2,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    # adaLN-Zero starts every block and the final layer at zero (an untrained DiT outputs 0); random weights
    # there make the comparison exercise the whole net.
    with torch.no_grad():
        for p in transformer.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
        scaling_factor=0.5,
    )
    return DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=DDIMScheduler(**DIT_SCHEDULER))
