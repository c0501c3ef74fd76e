"""python -m export --checkpoint DIR --format onnx|tensorrt: compile a checkpoint's net for serving.
python -m export import diffusers|onnx ...: make a servable checkpoint from a net made elsewhere (export.imports).

Bad input (missing or corrupt checkpoint, impossible options, TensorRT asked for where it is missing)
ends with one line `error: ...` and exit code 2; an export that breaks its contract (unfused attention
at opset >= 23, parity beyond tolerance) ends with `error: ...` and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.onnx_export import (
    ATTENTION_MIN_OPSET,
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ExportError,
    export_decoder_onnx,
    export_onnx,
)
from export.parity import EVAL_TOLERANCE, decoder_parity, eval_parity, ort_forward
from export.tensorrt_build import (
    DEFAULT_WORKSPACE_MB,
    BatchProfile,
    TensorRTUnavailable,
    build_engine,
    default_timing_cache,
    require_tensorrt,
)
from sampling.request import onnx_decoder
from training.checkpoint import CheckpointError, load_checkpoint

PARITY_BATCHES = (1, 7, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export",
        epilog="python -m export import diffusers|onnx --help: make a servable checkpoint from a diffusers "
        "UNet2DModel or any ONNX file with inputs x, t, y.",
        description=(
            "Compile a checkpoint's net (x, t, y -> prediction, dynamic batch) into the checkpoint "
            "directory and record the file with its sha256 in manifest.json. onnx: one graph for guided "
            "and unguided rows, attention fused into ONNX Attention nodes at opset >= "
            f"{ATTENTION_MIN_OPSET} (older opsets fall back to MatMul-Softmax-MatMul), checked against the "
            "torch net with onnxruntime. tensorrt: an engine built from that ONNX file (exported first if "
            "missing); needs an NVIDIA GPU and the `tensorrt` package. A latent model's decoder is exported to "
            "ONNX beside its net (decoder.onnx, dynamic batch) and checked the same way; it has no TensorRT "
            "engine of its own (serving runs it with onnxruntime or torch)."
        ),
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (with manifest.json)")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt"), help="what to build")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=(
            f"ONNX opset {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET}; >= {ATTENTION_MIN_OPSET} fuses attention)"
        ),
    )
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights (default: ema)")
    p.add_argument("--no-parity", action="store_true", help="skip the onnxruntime-vs-torch parity check")
    trt = p.add_argument_group("tensorrt")
    trt.add_argument("--fp16", action="store_true", help="build an fp16 engine (I/O stays float32)")
    trt.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts (default 1)")
    trt.add_argument("--opt-batch", type=int, default=64, help="batch TensorRT tunes kernels for (default 64)")
    trt.add_argument("--max-batch", type=int, default=512, help="largest batch the engine accepts (default 512)")
    trt.add_argument(
        "--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace pool limit in MiB"
    )
    trt.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help=f"timing cache file, read before and written after the build (default {default_timing_cache()})",
    )
    return p.parse_args(argv)


def _onnx(args: argparse.Namespace) -> str:
    ckpt = load_checkpoint(args.checkpoint)
    result = export_onnx(ckpt, opset=args.opset, weights=args.weights)
    size_kb = result.path.stat().st_size / 1024
    print(f"wrote {result.path} (opset {result.opset}, {args.weights} weights, {size_kb:.0f} KiB)")
    print(f"attention: {result.attention.describe()}")
    ckpt = load_checkpoint(args.checkpoint)  # re-read: the manifest now lists the file
    print(f"manifest: {result.path.name} sha256 {ckpt.manifest['files'][result.path.name]['sha256']}")
    if not args.no_parity:
        results = eval_parity(ckpt, ort_forward(ckpt.file(result.path.name)), PARITY_BATCHES, args.weights)
        diffs = ", ".join(f"batch {r.batch}: {r.max_abs_diff:.1e}" for r in results)
        verdict = "ok" if all(r.ok for r in results) else "FAILED"
        print(f"parity onnxruntime vs torch, max |diff| (tolerance {EVAL_TOLERANCE:g}): {diffs} -> {verdict}")
        if verdict != "ok":
            raise ExportError(f"onnxruntime output differs from torch beyond {EVAL_TOLERANCE:g}")
    if ckpt.latent:
        path = export_decoder_onnx(ckpt, opset=args.opset)
        print(f"wrote {path} (the decoder, {path.stat().st_size / 1024:.0f} KiB)")
        if not args.no_parity:
            ckpt = load_checkpoint(args.checkpoint)
            diff = decoder_parity(ckpt, onnx_decoder(ckpt.file(path.name)))
            verdict = "ok" if diff <= EVAL_TOLERANCE else "FAILED"
            print(f"decoder parity onnxruntime vs torch, max |diff| {diff:.1e} -> {verdict}")
            if verdict != "ok":
                raise ExportError(f"the onnxruntime decoder differs from torch beyond {EVAL_TOLERANCE:g}")
    return result.path.name


def _tensorrt(args: argparse.Namespace) -> None:
    profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)  # checked before any work
    if args.workspace_mb < 1:
        raise ValueError(f"--workspace-mb must be a positive integer, got {args.workspace_mb}")
    require_tensorrt()  # fail before exporting anything
    ckpt = load_checkpoint(args.checkpoint)
    files = ckpt.manifest["files"]
    # Reuse an export of the same weights and opset (TensorRT before 10.14 cannot parse Attention and
    # needs --opset 18 or less; a different opset means a fresh export).
    reusable = [
        n
        for n in ckpt.files_with_role("onnx")
        if files[n].get("weights") == args.weights and files[n].get("opset") == args.opset
    ]
    onnx_name = reusable[0] if reusable else _onnx(args)
    ckpt = load_checkpoint(args.checkpoint)
    path = build_engine(ckpt, onnx_name, profile, args.fp16, args.workspace_mb, args.timing_cache)
    batches = f"{profile.min}/{profile.opt}/{profile.max}"
    print(f"wrote {path} (min/opt/max batch {batches}, fp16={args.fp16})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from export.imports.cli import main as import_main

        return import_main(argv[1:])
    args = parse_args(argv)
    try:
        if args.format == "onnx":
            _onnx(args)
        else:
            _tensorrt(args)
    except (CheckpointError, TensorRTUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
