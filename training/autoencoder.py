"""The latent stage's autoencoder: its config, training, checkpoint and latent scale factor.

    python -m training.autoencoder --config configs/shapes-vae.yaml [--out DIR] [--max-steps N]

Config (YAML, every key known or refused by name): `name`; `data` {kind: shapes, n, seed}; `vae`
{latent_channels, base_channels, downsample} (training/nets/vae.py); `train` {steps, batch_size, lr,
warmup_steps, kl_weight, ema_decay, seed}. Images are trained on in [-1, 1]. The loss is the reconstruction's
mean squared error per pixel plus kl_weight x the KL to N(0, I) per latent element (a posterior draw is
decoded, reparameterised). AdamW, linear warm-up, EMA weights.

The checkpoint is a directory like the diffusion models' (training/checkpoint.py: hashes checked on every load,
nothing unpickled): manifest.json (format_version, `kind: autoencoder`, name, vae hparams, data, latent
{shape, scale_factor}, training, files) with weights.safetensors, ema.safetensors and reconstructions.png.
`scale_factor` is 1 / the standard deviation of the EMA encoder's posterior means over SCALE_IMAGES training
images, so latents times it have unit variance (Stable Diffusion's 0.18215 is this number for its VAE).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from training.checkpoint import (
    FORMAT_VERSION,
    MANIFEST,
    WEIGHT_FILES,
    CheckpointError,
    _write_json_atomic,
    read_manifest,
    sha256_file,
    verify_file,
)
from training.config import _strict, read_yaml
from training.ema import EMA
from training.nets.vae import VAE, kl_to_standard_normal
from training.shapes import shapes_raw

KIND = "autoencoder"
DATA_KINDS = ("shapes",)
SCALE_IMAGES = 2000
FIGURE = "reconstructions.png"


@dataclass(frozen=True)
class VaeData:
    kind: str = "shapes"
    n: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"config data.kind must be one of {list(DATA_KINDS)}, got {self.kind!r}")
        _whole(self.n, "data.n", 2)


@dataclass(frozen=True)
class VaeNet:
    latent_channels: int = 4
    base_channels: int = 32
    downsample: int = 2

    def __post_init__(self) -> None:
        _whole(self.latent_channels, "vae.latent_channels", 1)
        _whole(self.base_channels, "vae.base_channels", 8)
        _whole(self.downsample, "vae.downsample", 1)


@dataclass(frozen=True)
class VaeTrain:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-4
    ema_decay: float = 0.999
    seed: int = 0

    def __post_init__(self) -> None:
        _whole(self.steps, "train.steps", 1)
        _whole(self.batch_size, "train.batch_size", 1)
        _whole(self.warmup_steps, "train.warmup_steps", 0)
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"config train.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.kl_weight, (int, float)) or self.kl_weight < 0:
            raise ValueError(f"config train.kl_weight must be >= 0, got {self.kl_weight!r}")
        if not isinstance(self.ema_decay, (int, float)) or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config train.ema_decay must be in [0, 1), got {self.ema_decay!r}")


@dataclass(frozen=True)
class VaeConfig:
    name: str
    data: VaeData = field(default_factory=VaeData)
    vae: VaeNet = field(default_factory=VaeNet)
    train: VaeTrain = field(default_factory=VaeTrain)


def _whole(value: Any, name: str, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"config {name} must be a whole number >= {least}, got {value!r}")


def vae_config_from_dict(d: Any) -> VaeConfig:
    if not isinstance(d, dict):
        raise ValueError("config must be a mapping")
    unknown = sorted(set(d) - {f.name for f in fields(VaeConfig)})
    if unknown:
        raise ValueError(f"unknown config key(s) at top level: {', '.join(unknown)}")
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise ValueError("config needs a 'name'")
    return VaeConfig(
        name=d["name"],
        data=_strict(VaeData, "data", d.get("data", {})),
        vae=_strict(VaeNet, "vae", d.get("vae", {})),
        train=_strict(VaeTrain, "train", d.get("train", {})),
    )


def load_vae_config(path: str | Path) -> VaeConfig:
    return vae_config_from_dict(read_yaml(path))


def images(cfg: VaeData, n: int | None = None, seed: int | None = None) -> torch.Tensor:
    """Training images in [-1, 1], (n, 3, 32, 32)."""
    raw, _ = shapes_raw(cfg.n if n is None else n, cfg.seed if seed is None else seed)
    return torch.from_numpy(raw) * 2.0 - 1.0


def loss_terms(vae: VAE, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction MSE per pixel, KL per latent element) on a batch."""
    recon, mean, logvar = vae(x)
    mse = (recon - x).pow(2).mean()
    kl = kl_to_standard_normal(mean, logvar).mean() / mean[0].numel()
    return mse + kl_weight * kl, mse, kl


@torch.no_grad()
def scale_factor(vae: VAE, x: torch.Tensor) -> float:
    """1 / std of the posterior means of `x` (every element together)."""
    means = torch.cat([vae.encode(x[i : i + 256])[0] for i in range(0, len(x), 256)])
    return float(1.0 / means.std())


@torch.no_grad()
def psnr(vae: VAE, x: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB, images in [0, 1]) of the reconstructions from the posterior means."""
    recon = torch.cat([vae.decode(vae.encode(x[i : i + 256])[0]) for i in range(0, len(x), 256)])
    mse = ((recon.clamp(-1, 1) - x) / 2).pow(2).mean().item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def train_vae(cfg: VaeConfig, out: str | Path, max_steps: int | None = None, progress: bool = True) -> Path:
    """Train the autoencoder of `cfg` and write its checkpoint into `out`; the directory."""
    t = cfg.train
    steps = min(t.steps, max_steps) if max_steps else t.steps
    torch.manual_seed(t.seed)
    x = images(cfg.data)
    vae = VAE(3, **asdict(cfg.vae))
    ema = EMA(vae, t.ema_decay)
    opt = torch.optim.AdamW(vae.parameters(), lr=t.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, t.warmup_steps)))
    gen = torch.Generator().manual_seed(t.seed)
    vae.train()
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=cfg.name, unit="step", disable=not progress)
    mse = kl = torch.tensor(0.0)
    for _ in bar:
        batch = x[torch.randint(0, len(x), (t.batch_size,), generator=gen)]
        loss, mse, kl = loss_terms(vae, batch, t.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(vae)
        bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}", refresh=False)
    seconds = time.perf_counter() - started
    model = ema.model.eval()
    held_out = images(cfg.data, n=500, seed=cfg.data.seed + 1_000_000)
    factor = scale_factor(model, x[:SCALE_IMAGES])
    latent = [cfg.vae.latent_channels, 32 >> cfg.vae.downsample, 32 >> cfg.vae.downsample]
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for role, module in (("raw", vae), ("ema", model)):
        name = WEIGHT_FILES[role]
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(d / name))
        files[name] = {"role": role, "sha256": sha256_file(d / name)}
    figure(model, held_out[:10], d / FIGURE)
    files[FIGURE] = {"role": "figure", "sha256": sha256_file(d / FIGURE)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "name": cfg.name,
        "vae": {"in_channels": 3, **asdict(cfg.vae)},
        "data": {**asdict(cfg.data), "shape": [3, 32, 32], "range": [-1.0, 1.0]},
        "latent": {"shape": latent, "scale_factor": factor},
        "training": {
            "steps": steps,
            "seconds": round(seconds, 1),
            "train": asdict(t),
            "final_mse": float(mse.detach()),
            "final_kl_per_element": float(kl.detach()),
            "held_out_psnr_db": psnr(model, held_out),
        },
        "files": files,
    }
    _write_json_atomic(d / MANIFEST, manifest)
    return d


def figure(vae: VAE, x: torch.Tensor, path: Path) -> None:
    """Originals (top row) over their reconstructions from the posterior means (bottom row), a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        recon = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
    fig, axes = plt.subplots(2, len(x), figsize=(len(x), 2.2))
    for j in range(len(x)):
        for row, img in ((0, x[j]), (1, recon[j])):
            axes[row, j].imshow(((img + 1) / 2).permute(1, 2, 0).numpy())
            axes[row, j].axis("off")
    axes[0, 0].set_title("data", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class Autoencoder:
    """A loaded, verified autoencoder checkpoint."""

    path: Path
    manifest: dict[str, Any]

    @property
    def scale_factor(self) -> float:
        return float(self.manifest["latent"]["scale_factor"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent"]["shape"])

    def vae(self, weights: str = "ema") -> VAE:
        if weights not in WEIGHT_FILES:
            raise ValueError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {weights!r}")
        name = WEIGHT_FILES[weights]
        path = verify_file(self.path, name, self.manifest["files"][name]["sha256"])
        model = VAE(**self.manifest["vae"])
        model.load_state_dict(load_file(str(path)), strict=True)
        return model.eval().requires_grad_(False)


def load_autoencoder(ckpt_dir: str | Path) -> Autoencoder:
    """Read an autoencoder checkpoint, verifying every listed file's sha256; CheckpointError names what is wrong."""
    d = Path(ckpt_dir)
    manifest = read_manifest(d)
    if manifest.get("kind") != KIND:
        raise CheckpointError(f"{d / MANIFEST}: not an autoencoder checkpoint (kind {manifest.get('kind')!r})")
    for key in ("name", "vae", "latent", "files"):
        if key not in manifest:
            raise CheckpointError(f"{d / MANIFEST}: required key {key!r} is missing")
    for role in ("raw", "ema"):
        if WEIGHT_FILES[role] not in manifest["files"]:
            raise CheckpointError(f"{d / MANIFEST}: the {role} weights ({WEIGHT_FILES[role]}) are not listed")
    for name, info in manifest["files"].items():
        verify_file(d, name, info["sha256"])
    return Autoencoder(d, manifest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.autoencoder",
        description="Train the latent stage's KL autoencoder from a YAML config and write its checkpoint "
        "(manifest.json with the latent scale factor, safetensors weights, a reconstruction figure).",
    )
    p.add_argument("--config", required=True, help="autoencoder config, e.g. configs/shapes-vae.yaml")
    p.add_argument("--out", help="checkpoint directory (default: models/<config name>)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (quick runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        if args.max_steps is not None and args.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
        cfg = load_vae_config(args.config)
        out = train_vae(cfg, args.out or Path("models") / cfg.name, args.max_steps, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = load_autoencoder(out).manifest["training"]
    print(f"checkpoint written to {out}: held-out PSNR {t['held_out_psnr_db']:.1f} dB, {t['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
