"""python -m serving sample ... (offline sampling) | python -m serving serve ... (the HTTP service); see --help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.offline import sample_to_file
from serving.serve_cli import add_serve_parser


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a checkpoint in this process (no server)",
        description="Run one sampler against a checkpoint and write the samples (data space) as .npy; "
        "--plot adds a PNG (scatter for 2-D data, image grid for digits).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, e.g. models/moons-fm")
    p.add_argument("--sampler", required=True, help="ddpm, ddim (DDPM models); fm-euler, fm-rk4 (FM models)")
    p.add_argument("--steps", type=int, required=True, help="step budget K (fm-rk4 runs 4 net evaluations a step)")
    p.add_argument("--num-samples", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight w (needs --class-label)")
    p.add_argument("--class-label", type=int, help="class to sample; omitted: unconditional (null label)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request's noise (default 0)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (ddim only; default 0, deterministic)")
    p.add_argument("--spacing", help="DDPM/DDIM timestep spacing: trailing (default), leading, linspace")
    p.add_argument("--backend", default="torch", help="torch (default), onnxruntime, tensorrt")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"], help="torch backend: which weights")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--plot", action="store_true", help="also write a PNG beside --out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description="stepserve sampling and serving.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sample_parser(sub)
    add_serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return args.func(args)
    if args.command == "sample":
        try:
            out = sample_to_file(
                Path(args.checkpoint),
                sampler=args.sampler,
                steps=args.steps,
                num_samples=args.num_samples,
                guidance=args.guidance,
                class_label=args.class_label,
                seed=args.seed,
                eta=args.eta,
                spacing=args.spacing,
                backend=args.backend,
                weights=args.weights,
                out=Path(args.out),
                plot=args.plot,
            )
        except (ValueError, RuntimeError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in out:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
