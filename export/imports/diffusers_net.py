"""Import a diffusers `UNet2DModel` with its DDIM / DDPM scheduler config as a servable ONNX checkpoint.

The UNet is wrapped to the project's net signature, forward(x, t, y) -> prediction, and exported with the
project's exporter (dynamic batch, inputs x, t, y). Time needs no conversion: the project's DDPM samplers
ask for the integer timestep t in [0, 1000) (as float32), which is what diffusers' pipelines pass to the
UNet (its sinusoidal embedding casts it to float either way). The UNet is unconditional, so y is taken and
ignored (the model has 0 classes; every row carries the null label 0). diffusers' image pipelines work in
[-1, 1] and return (x / 2 + 0.5).clamp(0, 1), so the data normalization is mean 0.5, std 0.5 per channel
with samples clipped to [0, 1]. The ONNX net is checked against the UNet on random inputs before the
checkpoint is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.imports.checkpoint_writer import write_imported
from export.imports.diffusers_scheduler import ImportRefused, map_scheduler
from export.onnx_export import DEFAULT_OPSET, to_onnx_model
from export.parity import EVAL_TOLERANCE, ort_forward
from training.checkpoint import Checkpoint

EXTRA_HINT = "pip install 'stepserve[import]'"
PARITY_BATCHES = (1, 5)


def require_diffusers() -> Any:
    """The diffusers module, or a one-line refusal naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportRefused(f"importing a diffusers model needs diffusers, the `import` extra: {EXTRA_HINT}") from e
    return diffusers


class UNetNet(nn.Module):
    """An unconditional UNet2DModel as the project's net: x (B, C, H, W), t (B,) float, y (B,) ignored."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def load_unet(model: nn.Module | str | Path) -> nn.Module:
    """A UNet2DModel object, or one read from its directory (config.json + weights) with from_pretrained."""
    diffusers = require_diffusers()
    if isinstance(model, str | Path):
        if not (Path(model) / "config.json").is_file():
            raise ImportRefused(f"{model}: no config.json; expected a UNet2DModel directory (save_pretrained)")
        cls = json.loads((Path(model) / "config.json").read_text()).get("_class_name")
        if cls != "UNet2DModel":
            raise ImportRefused(f"{model}: a {cls}, not a UNet2DModel")
        model = diffusers.UNet2DModel.from_pretrained(str(model), low_cpu_mem_usage=False)
    if type(model).__name__ != "UNet2DModel":
        raise ImportRefused(f"a {type(model).__name__}, not a UNet2DModel")
    cfg = model.config
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        raise ImportRefused("class-conditional UNet2DModel: it has no null label for guidance; not mapped")
    if cfg.in_channels != cfg.out_channels:
        raise ImportRefused(f"UNet2DModel in_channels {cfg.in_channels} != out_channels {cfg.out_channels}")
    return model.eval().requires_grad_(False).float()


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """A scheduler's config: from a scheduler object, a dict, scheduler_config.json or its directory."""
    if isinstance(scheduler, dict):
        return dict(scheduler)
    if isinstance(scheduler, str | Path):
        path = Path(scheduler)
        path = path / "scheduler_config.json" if path.is_dir() else path
        if not path.is_file():
            raise ImportRefused(f"{path}: no scheduler config there")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ImportRefused(f"{path}: not valid JSON ({e})") from e
    config = dict(scheduler.config)
    config.setdefault("_class_name", type(scheduler).__name__)
    return config


def image_shape(unet: nn.Module) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(unet.config.in_channels), int(h), int(w)


def parity(unet: nn.Module, onnx_path: Path, shape: tuple[int, ...]) -> float:
    """max |onnxruntime - UNet| over random x ~ N(0, I) and integer t in [0, 1000), batches 1 and 5;
    refused beyond the export tolerance."""
    forward = ort_forward(onnx_path, num_threads=1)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in PARITY_BATCHES:
        x = torch.randn((b, *shape), generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)
        with torch.inference_mode():
            ref = unet(x, t).sample
        worst = max(worst, float((forward(x, t.float(), torch.zeros(b, dtype=torch.long)) - ref).abs().max()))
    if worst > EVAL_TOLERANCE:
        raise ImportRefused(f"onnxruntime differs from the UNet by {worst:.1e} (> {EVAL_TOLERANCE:g}); not imported")
    return worst


NET_TRACE_BATCH = 3  # any size > 1: torch.export specialises a dimension traced at size 1


def net_graph(net: nn.Module, shape: tuple[int, ...], opset: int):
    """An imported net (forward(x, t, y) on DDPM timesteps) traced to ONNX with the project's exporter."""
    b = NET_TRACE_BATCH
    inputs = (torch.zeros((b, *shape)), torch.full((b,), 500.0), torch.zeros(b, dtype=torch.long))
    return to_onnx_model(net.eval(), inputs, opset)


def config_dict(module: nn.Module) -> dict[str, Any]:
    """A diffusers model's config as plain JSON values (tuples as lists)."""
    return json.loads(json.dumps(dict(module.config), default=list))


def import_diffusers(
    model: nn.Module | str | Path,
    scheduler: Any,
    out: Path,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> Checkpoint:
    """A checkpoint in `out` serving `model` (UNet2DModel or its directory) under `scheduler`'s objective."""
    mapping = map_scheduler(scheduler_config(scheduler))  # refuse before the slow export
    unet = load_unet(model)
    shape = image_shape(unet)
    graph = net_graph(UNetNet(unet), shape, opset)
    params = sum(p.numel() for p in unet.parameters())
    diffusers = require_diffusers()
    return write_imported(
        out,
        graph,
        name=name or out.name,
        objective=mapping.objective,
        data={
            "kind": "image",
            "shape": list(shape),
            "normalization": {"mean": [0.5] * shape[0], "std": [0.5] * shape[0]},
            "num_classes": 0,
            "clip": [0.0, 1.0],
        },
        net={"kind": "diffusers-unet2d", "hparams": {"parameters": params}},
        source={
            "from": "diffusers",
            "diffusers": diffusers.__version__,
            "net_class": "UNet2DModel",
            "net_config": config_dict(unet),
            "scheduler_config": scheduler_config(scheduler),
        },
        spacing=mapping.spacing,
        verify=lambda path: {"parity_max_abs_diff": parity(unet, path, shape)},
    )
