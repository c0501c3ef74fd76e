"""Import a diffusers DiT pipeline (as `DiTPipeline.save_pretrained` writes it) as a servable latent checkpoint.

A DiT pipeline directory holds `transformer/` (DiTTransformer2DModel, or the older Transformer2DModel with
patch_size and norm_type "ada_norm_zero"), `vae/` (AutoencoderKL) and `scheduler/` (DDIMScheduler or
DDPMScheduler, mapped by export.imports.diffusers_scheduler or refused). What the checkpoint holds:

- net-ema.onnx: the transformer as the project's net, x (B, C, h, w) latents, t (B,) float timesteps in
  [0, 1000) (what DiTPipeline passes), y (B,) class labels -> eps (B, C, h, w). A transformer with learned sigma
  (out_channels = 2 C) has its variance half split off, as DiTPipeline does before every scheduler step; the
  project's samplers use their fixed variances.
- Class labels: DiT's label table has a row past its classes for dropped labels (class_dropout_prob 0.1, which
  DiT always builds), so the null label is num_embeds_ada_norm and guidance is DiTPipeline's
  uncond + w * (cond - uncond) on eps.
- decoder.onnx: AutoencoderKL.decode (post_quant_conv included), raw latents z -> image in [-1, 1].
- Data space: the net works on latents scaled by the VAE's scaling_factor, so the normalization is mean 0, std
  1 / scaling_factor (denormalized = what the VAE decodes); images are (decoded / 2 + 0.5) clipped to [0, 1],
  as DiTPipeline returns them.

Both graphs are checked against their torch modules with onnxruntime before the checkpoint is written.
Refused, in one line naming the setting: a VAE with shift_factor or latents_mean / latents_std (not DiT's
scaling), a transformer whose channels differ from the VAE's latent channels, a non-square or unpatched
transformer, and everything the scheduler mapping refuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.imports.checkpoint_writer import write_imported
from export.imports.diffusers_net import NET_TRACE_BATCH, config_dict, net_graph, require_diffusers, scheduler_config
from export.imports.diffusers_scheduler import ImportRefused, map_scheduler
from export.onnx_export import DECODER_ONNX, DEFAULT_OPSET, decoder_to_onnx_model
from export.parity import EVAL_TOLERANCE, ort_forward
from sampling.request import onnx_decoder
from training.checkpoint import Checkpoint

TRANSFORMER_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
PARITY_BATCHES = (1, 5)


def is_dit_pipeline(path: Path) -> bool:
    """A pipeline directory with a transformer/ (a DiT layout), not a UNet one."""
    return (path / "transformer").is_dir()


class DiTNet(nn.Module):
    """A DiT transformer as the project's net: x (B, C, h, w), t (B,) float, y (B,) -> eps (B, C, h, w)."""

    def __init__(self, transformer: nn.Module, channels: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, timestep=t, class_labels=y).sample[:, : self.channels]


class VAEDecode(nn.Module):
    """AutoencoderKL's decode as the project's decoder: raw latents z -> image in [-1, 1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


def _class_of(directory: Path) -> str | None:
    config = directory / "config.json"
    if not config.is_file():
        raise ImportRefused(f"{directory}: no config.json; expected a diffusers model directory (save_pretrained)")
    return json.loads(config.read_text()).get("_class_name")


def load_transformer(model: nn.Module | str | Path) -> nn.Module:
    """The DiT transformer (object or directory), checked to be a patched adaLN-Zero, class-conditional one."""
    diffusers = require_diffusers()
    if isinstance(model, str | Path):
        cls = _class_of(Path(model))
        if cls not in TRANSFORMER_CLASSES:
            raise ImportRefused(f"{model}: a {cls}, not a {' or '.join(TRANSFORMER_CLASSES)}")
        model = getattr(diffusers, cls).from_pretrained(str(model), low_cpu_mem_usage=False)
    cls = type(model).__name__
    if cls not in TRANSFORMER_CLASSES:
        raise ImportRefused(f"a {cls}, not a {' or '.join(TRANSFORMER_CLASSES)}")
    cfg = model.config
    if cfg.get("patch_size") is None:
        raise ImportRefused(f"{cls} patch_size=None: not a DiT (patched latent input); not mapped")
    if cfg.get("norm_type") != "ada_norm_zero":
        raise ImportRefused(f"{cls} norm_type={cfg.get('norm_type')!r}: only DiT's 'ada_norm_zero' is mapped")
    if not cfg.get("num_embeds_ada_norm"):
        raise ImportRefused(f"{cls} num_embeds_ada_norm={cfg.get('num_embeds_ada_norm')!r}: DiT needs class labels")
    if cls == "Transformer2DModel" and cfg.get("cross_attention_dim") is not None:
        raise ImportRefused(f"{cls} cross_attention_dim={cfg.cross_attention_dim}: text conditioning is not mapped")
    if not isinstance(cfg.sample_size, int):
        raise ImportRefused(f"{cls} sample_size={cfg.sample_size!r}: only square latents are mapped")
    return model.eval().requires_grad_(False).float()


def load_vae(model: nn.Module | str | Path) -> nn.Module:
    """The AutoencoderKL (object or directory), refused where its latents are not plainly scaled."""
    diffusers = require_diffusers()
    if isinstance(model, str | Path):
        cls = _class_of(Path(model))
        if cls != "AutoencoderKL":
            raise ImportRefused(f"{model}: a {cls}, not an AutoencoderKL")
        model = diffusers.AutoencoderKL.from_pretrained(str(model), low_cpu_mem_usage=False)
    if type(model).__name__ != "AutoencoderKL":
        raise ImportRefused(f"a {type(model).__name__}, not an AutoencoderKL")
    cfg = model.config
    for key in ("shift_factor", "latents_mean", "latents_std"):
        if cfg.get(key) is not None:
            raise ImportRefused(f"AutoencoderKL {key}={cfg[key]!r}: only DiT's plain scaling_factor is mapped")
    return model.eval().requires_grad_(False).float()


def latent_shape(transformer: nn.Module, vae: nn.Module) -> tuple[int, int, int]:
    channels, size = int(transformer.config.in_channels), int(transformer.config.sample_size)
    if channels != int(vae.config.latent_channels):
        raise ImportRefused(
            f"transformer in_channels={channels} but the AutoencoderKL's latent_channels={vae.config.latent_channels}"
        )
    out = transformer.config.out_channels or channels
    if out not in (channels, 2 * channels):
        raise ImportRefused(f"transformer out_channels={out}: expected {channels} (eps) or {2 * channels} (+ sigma)")
    return channels, size, size


def image_shape(vae: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.out_channels), shape[1] * factor, shape[2] * factor


def parity(net: DiTNet, decoder: VAEDecode, out_dir: Path, shape: tuple[int, ...], null_label: int) -> dict:
    """max |onnxruntime - torch| for both graphs on random inputs at batches 1 and 5; refused past the export
    tolerance."""
    forward = ort_forward(out_dir / "net-ema.onnx", num_threads=1)
    decode = onnx_decoder(out_dir / DECODER_ONNX, num_threads=1)
    g = torch.Generator().manual_seed(0)
    worst_net = worst_decoder = 0.0
    for b in PARITY_BATCHES:
        x = torch.randn((b, *shape), generator=g)
        t = torch.randint(0, 1000, (b,), generator=g).float()
        y = torch.randint(0, null_label + 1, (b,), generator=g)
        with torch.inference_mode():
            ref, image = net(x, t, y), decoder(x)
        worst_net = max(worst_net, float((forward(x, t, y) - ref).abs().max()))
        worst_decoder = max(worst_decoder, float((decode(x) - image).abs().max()))
    for what, worst in (("transformer", worst_net), ("decoder", worst_decoder)):
        if worst > EVAL_TOLERANCE:
            raise ImportRefused(f"onnxruntime differs from the {what} by {worst:.1e} (> {EVAL_TOLERANCE:g})")
    return {"parity_max_abs_diff": worst_net, "decoder_parity_max_abs_diff": worst_decoder}


def import_dit(
    pipeline: Path | None = None,
    out: Path | None = None,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    *,
    transformer: nn.Module | Path | None = None,
    vae: nn.Module | Path | None = None,
    scheduler: Any = None,
) -> Checkpoint:
    """A latent checkpoint in `out` from a DiT pipeline directory, or from its three parts (objects or dirs)."""
    if out is None:
        raise ValueError("import_dit needs an --out directory")
    if pipeline is not None:
        transformer = transformer or pipeline / "transformer"
        vae = vae or pipeline / "vae"
        scheduler = scheduler or pipeline / "scheduler"
        for part in (transformer, vae, scheduler):
            if isinstance(part, Path) and not part.is_dir():
                raise ImportRefused(f"{pipeline}: a DiT pipeline needs transformer/, vae/ and scheduler/; no {part}")
    mapping = map_scheduler(scheduler_config(scheduler))  # refuse before the slow exports
    dit, autoencoder = load_transformer(transformer), load_vae(vae)
    shape = latent_shape(dit, autoencoder)
    images = image_shape(autoencoder, shape)
    classes = int(dit.config.num_embeds_ada_norm)
    net, decoder = DiTNet(dit, shape[0]).eval(), VAEDecode(autoencoder).eval()
    graph = net_graph(net, shape, opset)
    decoder_graph = decoder_to_onnx_model(decoder, torch.zeros((NET_TRACE_BATCH, *shape)), opset)
    scale = float(autoencoder.config.scaling_factor)
    diffusers = require_diffusers()

    return write_imported(
        out,
        graph,
        name=name or out.name,
        objective=mapping.objective,
        data={
            "kind": "image",
            "shape": list(shape),
            "normalization": {"mean": [0.0] * shape[0], "std": [1.0 / scale] * shape[0]},
            "num_classes": classes,
            "clip": [0.0, 1.0],
        },
        net={
            "kind": "diffusers-dit",
            "hparams": {
                "parameters": sum(p.numel() for p in dit.parameters()),
                "learned_sigma": (dit.config.out_channels or shape[0]) == 2 * shape[0],
            },
        },
        source={
            "from": "diffusers",
            "diffusers": diffusers.__version__,
            "net_class": type(dit).__name__,
            "net_config": config_dict(dit),
            "vae_config": config_dict(autoencoder),
            "scheduler_config": scheduler_config(scheduler),
        },
        spacing=mapping.spacing,
        verify=lambda path: parity(net, decoder, path.parent, shape, classes),
        decoder=decoder_graph,
        latent={
            "autoencoder": {"name": "diffusers AutoencoderKL"},
            "scale_factor": scale,
            "image_shape": list(images),
            "image_normalization": {"mean": [0.5], "std": [0.5]},
            "decoder": {"hparams": {"parameters": sum(p.numel() for p in autoencoder.decoder.parameters())}},
        },
    )
