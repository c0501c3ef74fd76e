"""python -m export import diffusers|onnx: make a servable checkpoint from a net made elsewhere.

A refusal (a setting that does not map exactly, a bad spec field, a graph without the (x, t, y) contract,
diffusers missing) ends with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from export.imports.diffusers_scheduler import ImportRefused
from export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

DESCRIPTION = (
    "Make a servable checkpoint (manifest.json + net-ema.onnx, no torch weights: serve it with backend "
    "onnxruntime) from a net made elsewhere. diffusers: an unconditional UNet2DModel, or a DiT pipeline "
    "(transformer/ + vae/ as DiTPipeline saves it: a class-conditional latent model, its VAE decoder as "
    "decoder.onnx), with its DDIMScheduler or DDPMScheduler config, mapped exactly onto the project's "
    "objective (schedule, target) and default timestep "
    "spacing, or refused (clip_sample, thresholding, other beta schedules, ...; docs/export.md); needs the "
    "`import` extra. onnx: any ONNX file with inputs x, t, y, described by a small YAML spec."
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export import", description=DESCRIPTION)
    sub = p.add_subparsers(dest="source", required=True)
    d = sub.add_parser(
        "diffusers",
        help="a diffusers UNet2DModel or DiT pipeline and its scheduler config",
        description="Export a diffusers UNet2DModel, or a DiT pipeline's transformer and VAE decoder, to ONNX "
        "(checked against the torch modules with onnxruntime) with the objective its DDIMScheduler / "
        "DDPMScheduler config maps to.",
    )
    d.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a pipeline directory (save_pretrained) with unet/ and scheduler/ (DDPM/DDIM pipeline) or "
        "transformer/, vae/ and scheduler/ (DiTPipeline), or a UNet2DModel directory",
    )
    d.add_argument("--scheduler", type=Path, help="scheduler_config.json or its directory (default: <model>/scheduler)")
    d.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset {MIN_OPSET}..{MAX_OPSET}")
    o = sub.add_parser(
        "onnx",
        help="an ONNX file with inputs x, t, y plus a YAML spec",
        description="Serve an ONNX net (x (B, *shape) f32, t (B,) f32, y (B,) i64 -> (B, *shape) f32); the YAML "
        "spec gives objective (ddpm: schedule, target; fm: path), shape, num_classes, normalization and "
        "optionally clip, spacing, name (see docs/export.md).",
    )
    o.add_argument("--onnx", required=True, type=Path, help="the .onnx file (one file, no external data)")
    o.add_argument("--spec", required=True, type=Path, help="the YAML spec")
    for q in (d, o):
        q.add_argument(
            "--out", required=True, type=Path, help="the new checkpoint directory (must not exist or be empty)"
        )
        q.add_argument("--name", help="the model's name (default: the spec's name or the --out directory's name)")
    return p.parse_args(argv)


def _diffusers(args: argparse.Namespace):
    from export.imports.diffusers_net import import_diffusers, require_diffusers

    require_diffusers()  # the one-line refusal before anything else
    model, scheduler = args.model, args.scheduler
    from export.imports.diffusers_dit import import_dit, is_dit_pipeline

    if is_dit_pipeline(model):
        print(f"exporting {model} (transformer and VAE decoder) to ONNX (opset {args.opset}) ...", flush=True)
        return import_dit(model, args.out, args.name, args.opset, scheduler=scheduler)
    if (model / "unet").is_dir():
        model, scheduler = model / "unet", scheduler or model / "scheduler"
    if scheduler is None:
        raise ImportRefused(f"{args.model} has no scheduler/ directory; pass --scheduler")
    print(f"exporting {model} to ONNX (opset {args.opset}) ...", flush=True)
    return import_diffusers(model, scheduler, args.out, args.name, args.opset)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.source == "diffusers":
            ckpt = _diffusers(args)
        else:
            from export.imports.onnx_file import import_onnx

            ckpt = import_onnx(args.onnx, args.spec, args.out, args.name)
    except (ImportRefused, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = ckpt.manifest
    objective = ", ".join(f"{k} {v}" for k, v in m["objective"].items())
    print(
        f"wrote {ckpt.path} in {time.perf_counter() - t0:.1f} s: model {ckpt.name!r} ({objective}), "
        f"data shape {m['data']['shape']}, {m['data']['num_classes']} classes"
    )
    if "parity_max_abs_diff" in m["import"]:
        net = "transformer" if m["net"]["kind"] == "diffusers-dit" else "UNet"
        print(f"parity onnxruntime vs diffusers {net}, max |diff|: {m['import']['parity_max_abs_diff']:.1e}")
    if "decoder_parity_max_abs_diff" in m["import"]:
        worst = m["import"]["decoder_parity_max_abs_diff"]
        print(f"parity onnxruntime vs AutoencoderKL.decode, max |diff|: {worst:.1e}")
    if "latent" in m:
        print(f"latent model: samples decode to images of shape {m['latent']['image_shape']}")
    if "sampling" in m:
        print(f"default timestep spacing: {m['sampling']['spacing']}")
    print(
        f"serve it with backend onnxruntime, e.g. models: "
        f"{{{ckpt.name}: {{path: {ckpt.path.resolve()}, backend: onnxruntime}}}}"
    )
    return 0
