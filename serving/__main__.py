"""python -m serving sample ... (offline sampling) | profile ... (a checkpoint's quality profile) |
serve ... (the HTTP service); see --help."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sampling.measure_quality import DEFAULT_MAX_NFE, DEFAULT_SAMPLES, DEFAULT_STEPS
from serving.offline import profile_checkpoint, sample_to_file
from serving.serve_cli import add_serve_parser


def _add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a checkpoint in this process (no server)",
        description="Run one sampler against a checkpoint and write the samples (data space) as .npy; "
        "--plot adds a PNG (scatter for 2-D data, image grid for images: digits, shapes).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, e.g. models/moons-fm")
    p.add_argument("--sampler", required=True, help="ddpm, ddim (DDPM models); fm-euler, fm-rk4 (FM models)")
    p.add_argument("--steps", type=int, required=True, help="step budget K (fm-rk4 runs 4 net evaluations a step)")
    p.add_argument("--num-samples", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight w (needs --class-label)")
    p.add_argument("--class-label", type=int, help="class to sample; omitted: unconditional (null label)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request's noise (default 0)")
    p.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (ddim only; default 0, deterministic)")
    p.add_argument(
        "--spacing",
        help="DDPM timestep spacing: trailing, leading, linspace (default: the checkpoint's, else trailing)",
    )
    p.add_argument("--backend", default="torch", help="torch (default), onnxruntime, tensorrt")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"], help="torch backend: which weights")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--plot", action="store_true", help="also write a PNG beside --out")


def _steps(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"steps must be integers >= 1, got {text!r}")
    return values


def _add_profile_parser(sub: argparse._SubParsersAction) -> None:
    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_SAMPLES.items())
    p = sub.add_parser(
        "profile",
        help="measure a checkpoint's quality against K and store it in the checkpoint",
        description="Measure quality against K for every fixed-step sampler the checkpoint accepts "
        "(fm-dopri5, adaptive, is left out), in this process with the torch backend and EMA weights, and store "
        "it as quality_profile.json in the checkpoint, recorded in the manifest with its sha256 and the "
        "sha256 of the weights it was measured on. quality = min(1, 1 / value) in [0, 1], where value is a "
        "distance to the data over the same distance between two draws of the data (moons: sliced-Wasserstein "
        "ratio; digits, shapes: Frechet ratio in a held-out classifier's feature space; a latent model's samples "
        "decoded first). K beyond a sampler's max_steps and points past --max-nfe evaluations per sample are "
        "skipped. One point is redrawn with 3 more seeds "
        "and the spread is stored as the profile's noise.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, e.g. models/moons-fm")
    p.add_argument(
        "--samples",
        type=int,
        help=f"samples per point (default by data kind: {defaults}; digits: split equally over the classes)",
    )
    p.add_argument(
        "--steps",
        type=_steps,
        default=DEFAULT_STEPS,
        help=f"K grid, comma-separated (default {','.join(map(str, DEFAULT_STEPS))})",
    )
    p.add_argument(
        "--max-nfe",
        type=int,
        default=DEFAULT_MAX_NFE,
        help=f"skip points past this many net evaluations per sample (default {DEFAULT_MAX_NFE}; 0: no cap)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every point's noise and data draws (default 0)")
    p.add_argument(
        "--add",
        type=lambda v: tuple(s.strip() for s in v.split(",") if s.strip()),
        default=(),
        metavar="SAMPLERS",
        help="comma-separated: measure only these samplers and add their points to the checkpoint's current "
        "profile (measured with the same --samples and --seed; its other points and noise are kept), e.g. "
        "after a new sampler",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _profile(args: argparse.Namespace) -> int:
    profile = profile_checkpoint(
        Path(args.checkpoint),
        samples=args.samples,
        steps=args.steps,
        max_nfe=args.max_nfe or None,
        seed=args.seed,
        progress=not args.no_progress,
        add=args.add,
    )
    for name in profile.samplers():
        row = "  ".join(f"K={p.steps}:{p.quality:.3f}" for p in profile.for_sampler(name))
        print(f"{name:13s} {row}")
    print(profile.definition)
    print(f"wrote {Path(args.checkpoint) / 'quality_profile.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description="stepserve sampling and serving.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sample_parser(sub)
    _add_profile_parser(sub)
    add_serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return args.func(args)
    if args.command == "profile":
        try:
            return _profile(args)
        except (ValueError, RuntimeError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
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
